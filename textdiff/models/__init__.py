"""The shared transformer: a bidirectional denoiser for diffusion back-ends, causal for the AR baseline."""

from textdiff.models.transformer import Transformer


def build_model(recipe, vocab_size: int, max_len: int) -> Transformer:
    """The transformer a recipe describes, causal exactly when its back-end is, with the back-end's own trainable
    parts (if any) attached as `model.noise`."""
    from textdiff.noising import BACKENDS

    backend = BACKENDS[recipe.backend.name]
    model = Transformer(recipe.model, vocab_size, max_len, causal=backend.causal,
                        **backend.model_options(recipe.backend))
    model.noise = backend.modules(recipe.backend, recipe.model, vocab_size)
    return model


__all__ = ["Transformer", "build_model"]
