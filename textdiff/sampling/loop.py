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
the early end of a block whose positions are settled; a block model, or a cache asked for, goes to
textdiff/sampling/cached.py, which runs the same step rules over a KV cache.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from textdiff.noising.base import block_of
from textdiff.sampling import cached, filter_probs, hole_blocks, split_steps
from textdiff.sampling.options import BLOCK_SIZE, CACHE, EOS_STOP, TEMPERATURE, TOP_K, TOP_P
from textdiff.sampling.step import Predictions, Step, times


def absolute_blocks(x: torch.Tensor, mask_id: int, block: int) -> list[torch.Tensor]:
    """A block model's blocks: positions [bK, (b+1)K) as (B, L) masks, the ones holding a hole in some row."""
    col = torch.arange(x.shape[1], device=x.device)
    spans = [((col >= lo) & (col < lo + block)).expand_as(x) for lo in range(0, x.shape[1], block)]
    return [b for b in spans if ((x == mask_id) & b).any()]


@torch.no_grad()
def denoise(model, backend, x: torch.Tensor, generator: torch.Generator, rule: Callable, *, steps: int,
            callback: Optional[Callable] = None, guidance: Optional[Callable] = None,
            block_size: int = BLOCK_SIZE, temperature: float = TEMPERATURE, top_k: int = TOP_K,
            top_p: float = TOP_P, cache: str = CACHE, eos_stop: bool = EOS_STOP) -> torch.Tensor:
    """Fill the [MASK] holes of x (B, L) in `steps` steps of `rule(backend, pred, probs, state, step) ->
    StepOutput`, block by block (block_size positions from each row's first hole; 0: one block), the steps shared
    out over the blocks. A block model (model.block_size = K) goes block by block over its exact KV cache
    (textdiff/sampling/cached.py), `steps` steps for each block of K; `cache` none recomputes its prefix instead,
    prefix and dual are Fast-dLLM's approximate caches for other models. Returns (B, L) token ids: the given ones
    unchanged."""
    filters = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    K, mask = block_of(model), backend.special.mask
    if K and cache != "none":
        return cached.denoise_blocks(model, backend, x, generator, rule, steps=steps, filters=filters,
                                     callback=callback, guidance=guidance, eos_stop=eos_stop)
    if K:  # cache none: the same steps over the whole sequence
        return cached.denoise_blocks_uncached(model, backend, x, generator, rule, absolute_blocks(x, mask, K),
                                              steps=steps, filters=filters, callback=callback, guidance=guidance,
                                              eos_stop=eos_stop)
    spans = hole_blocks(x, mask, block_size)
    per_block = split_steps(steps, len(spans))
    if cache in ("prefix", "dual"):
        return cached.denoise_fast(model, backend, x, generator, rule, spans, per_block, mode=cache, filters=filters,
                                   callback=callback)
    out = loop(model, backend, x, generator, rule, spans, per_block, filters, callback, guidance)
    return cached.pad_after_eos(out, x, backend.special) if eos_stop else out


def loop(model, backend, x, generator, rule, spans, per_block, filters, callback, guidance) -> torch.Tensor:
    """The steps of every block over the whole sequence (no cache)."""
    mask = backend.special.mask
    given = x != mask  # (B, L)
    state, shown, known = backend.start(model, x, generator), x.clone(), given.clone()
    predict, step_no = Predictions(model, backend, guidance), 0
    for block, n in zip(spans, per_block):
        active = block & ~given
        pending = (active & (shown == mask)).sum(dim=1)
        for j in range(n):
            if backend.settled(state, active):  # every later step of the block would change nothing
                break
            t, s = times(j, n, x)
            state = backend.hold(model, state, shown, known, t, generator)
            pred = predict(state, t)
            probs = filter_probs(pred.logits, **filters)
            out = rule(backend, pred, probs, state, Step(t, s, j, n, active, pending, generator))
            state = backend.select(active, out.sample, state)
            shown = torch.where(active, out.tokens, shown)
            step_no += 1
            if callback is not None:
                callback(step_no, shown, probs)
        known |= active
    return shown
