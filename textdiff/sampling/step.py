"""What a step rule sees (`Step`) and how the sampling loops make predictions (`Predictions`): shared by the generic
loop (loop.py) and the cached one (cached.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from textdiff.noising.base import block_of


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


def model_time(model, t: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """The time input of a prediction: t (B,); for a block model one per position, 0 on the known (clean) ones, as
    its training saw the clean blocks before a noisy one and as its cache holds them (`known`: the positions before
    the block being decided; the block is all at t, its given tokens too, as training's noisy block is)."""
    return torch.where(known, 0.0, t[:, None]) if block_of(model) else t
