"""Evaluation: likelihood (ELBO bound for diffusion, exact for AR), generative perplexity under a judge LM and
the diversity that must be read beside it; BLEU and ROUGE-L of seq2seq runs (local `evaluate` modules); the length
histograms of data and samples."""

from textdiff.evaluation.genppl import GenPPLResult, generative_perplexity
from textdiff.evaluation.perplexity import PerplexityResult, perplexity

METRICS = ("ppl", "genppl", "bleu", "rouge", "control", "lengths")

__all__ = ["METRICS", "GenPPLResult", "PerplexityResult", "generative_perplexity", "perplexity"]
