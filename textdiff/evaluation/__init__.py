"""Evaluation: likelihood bounds and exact perplexity (more metrics arrive with the evaluation issue)."""

from textdiff.evaluation.perplexity import PerplexityResult, perplexity

METRICS = ("ppl",)

__all__ = ["METRICS", "PerplexityResult", "perplexity"]
