"""The sampler of edit diffusion (DiffusER, Reid et al. 2022; Levenshtein Transformer, Gu et al. 2019): lengths
change as it goes."""

from __future__ import annotations

import torch

from textdiff.sampling import filter_probs, register_sampler


@register_sampler("edit")
@torch.no_grad()
def edit(model, backend, x, opts, generator, callback=None, guidance=None):
    """x (B, L): given tokens, [MASK] slots (one token each) and spans of unknown length (`backend.open_hole`), with
    [PAD] as room; the spans start from the back-end's prior (random tokens, nothing or the source). Each step
    t -> s draws an edit script from the model (ops per token, insertion counts per gap), fills its placeholders
    with a second call (x0_hat, filtered by temperature / top-k / top-p) and applies each edit of the script with
    the forward process's chance of being undone by s (all of them at s = 0); with opts.joint_edits each run of
    adjacent edits applies together. `callback(step, ids, None)` sees the (B, L) ids, [PAD] past each row's end.
    Returns (B, L) ids, [PAD] after each sample."""
    if guidance is not None:
        raise ValueError(f"the {backend.name} back-end takes no guidance")
    if opts.block_size:
        raise ValueError(f"block_size={opts.block_size}: the {backend.name} back-end's lengths change, so it has no "
                         "fixed blocks; use block_size 0")
    state = backend.start(x, generator)
    for j in range(opts.steps):
        t, s = 1.0 - j / opts.steps, 1.0 - (j + 1) / opts.steps
        tt = torch.full((x.shape[0],), t, device=x.device)
        script = backend.draw_script(*backend.script_logits(model, state.ids, tt), state, opts.temperature, generator)
        y = backend.placeholders(state, script)
        probs = filter_probs(backend.token_logits(model, y, tt), opts.temperature, opts.top_k, opts.top_p)
        draw = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(y.shape)
        x0 = torch.where(y == backend.special.mask, draw, y)
        state = backend.step(state, script, x0, t, s, generator, joint=opts.joint_edits)
        if callback is not None:
            callback(j + 1, state.ids, None)
    return state.ids
