"""Samplers for absorbing-state (masked) diffusion."""

from __future__ import annotations

import torch

from textdiff.sampling import blocks, register_sampler, split_steps, x0_probs


@register_sampler("ancestral")
@torch.no_grad()
def ancestral(model, backend, x, opts, generator, callback=None, guidance=None):
    """MDLM's ancestral sampler with its cache: when a step reveals nothing and the model ignores t,
    the next step reuses the last x0 distribution instead of calling the model."""
    reuse, sc = not model.cfg.time_conditioning, model.cfg.self_conditioning
    step_no, probs, model_probs, fresh = 0, None, None, False
    spans = blocks(x.shape[1], opts.block_size)
    for (lo, hi), steps in zip(spans, split_steps(opts.steps, len(spans))):
        active = torch.zeros_like(x, dtype=torch.bool)
        active[:, lo:hi] = True
        for j in range(steps):
            t, s = 1.0 - j / steps, 1.0 - (j + 1) / steps
            if not (fresh and reuse):
                probs, model_probs = x0_probs(model, backend, x, t, opts, model_probs if sc else None, guidance)
            out = backend.step(probs, x, t, s, generator)
            new = torch.where(active, out.sample, x)
            fresh = torch.equal(new, x)  # nothing changed: the last x0 distribution still holds
            x = new
            step_no += 1
            if callback is not None:
                callback(step_no, x, out.x0_probs)
    return x


@register_sampler("confidence")
@torch.no_grad()
def confidence(model, backend, x, opts, generator, callback=None, guidance=None):
    """Confidence-based remasking (MaskGIT, Chang et al. 2022; LLaDA's low-confidence remasking): every step
    draws all masked tokens and keeps the most confident ones, so the mask count falls linearly to zero.
    A token's confidence is the model's own probability of it (softmax of the logits before temperature and
    top-k/p filtering, as LLaDA ranks), so greedy decoding (temperature 0, a one-hot draw) still ranks positions."""
    mask_id, step_no, model_probs = backend.mask_id, 0, None
    spans = blocks(x.shape[1], opts.block_size)
    for (lo, hi), steps in zip(spans, split_steps(opts.steps, len(spans))):
        active = torch.zeros_like(x, dtype=torch.bool)
        active[:, lo:hi] = True
        total = ((x == mask_id) & active).sum(dim=1)  # (B,)
        for j in range(steps):
            t = 1.0 - j / steps
            probs, model_probs = x0_probs(model, backend, x, t, opts,
                                          model_probs if model.cfg.self_conditioning else None, guidance)
            masked = (x == mask_id) & active
            draw = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(x.shape)
            conf = torch.gather(model_probs, -1, draw[..., None]).squeeze(-1).masked_fill(~masked, -1.0)  # (B, L)
            keep_masked = (total.float() * (1.0 - (j + 1) / steps)).floor().long()  # (B,)
            n_reveal = masked.sum(dim=1) - keep_masked
            rank = conf.argsort(dim=1, descending=True).argsort(dim=1)  # (B, L) 0 = most confident
            reveal = masked & (rank < n_reveal[:, None])
            x = torch.where(reveal, draw, x)
            step_no += 1
            if callback is not None:
                callback(step_no, x, probs)
    return x
