"""The shared transformer: a bidirectional denoiser for diffusion back-ends, causal for the AR baseline."""

from textdiff.models.transformer import Transformer


def build_model(recipe, vocab_size: int, max_len: int) -> Transformer:
    """The transformer a recipe describes; causal exactly when its back-end is."""
    from textdiff.noising import BACKENDS

    return Transformer(recipe.model, vocab_size, max_len, causal=BACKENDS[recipe.backend.name].causal)


__all__ = ["Transformer", "build_model"]
