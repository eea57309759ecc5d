"""Samplers for Gaussian diffusion on embeddings: DDPM ancestral and DDIM, any number of steps.

Given tokens (infilling, prefixes, earlier semi-autoregressive blocks) are re-imposed every step as fresh draws
of q(z_t | x) at the current time (the replacement method), so the model sees them exactly as in training.
The tokens are read off the last step's rounding logits.
"""

from __future__ import annotations

import torch

from textdiff.sampling import filter_probs, hole_blocks, register_sampler, split_steps


def _reimpose(backend, model, z, ids, given, t: float, generator):
    """z with the given positions (B, L) replaced by a draw of q(z_t | ids); a seq2seq model (model.segments) was
    trained on a clean source, so it gets the clean embeddings (DiffuSeq's partial noising)."""
    if not given.any():
        return z
    if model.cfg.segments:
        return torch.where(given[..., None], model.noise.table()[ids].to(z.dtype), z)
    tt = torch.full((z.shape[0],), t, device=z.device)
    z_given = backend.corrupt(ids, tt, generator, model=model)
    return torch.where(given[..., None], z_given, z)


def _tokens(logits, opts, generator):
    """Rounding: token ids (B, L) from the logits, through temperature / top-k / top-p (temperature 0: argmax)."""
    probs = filter_probs(logits, opts.temperature, opts.top_k, opts.top_p)  # (B, L, V)
    draw = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator)
    return draw.view(logits.shape[:-1]), probs


def _snap(x0, logits, table):
    """The clamping trick (Diffusion-LM): the x0 estimate replaced by its nearest (most likely) embedding."""
    return table[logits.argmax(-1)]


@torch.no_grad()
def gaussian_sampler(model, backend, x, opts, generator, callback=None, guidance=None, eta: float = 0.0):
    mask = backend.special.mask
    given = x != mask  # (B, L)
    ids = x.clone()
    z = backend.prior_sample(model, x.shape, generator)
    step_no = 0
    spans = hole_blocks(x, backend.special.mask, opts.block_size)
    for block, steps in zip(spans, split_steps(opts.steps, len(spans))):
        active = block & ~given
        x0_prev = None
        for j in range(steps):
            t, s = 1.0 - j / steps, 1.0 - (j + 1) / steps
            tt = torch.full((x.shape[0],), t, device=z.device)
            z = _reimpose(backend, model, z, ids, ~ids.eq(mask), t, generator)
            pred = backend.predict(model, z, tt, x0_prev if model.cfg.self_conditioning else None)
            if guidance is not None:
                pred = guidance(pred, z, tt)
            x0 = _snap(pred.x0, pred.logits, model.noise.table()) if opts.clamp else pred.x0
            z = torch.where(active[..., None], backend.step(x0, z, t, s, generator, eta, model).sample, z)
            x0_prev = x0
            draw, probs = _tokens(pred.logits, opts, generator)
            shown = torch.where(active, draw, ids)
            step_no += 1
            if callback is not None:
                callback(step_no, shown, probs)
        ids = shown
    return ids


@register_sampler("ddim")
def ddim(model, backend, x, opts, generator, callback=None, guidance=None):
    """DDIM (Song et al. 2021) with sample.eta: 0 is deterministic given z_1."""
    return gaussian_sampler(model, backend, x, opts, generator, callback, guidance, eta=opts.eta)


@register_sampler("ddpm")
def ddpm(model, backend, x, opts, generator, callback=None, guidance=None):
    """Ancestral sampling from the DDPM posterior q(z_s | z_t, x0_hat) (DDIM with eta = 1)."""
    return gaussian_sampler(model, backend, x, opts, generator, callback, guidance, eta=1.0)
