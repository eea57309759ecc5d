"""Generative perplexity: how likely a judge causal LM finds a run's samples, always with their diversity.

The perplexity is token-weighted over the whole set of samples, exp(sum of NLL / sum of judge tokens), in the
judge's tokenizer. Unigram entropy is computed on the run's own token ids (all samples pooled, [PAD] left out),
and on the same number of reference sequences of the run's test split, so the two are estimated from equally
many tokens. dist-n and self-BLEU are over whitespace words of the decoded texts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from textdiff.evaluation.diversity import distinct_n, self_bleu, unigram_entropy
from textdiff.evaluation.judge import Judge, load_judge
from textdiff.evaluation.perplexity import exp_nats


@dataclass
class TextStats:
    """Judge perplexity and diversity of one set of texts."""

    ppl: float
    nats_per_token: float
    n_judge_tokens: int
    nats_per_word: float
    n_words: int
    entropy: float
    """Unigram entropy in nats of the run's token ids, all texts pooled."""
    dist_1: float
    dist_2: float
    dist_3: float
    self_bleu: float
    self_bleu_signature: str
    """sacrebleu's signature of that BLEU (nrefs = number of texts - 1)."""


@dataclass
class GenPPLResult:
    judge: str
    judge_tokenizer: str
    samples: TextStats
    reference: Optional[TextStats]
    """The same statistics for as many test-split sequences of the run's data (None when not asked)."""
    sampler: str
    steps: int
    num_samples: int
    length: int
    seed: int
    settings: dict
    """The full sampler settings used (temperature, top-k, top-p, block size, ...)."""
    sample_seconds: float
    """Wall time of generation alone (the judge's scoring is not counted)."""
    tokens_per_s: float
    texts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        s, r = self.samples, self.reference
        ref = f"; reference text: PPL {r.ppl:.1f}, entropy {r.entropy:.3f}" if r else ""
        return (f"genppl {s.ppl:.1f} ({s.n_judge_tokens:,} tokens of the judge's {self.judge_tokenizer.split(' (')[0]}), "
                f"entropy {s.entropy:.3f} nats, dist-1/2/3 {s.dist_1:.3f}/{s.dist_2:.3f}/{s.dist_3:.3f}, "
                f"self-BLEU {s.self_bleu:.1f}{ref} [{self.num_samples} x {self.length} tokens, {self.sampler}, "
                f"{self.steps} steps, {self.sample_seconds:.2f} s, {self.tokens_per_s:,.0f} tok/s]")


def text_stats(texts: list[str], token_ids: list[list[int]], judge: Judge, batch_size: int = 8) -> TextStats:
    """Judge perplexity (token-weighted over all texts) and diversity of `texts` (with the run's ids)."""
    score = judge.score(texts, batch_size)
    nats, tokens, words = sum(score.nats), sum(score.tokens), sum(len(t.split()) for t in texts)
    per_token = nats / max(tokens, 1)
    bleu, signature = self_bleu(texts)
    return TextStats(ppl=exp_nats(per_token), nats_per_token=per_token, n_judge_tokens=tokens,
                     nats_per_word=nats / max(words, 1), n_words=words, entropy=unigram_entropy(token_ids),
                     dist_1=distinct_n(texts, 1), dist_2=distinct_n(texts, 2), dist_3=distinct_n(texts, 3),
                     self_bleu=bleu, self_bleu_signature=signature)


def _content(ids: torch.Tensor, pad: int) -> list[list[int]]:
    return [[i for i in row if i != pad] for row in ids.tolist()]


_REFERENCES: dict[tuple, TextStats] = {}


def reference_texts(pipe, num: int, split: str = "test") -> tuple[list[str], list[list[int]]]:
    """`num` sequences of the run's `split`, evenly spaced through it: their texts and their token ids ([PAD] left
    out), the real-text counterpart of a set of samples."""
    from textdiff.data import build_sequences, load_texts

    seqs = build_sequences(pipe.recipe.data, pipe.tokenizer, load_texts(pipe.recipe.data)[split])
    idx = torch.linspace(0, len(seqs) - 1, min(num, len(seqs))).round().long()
    ids = seqs.ids[idx]
    return [pipe.decode(row) for row in ids.tolist()], _content(ids, pipe.backend.special.pad)


