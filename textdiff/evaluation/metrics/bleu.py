"""Corpus BLEU (Papineni et al. 2002) as a local `evaluate` module over sacrebleu (Post 2018).

    bleu = evaluate.load(textdiff.evaluation.metrics.path("bleu"))
    bleu.compute(predictions=["a cat"], references=[["a cat", "the cat"]])   # {"score", "signature", ...}

One list of references per prediction (multi-reference: E2E has ~7 per MR); sacrebleu's default 13a tokenizer
and exponential smoothing; the signature names every setting and is printed beside every score.
"""

import datasets
import evaluate


def reference_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout of ragged multi-reference data: stream k holds each prediction's k-th reference, or None."""
    return [[r[k] if k < len(r) else None for r in references] for k in range(max(len(r) for r in references))]


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus BLEU over sacrebleu, multi-reference, with its signature.",
            citation="Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018.",
            inputs_description="predictions: list of str; references: list of lists of str (one list per prediction).",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False):
        import sacrebleu

        bleu = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
        score = bleu.corpus_score(predictions, reference_streams(references))
        return {"score": score.score, "precisions": score.precisions, "bp": score.bp,
                "sys_len": score.sys_len, "ref_len": score.ref_len, "signature": str(bleu.get_signature())}
