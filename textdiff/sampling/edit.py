"""The sampler of edit diffusion (DiffusER, Reid et al. 2022; Levenshtein Transformer, Gu et al. 2019): lengths
change as it goes, and a step takes two model calls, so it is a loop of its own rather than a step rule."""

from __future__ import annotations

import torch

from textdiff.noising.base import draw
from textdiff.sampling import filter_probs, register_sampler
from textdiff.sampling.options import TEMPERATURE, TOP_K, TOP_P, Option

JOINT_EDITS = Option(False, "apply each run of adjacent edits (a rewritten phrase) in one step, not edit by edit")


@register_sampler("edit", takes_guidance=False)
@torch.no_grad()
def edit(model, backend, x, generator, *, steps: int, callback=None, guidance=None, temperature: float = TEMPERATURE,
         top_k: int = TOP_K, top_p: float = TOP_P, joint_edits: bool = JOINT_EDITS):
    """x (B, L): given tokens, [MASK] slots (one token each) and spans of unknown length (`backend.open_hole`), with
    [PAD] as room; the spans start from the back-end's prior (random tokens, nothing or the source). Each step
    t -> s draws an edit script from the model (ops per token, insertion counts per gap), fills its placeholders
    with a second call (x0_hat, filtered by temperature / top-k / top-p) and applies each edit of the script with
    the forward process's chance of being undone by s (all of them at s = 0); with joint_edits each run of
    adjacent edits applies together. `callback(step, ids, None)` sees the (B, L) ids, [PAD] past each row's end.
    Returns (B, L) ids, [PAD] after each sample."""
    state = backend.start(model, x, generator)
    for j in range(steps):
        t, s = 1.0 - j / steps, 1.0 - (j + 1) / steps
        tt = torch.full((x.shape[0],), t, device=x.device)
        script = backend.draw_script(*backend.script_logits(model, state.ids, tt), state, temperature, generator)
        y = backend.placeholders(state, script)
        probs = filter_probs(backend.token_logits(model, y, tt), temperature, top_k, top_p)
        x0 = torch.where(y == backend.special.mask, draw(probs, generator), y)
        state = backend.apply(state, script, x0, t, s, generator, joint=joint_edits)
        if callback is not None:
            callback(j + 1, state.ids, None)
    return state.ids
