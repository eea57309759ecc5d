"""Samplers for absorbing-state (masked) diffusion."""

from __future__ import annotations

import torch

from textdiff.sampling import hole_blocks, register_sampler, split_steps, x0_probs


@register_sampler("ancestral")
@torch.no_grad()
def ancestral(model, backend, x, opts, generator, callback=None, guidance=None):
    """MDLM's ancestral sampler with its cache: when a step reveals nothing and the model ignores t,
    the next step reuses the last x0 distribution instead of calling the model."""
    reuse, sc = not model.cfg.time_conditioning, model.cfg.self_conditioning
    step_no, probs, model_probs, fresh = 0, None, None, False
    spans = hole_blocks(x, backend.mask_id, opts.block_size)
    for active, steps in zip(spans, split_steps(opts.steps, len(spans))):
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
    top-k/p filtering, as LLaDA ranks), so greedy decoding (temperature 0, a one-hot draw) still ranks positions.
    With opts.threshold > 0 (Fast-dLLM's confidence-aware parallel decoding, Wu et al. 2025) a step reveals every
    draw at least that confident, and at least its share of the masks left spread over the steps left: the easy
    positions (the padding after a seq2seq target, say) go in a few steps and the steps saved go to the hard ones;
    a block whose positions are all revealed skips the rest of its steps."""
    mask_id, step_no, model_probs = backend.mask_id, 0, None
    spans = hole_blocks(x, mask_id, opts.block_size)
    for active, steps in zip(spans, split_steps(opts.steps, len(spans))):
        total = ((x == mask_id) & active).sum(dim=1)  # (B,)
        for j in range(steps):
            masked = (x == mask_id) & active
            if opts.threshold > 0 and not masked.any():  # the block is done early: its other steps are not needed
                break
            t = 1.0 - j / steps
            probs, model_probs = x0_probs(model, backend, x, t, opts,
                                          model_probs if model.cfg.self_conditioning else None, guidance)
            draw = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(x.shape)
            conf = torch.gather(model_probs, -1, draw[..., None]).squeeze(-1).masked_fill(~masked, -1.0)  # (B, L)
            n_masked = masked.sum(dim=1)
            if opts.threshold > 0:  # every confident draw, and the rest spread evenly over the steps left
                n_reveal = torch.maximum(-(-n_masked // (steps - j)), (conf >= opts.threshold).sum(dim=1))
            else:  # the mask count falls linearly to zero
                n_reveal = n_masked - (total.float() * (1.0 - (j + 1) / steps)).floor().long()  # (B,)
            rank = conf.argsort(dim=1, descending=True).argsort(dim=1)  # (B, L) 0 = most confident
            reveal = masked & (rank < n_reveal[:, None])
            x = torch.where(reveal, draw, x)
            step_no += 1
            if callback is not None:
                callback(step_no, x, probs)
    return x
