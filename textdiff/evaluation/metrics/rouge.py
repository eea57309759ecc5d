"""ROUGE-L (Lin 2004) as a local `evaluate` module: the F1 of the longest common subsequence of words.

    rouge = evaluate.load(textdiff.evaluation.metrics.path("rouge"))
    rouge.compute(predictions=["a cat"], references=[["a cat", "the cat"]])   # {"score", "signature", ...}

Words as in the rouge-score package: lower-cased, every run of characters outside [a-z0-9] a separator. Each
prediction is scored against every reference and keeps the best F1 (multi-reference); the score is the mean
over predictions, times 100.
"""

import re

import datasets
import evaluate

SIGNATURE = "rougeL|f1|tok:lower-alnum|multi-ref:max|agg:mean"


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, O(len(a) len(b)) time, O(len(b)) memory."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    p, r = words(prediction), words(reference)
    n = lcs(p, r)
    if n == 0:
        return 0.0
    precision, recall = n / len(p), n / len(r)
    return 2 * precision * recall / (precision + recall)


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE-L F1 (longest common subsequence), multi-reference max, mean over predictions.",
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description="predictions: list of str; references: list of lists of str (one list per prediction).",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        best = [max(rouge_l(p, r) for r in refs) for p, refs in zip(predictions, references)]
        return {"score": 100.0 * sum(best) / max(len(best), 1), "signature": SIGNATURE}
