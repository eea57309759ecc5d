"""textdiff: text diffusion models (masked, and more back-ends) on one shared transformer, beside an AR baseline."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import textdiff` stays light
    if name == "TextDiffusionPipeline":
        from textdiff.pipeline import TextDiffusionPipeline

        return TextDiffusionPipeline
    raise AttributeError(name)


__all__ = ["TextDiffusionPipeline", "__version__"]

from textdiff import hf_auto as _hf_auto  # noqa: E402  (a finder only: transformers' Auto classes learn run dirs)

_hf_auto.install()
