"""The generic denoising loop every fixed-length back-end samples with; a sampler is a step rule run by it.

    state = backend.start(model, x)                       x (B, L): given tokens and [MASK] holes
    for each semi-autoregressive block, for each of its steps t -> s:
        state = backend.hold(model, state, ...)           the known tokens as the model saw them in training
        pred  = backend.predict(model, state, t, x0_prev)  (+ guidance; self-conditioning feeds pred back)
        probs = filter(pred.logits)                       temperature, top-k, top-p
        out   = rule(backend, pred, probs, state, step)   the sampler: e.g. backend.step, a confidence policy
        state = out.sample where the block is, callback(step, out.tokens, probs)

It owns, once for every sampler: the blocks (a given prefix takes none), self-conditioning, the guidance hook,
the callback, MDLM's cache (no model call when a step changed nothing and the prediction cannot depend on t) and
the early end of a block whose positions are settled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from textdiff.sampling import filter_probs, hole_blocks, split_steps
from textdiff.sampling.options import BLOCK_SIZE, TEMPERATURE, TOP_K, TOP_P


@dataclass
class Step:
    """One step t -> s of a block, as a step rule sees it."""

    t: torch.Tensor
    """(B,) the time now."""
    s: torch.Tensor
    """(B,) the time after the step (0 at the block's last step)."""
    index: int
    """The step's number within its block, from 0."""
    count: int
    """Steps in the block."""
    active: torch.Tensor
    """(B, L) bool: the positions this block writes."""
    pending: torch.Tensor
    """(B,) how many of them were undecided ([MASK]) when the block began."""
    generator: torch.Generator


class Predictions:
    """`backend.predict` as the loop calls it: the previous prediction's feedback as x0_prev (self-conditioning),
    the guidance hook, and MDLM's cache: with a prediction that depends on t only through the model
    (`backend.time_free`), a model without time conditioning and an unchanged state, the last prediction is
    reused instead of calling the model (a guidance hook must declare `time_free` to allow it)."""

    def __init__(self, model, backend, guidance: Optional[Callable] = None):
        self.model, self.backend, self.guidance = model, backend, guidance
        self.reuse = (backend.time_free and not model.cfg.time_conditioning
                      and getattr(guidance, "time_free", guidance is None))
        self.x0_prev, self.last_state, self.last = None, None, None

    def __call__(self, state, t: torch.Tensor):
        if self.reuse and self.last is not None and torch.equal(self.last_state, state):
            return self.last
        pred = self.backend.predict(self.model, state, t, self.x0_prev)
        if self.guidance is not None:
            pred = self.guidance(pred, state, t)
        if self.model.cfg.self_conditioning:
            self.x0_prev = self.backend.feedback(pred)
        self.last_state, self.last = state, pred
        return pred


def times(j: int, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, s) = (1 - j/n, 1 - (j+1)/n), each (B,) on like's device."""
    B = like.shape[0]
    return (torch.full((B,), 1.0 - j / n, device=like.device), torch.full((B,), 1.0 - (j + 1) / n, device=like.device))


@torch.no_grad()
def denoise(model, backend, x: torch.Tensor, generator: torch.Generator, rule: Callable, *, steps: int,
            callback: Optional[Callable] = None, guidance: Optional[Callable] = None,
            block_size: int = BLOCK_SIZE, temperature: float = TEMPERATURE, top_k: int = TOP_K,
            top_p: float = TOP_P) -> torch.Tensor:
    """Fill the [MASK] holes of x (B, L) in `steps` steps of `rule(backend, pred, probs, state, step) ->
    StepOutput`, block by block (block_size positions from each row's first hole; 0: one block), the steps shared
    out over the blocks. Returns (B, L) token ids: the given ones unchanged."""
    mask = backend.special.mask
    given = x != mask  # (B, L)
    state, shown, known = backend.start(model, x, generator), x.clone(), given.clone()
    predict, step_no = Predictions(model, backend, guidance), 0
    spans = hole_blocks(x, mask, block_size)
    for block, n in zip(spans, split_steps(steps, len(spans))):
        active = block & ~given
        pending = (active & (shown == mask)).sum(dim=1)
        for j in range(n):
            if backend.settled(state, active):  # every later step of the block would change nothing
                break
            t, s = times(j, n, x)
            state = backend.hold(model, state, shown, known, t, generator)
            pred = predict(state, t)
            probs = filter_probs(pred.logits, temperature, top_k, top_p)
            out = rule(backend, pred, probs, state, Step(t, s, j, n, active, pending, generator))
            state = backend.select(active, out.sample, state)
            shown = torch.where(active, out.tokens, shown)
            step_no += 1
            if callback is not None:
                callback(step_no, shown, probs)
        known |= active
    return shown
