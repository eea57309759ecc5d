"""The ancestral sampler of uniform-substitution diffusion (D3PM-uniform, Austin et al. 2021; UDLM, Schiff et al.
2025)."""

from __future__ import annotations

import torch

from textdiff.sampling import hole_blocks, register_sampler, split_steps, x0_probs


@register_sampler("uniform_ancestral")
@torch.no_grad()
def uniform_ancestral(model, backend, x, opts, generator, callback=None, guidance=None):
    """x_1 is uniform over the real tokens at every [MASK] of x (the given tokens stay fixed at every step); each
    step t -> s draws x_s from the posterior with the model's (guided, filtered) x0 distribution plugged in
    (`backend.step`), and the last one lands on s = 0: clean tokens everywhere. With opts.block_size, blocks go
    left to right; a block not yet started stays at the prior's noise and shows [MASK] to the callback.
    Self-conditioning feeds each step's (unfiltered) x0 distribution into the next."""
    given = x != backend.special.mask  # (B, L)
    state = torch.where(given, x, backend.noise_tokens(x.shape, generator, x.device))
    started, model_probs, step_no = given.clone(), None, 0
    spans = hole_blocks(x, backend.special.mask, opts.block_size)
    for block, steps in zip(spans, split_steps(opts.steps, len(spans))):
        active = block & ~given
        started |= active
        for j in range(steps):
            t, s = 1.0 - j / steps, 1.0 - (j + 1) / steps
            probs, model_probs = x0_probs(model, backend, state, t, opts,
                                          model_probs if model.cfg.self_conditioning else None, guidance)
            state = torch.where(active, backend.step(probs, state, t, s, generator).sample, state)
            step_no += 1
            if callback is not None:
                callback(step_no, state.masked_fill(~started, backend.special.mask), probs)
    return state
