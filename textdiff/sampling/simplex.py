"""Samplers for simplex-logit diffusion (SSD-LM, Han et al. 2023, sec. 3.3; TESS, Karimi Mahabadi et al. 2024)."""

from __future__ import annotations

import torch

from textdiff.sampling import filter_probs, hole_blocks, register_sampler, split_steps


@register_sampler("simplex")
@torch.no_grad()
def simplex(model, backend, x, opts, generator, callback=None, guidance=None):
    """SSD-LM's sampler: from pure noise x_1 = sigma_1 k eps, every step predicts x0 logits, lets `guidance` change
    them, filters them (temperature 0: SSD-LM's argmax projection; top-p < 1: its top-p sampling), draws tokens,
    projects them to ±k logits and noises those afresh to the next level (`backend.step`)."""
    step = lambda probs, x_t, t, s: backend.step(probs, x_t, t, s, generator)  # noqa: E731
    return _denoise(model, backend, x, opts, generator, step, callback, guidance)


@register_sampler("simplex_ddim")
@torch.no_grad()
def simplex_ddim(model, backend, x, opts, generator, callback=None, guidance=None):
    """The same loop with DDIM's step toward the projected x0 (`backend.ddim_step`, stochasticity opts.eta): the
    noise of x_t carries over, so what earlier steps decided is not forgotten at every step."""
    step = lambda probs, x_t, t, s: backend.ddim_step(probs, x_t, t, s, opts.eta, generator)  # noqa: E731
    return _denoise(model, backend, x, opts, generator, step, callback, guidance)


def _denoise(model, backend, x, opts, generator, step, callback=None, guidance=None):
    """The reverse loop over noisy logits (B, L, V); `step(x0_probs, x_t, t, s) -> SimplexStep`.

    Given tokens (infilling) are held at their clean ±k logits at every step, as SSD-LM holds its context. With
    opts.block_size, blocks are decoded left to right (SSD-LM's semi-autoregressive decoding): a finished block
    becomes clean context, blocks not yet started stay at the prior's noise and show [MASK] to the callback.
    Self-conditioning feeds each step's x0 distribution into the next (TESS).
    """
    B = x.shape[0]
    given = x != backend.special.mask  # (B, L)
    clean = backend.simplex(x)  # (B, L, V); only the given positions are used
    ones = torch.ones(B, device=x.device)
    state = torch.where(given[..., None], clean, backend.noise(torch.zeros_like(clean), ones, generator)[0])
    ids, probs, step_no = x.clone(), None, 0
    spans = hole_blocks(x, backend.special.mask, opts.block_size)
    for block, steps in zip(spans, split_steps(opts.steps, len(spans))):
        active = block & ~given
        for j in range(steps):
            t, s = 1.0 - j / steps, 1.0 - (j + 1) / steps
            logits = backend.x0_logits(model, state, t * ones, probs if model.cfg.self_conditioning else None)
            if guidance is not None:
                logits = guidance(logits, state, t * ones)
            out = step(filter_probs(logits, opts.temperature, opts.top_k, opts.top_p), state, t, s)
            state = torch.where(active[..., None], out.logits, state)
            ids = torch.where(active, out.ids, ids)
            probs = torch.softmax(logits, dim=-1)  # (B, L, V)
            step_no += 1
            if callback is not None:
                callback(step_no, ids, probs)
        state = torch.where(active[..., None], backend.simplex(ids), state)  # the block is now clean context
    return ids
