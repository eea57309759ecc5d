"""Classifier-free guidance (Ho & Salimans 2022) through the samplers' `guidance(out, x_t, t)` hook.

    out = (1 + w) out_cond - w out_uncond = out_cond + w (out_cond - out_uncond)

in the back-end's own output space (x0 logits for masked and simplex, the x0 estimate and rounding logits for
embedding), where out_uncond is the same model evaluated with the source replaced by the null condition ([PAD]),
as `train.cond_dropout` trained it (`backend.unconditional`). Entries that are not finite in either output (the
-inf of [MASK] or of given tokens) keep the conditional value; w = 0 returns the conditional output unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch


def mix(cond, uncond, scale: float):
    """cond + scale (cond - uncond) for tensors, or for each tensor field of a Prediction (fields the two share,
    such as the embedding table, or that are not tensors, are kept from cond)."""
    if dataclasses.is_dataclass(cond):
        return dataclasses.replace(cond, **{f.name: mix(getattr(cond, f.name), getattr(uncond, f.name), scale)
                                            for f in dataclasses.fields(cond)})
    if not torch.is_tensor(cond) or cond is uncond:
        return cond
    finite = torch.isfinite(cond) & torch.isfinite(uncond)
    return torch.where(finite, cond + scale * (cond - uncond.where(finite, cond)), cond)


def classifier_free(model, backend, source: torch.Tensor, scale: float) -> Callable:
    """The guidance hook for seq2seq sampling; source (B, L) bool marks the conditioning tokens. The null condition
    depends on t only through the model, so the loop's cache stays exact (`time_free`)."""
    if not hasattr(backend, "unconditional"):
        raise ValueError(f"the {backend.name} back-end has no classifier-free guidance")

    def guidance(out, x_t, t):
        return mix(out, backend.unconditional(model, x_t, t, source), scale)

    guidance.time_free = True
    return guidance
