"""Minimum Bayes risk decoding (Kumar & Byrne 2004; DiffuSeq's selection): of N candidates for one source, the
one with the highest expected utility against the others, the others standing in for samples of the model."""

from __future__ import annotations


def _utility(name: str):
    if name == "bleu":
        import sacrebleu

        return lambda hyp, ref: sacrebleu.sentence_bleu(hyp, [ref]).score
    if name == "rouge":
        from textdiff.evaluation.metrics.rouge import rouge_l

        return rouge_l
    raise ValueError(f"MBR utility {name!r} is not available; choose one of bleu, rouge")


def mbr_select(candidates: list[str], utility: str = "bleu") -> int:
    """Index of the candidate maximising sum_j u(c_i, c_j) over the other candidates (ties: the first)."""
    u = _utility(utility)
    scores = [sum(u(c, o) for j, o in enumerate(candidates) if j != i) for i, c in enumerate(candidates)]
    return max(range(len(candidates)), key=lambda i: (scores[i], -i))