def reference_stats(pipe, num: int, judge: Judge, split: str = "test", batch_size: int = 8) -> TextStats:
    """`reference_texts` scored like samples (cached per process for the same texts, ids and judge)."""
    texts, ids = reference_texts(pipe, num, split)
    key = (judge.name, tuple(texts), tuple(map(tuple, ids)))
    if key not in _REFERENCES:
        _REFERENCES[key] = text_stats(texts, ids, judge, batch_size)
    return _REFERENCES[key]


def timed_generate(pipe, num_samples: int, seed: int, **opts):
    """pipe.generate with its wall time in seconds (synchronised on GPUs)."""
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = pipe.generate(num_samples, seed=seed, **opts)
    sync()
    return out, time.perf_counter() - t0


@dataclass
class Generated:
    """Samples drawn for a judge, before it scores them: what `text_stats` needs, and how they were drawn."""

    texts: list[str]
    ids: list[list[int]]
    """The run's token ids of each sample, [PAD] left out (unigram entropy is counted on these)."""
    sampler: str
    steps: int
    """Model calls: the sampler's steps, or the generated length for an AR run (one call per token)."""
    length: int
    settings: dict
    sample_seconds: float
    tokens_per_s: float
    nfe: int = 0
    """Forwards of the model (function evaluations: every step's, and a block model's cache writes)."""


def counting_forwards(model):
    """A context manager counting the model's forwards (passes through its first block: a block model's cache
    writes too, which stop before the final norm) in a one-item list."""
    import contextlib

    @contextlib.contextmanager
    def counted():
        count = [0]
        handle = model.blocks[0].register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        try:
            yield count
        finally:
            handle.remove()
    return counted()


def generate_for_judge(pipe, num_samples: int, seed: int = 0, **opts) -> Generated:
    """Draw `num_samples` samples (keyword `opts`: steps, sampler, length, temperature, ...) and time them."""
    o = pipe.options(**opts)
    with counting_forwards(pipe.model) as nfe:
        gen, seconds = timed_generate(pipe, num_samples, seed, **opts)
    steps = gen.ids.shape[1] if pipe.backend.causal else o.steps
    settings = {**{k: v for k, v in o.flat().items() if k not in ("num_samples", "infill")}, "steps": steps}
    return Generated(texts=gen.texts, ids=_content(gen.ids, pipe.backend.special.pad), sampler=o.sampler, steps=steps,
                     length=gen.ids.shape[1], settings=settings, sample_seconds=seconds,
                     tokens_per_s=gen.ids.numel() / seconds, nfe=nfe[0])


def generative_perplexity(pipe, num_samples: int = 16, seed: int = 0, judge: Optional[str | Judge] = None,
                          reference: bool | TextStats = True, judge_batch_size: int = 8, **opts) -> GenPPLResult:
    """Generate `num_samples` samples from `pipe` (keyword `opts`: steps, sampler, length, temperature, ...),
    score them under the judge and measure their diversity; `reference` adds (or passes in, precomputed) the
    same statistics of real test text."""
    judge = judge if isinstance(judge, Judge) else load_judge(judge, str(pipe.device))
    g = generate_for_judge(pipe, num_samples, seed, **opts)
    stats = text_stats(g.texts, g.ids, judge, judge_batch_size)
    if reference is True:
        reference = reference_stats(pipe, num_samples, judge, batch_size=judge_batch_size)
    return GenPPLResult(judge=judge.name, judge_tokenizer=judge.tokenizer, samples=stats,
                        reference=reference or None, sampler=g.sampler, steps=g.steps, num_samples=num_samples,
                        length=g.length, seed=seed, settings=g.settings, sample_seconds=g.sample_seconds,
                        tokens_per_s=g.tokens_per_s, texts=g.texts)
