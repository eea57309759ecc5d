"""Likelihood on a held-out split: the ELBO bound for diffusion back-ends (with its Monte Carlo standard error),
exact perplexity for the AR baseline. Both in nats per token of the run's own tokenizer, and per word, over the
same positions: every counted token of every full sequence, the first included (the AR baseline predicts it after
an [EOS] start token; an AR run from before `backend.start_token` cannot, and its line says so)."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from textdiff.data import build_sequences, load_texts, segment_ids, source_name
from textdiff.errors import TextdiffError


def exp_nats(nats: float) -> float:
    """exp(nats) as a perplexity: inf past float's range (a diverged model's bound), never an OverflowError."""
    return math.exp(nats) if nats < math.log(sys.float_info.max) else math.inf


def ppl_text(ppl: float) -> str:
    """A perplexity for a report: two decimals, or three significant digits past a million (not 96 digits)."""
    return f"{ppl:.2f}" if ppl < 1e6 else f"{ppl:.3g}"


def stderr_text(exact: bool, stderr: Optional[float]) -> str:
    """' ± SE' beside a bound's nats/token; nothing for an exact likelihood; what one time draw cannot give."""
    if exact:
        return ""
    return " (± not estimated: one time draw; use --draws 2 or more)" if stderr is None else f" ± {stderr:.4f}"


@dataclass
class PerplexityResult:
    split: str
    nats_per_token: float
    stderr: Optional[float]
    """Monte Carlo standard error of nats_per_token from the time draws (0 for exact likelihoods; None from one
    time draw, which cannot estimate it)."""
    ppl: float
    nats_per_word: float
    n_tokens: int
    n_sequences: int
    n_words: int
    time_draws: int
    exact: bool
    every_token: bool = True
    """Every counted position is scored (False: an AR run from before `backend.start_token`, first tokens left out)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        kind = "exact" if self.exact else f"ELBO bound, {self.time_draws} time draws"
        which = "every token scored" if self.every_token else \
            "each sequence's first token not scored: an AR run from before backend.start_token, retrain to compare"
        return (f"{self.split}: {self.nats_per_token:.4f}{stderr_text(self.exact, self.stderr)} nats/token, PPL "
                f"{ppl_text(self.ppl)} ({kind}; "
                f"{self.n_tokens:,} tokens in {self.n_sequences} sequences, {which}; {self.nats_per_word:.3f} nats/word)")


def _bound(pipe, batch, time_draws: int, gen):
    with pipe.model.segmented(segment_ids(batch.ids, pipe.backend.special.sep)):
        return pipe.backend.bound(pipe.model, batch, time_draws, gen)


@torch.no_grad()
def estimate(pipe, seqs, batches: tuple, time_draws: int, split: str) -> str:
    """A line announcing the evaluation's size and its time, from one timed time draw of the first batch (with a
    generator of its own, so the result does not depend on it)."""
    start = time.perf_counter()
    _bound(pipe, seqs.batch(batches[0]).to(pipe.device), 1, torch.Generator(pipe.device).manual_seed(0))
    per_draw = time.perf_counter() - start
    draws = 1 if pipe.backend.causal else time_draws  # the AR baseline's likelihood is one exact pass
    what = "one exact pass" if pipe.backend.causal else f"{time_draws} time draw{'s' * (time_draws > 1)}"
    return (f"textdiff: eval {split}: {sum(len(b) for b in batches):,} sequences x {what} in {len(batches)} "
            f"batch{'es' * (len(batches) > 1)}, "
            f"about {_duration(per_draw * draws * len(batches))} (fewer: --max-sequences, --draws)")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@torch.no_grad()
def perplexity(pipe, split: str = "test", time_draws: int = 32, batch_size: int = 32, max_sequences: int = 0,
               seed: int = 0, progress: bool = True) -> PerplexityResult:
    """Evaluate `pipe` (a TextDiffusionPipeline) on every full sequence of `split` (or the first max_sequences)."""
    from tqdm.auto import tqdm

    texts = load_texts(pipe.recipe.data)[split]
    if not texts:
        raise TextdiffError(f"split '{split}' of {source_name(pipe.recipe.data)} is empty; choose one of "
                            f"{', '.join(s for s, t in load_texts(pipe.recipe.data).items() if t)}")
    seqs = build_sequences(pipe.recipe.data, pipe.tokenizer, texts)
    n = min(len(seqs), max_sequences) if max_sequences else len(seqs)
    gen = torch.Generator(pipe.device).manual_seed(seed)
    nll, var, tokens, exact = 0.0, 0.0, 0, True
    batches = torch.arange(n).split(batch_size)
    if progress and batches:
        print(estimate(pipe, seqs, batches, time_draws, split), file=sys.stderr)
    for idx in tqdm(batches, desc=f"eval {split}", disable=not progress, unit="batch"):
        out = _bound(pipe, seqs.batch(idx).to(pipe.device), time_draws, gen)
        nll += float(out.nll.sum())
        var += float(out.mc_var.sum())
        tokens += int(out.n_tokens.sum())
        exact = out.exact
    words = sum(len((t[1] if isinstance(t, tuple) else t).split()) for t in texts)  # seq2seq: the targets
    per_token = nll / tokens
    tokens_per_word = int(seqs.loss_mask.sum()) / words  # over the whole split
    stderr = None if not exact and time_draws < 2 else math.sqrt(var) / tokens
    return PerplexityResult(split=split, nats_per_token=per_token, stderr=stderr, ppl=exp_nats(per_token), nats_per_word=per_token * tokens_per_word,
                            n_tokens=tokens, n_sequences=n, n_words=words, time_draws=1 if exact else time_draws,
                            exact=exact, every_token=pipe.backend.scores_every_token)
