"""Diversity of a set of samples: pooled unigram entropy, distinct-n (Li et al. 2016) and self-BLEU
(Zhu et al. 2018, Texygen). A low generative perplexity with collapsed diversity is not a win, so these are
always reported beside it."""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence


def unigram_entropy(token_lists: Iterable[Sequence[int]]) -> float:
    """Entropy in nats of the unigram distribution of all tokens of all lists pooled, -sum p log p."""
    counts = Counter(tok for toks in token_lists for tok in toks)
    total = sum(counts.values())
    if not total:
        return float("nan")
    return -sum(c / total * math.log(c / total) for c in counts.values())


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the whitespace words of every text pooled (corpus-level dist-n)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: Sequence[str]) -> tuple[float, str]:
    """Self-BLEU in [0, 100]: sacrebleu's corpus BLEU of every text against all the others as references
    (each hypothesis gets the n-1 other texts; default 13a tokenisation, 4-grams, exponential smoothing).
    Returns (score, sacrebleu signature); NaN for fewer than two texts."""
    from sacrebleu.metrics import BLEU

    texts = list(texts)
    if len(texts) < 2:
        return float("nan"), "n/a"
    streams = [[texts[(i + k) % len(texts)] for i in range(len(texts))] for k in range(1, len(texts))]
    bleu = BLEU()
    score = bleu.corpus_score(texts, streams)
    return score.score, str(bleu.get_signature())

