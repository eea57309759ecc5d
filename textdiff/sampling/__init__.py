"""Samplers: short functions with one signature, each a loop you can read on one screen.

    sampler(model, backend, x, opts, generator, callback=None, guidance=None) -> tokens (B, L)

`x` holds the starting sequence: [MASK] wherever text is to be generated, real tokens where it is given
(infilling keeps those fixed at every step). `opts` is a `SampleConfig`. `callback(step, x, x0_probs)` is
called after every step, with x as token ids ([MASK] where nothing is decided yet).

`guidance(out, x_t, t) -> out` (optional, for the back-ends that support it) sees every model evaluation before
the step uses it and may change it: `out` is the back-end's own prediction (x0 logits, or an x0 estimate in a
continuous space), `x_t` the current state and `t` (B,) the time. Classifier guidance adds a gradient there,
classifier-free guidance mixes in an unconditional evaluation.
"""

from __future__ import annotations

import torch

from textdiff.registry import Registry

SAMPLERS = Registry("sampler")
register_sampler = SAMPLERS.register


def filter_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits (..., V) -> probabilities after temperature, top-k and nucleus (top-p) filtering.
    Temperature 0 is greedy (a one-hot on the argmax)."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cum - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the first token always
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def x0_logits(model, backend, x, t: float, x0_prev=None, guidance=None) -> torch.Tensor:
    """The x0 logits (B, L, V) of a token-id back-end (`backend.x0_logits`) at time t, after `guidance`;
    x0_prev (B, L, V) is the self-conditioning input or None."""
    tt = torch.full((x.shape[0],), t, device=x.device)
    logits = backend.x0_logits(model, x, tt, x0_prev=x0_prev)
    return guidance(logits, x, tt) if guidance is not None else logits


def x0_probs(model, backend, x, t: float, opts, x0_prev=None, guidance=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(filtered, model): `x0_logits` filtered by opts (temperature, top-k, top-p) into the distribution a step
    draws from, and its unfiltered softmax, the model's own x0 distribution (B, L, V each). The second is what a
    self-conditioned model saw of its first pass in training, so it is the next step's x0_prev."""
    logits = x0_logits(model, backend, x, t, x0_prev, guidance)
    return filter_probs(logits, opts.temperature, opts.top_k, opts.top_p), torch.softmax(logits.float(), dim=-1)


def blocks(length: int, block_size: int) -> list[tuple[int, int]]:
    """[lo, hi) spans for semi-autoregressive decoding, left to right (one span when block_size is 0)."""
    size = block_size or length
    return [(lo, min(lo + size, length)) for lo in range(0, length, size)]


def hole_blocks(x: torch.Tensor, mask_id: int, block_size: int) -> list[torch.Tensor]:
    """Semi-autoregressive blocks over each row's generated region: (B, L) masks, left to right, each covering
    block_size positions counted from the row's first [MASK] (one block when block_size is 0). A given prefix (a
    seq2seq source, an infill template's opening text) takes no block and no steps, however long it is in each row."""
    L = x.shape[1]
    hole = x == mask_id
    start = torch.where(hole.any(dim=1), hole.long().argmax(dim=1), 0)  # (B,)
    rel = torch.arange(L, device=x.device) - start[:, None]  # (B, L) position within the row's region
    return [(rel >= lo) & (rel < hi) for lo, hi in blocks(L - int(start.min()), block_size)]


def split_steps(steps: int, n_blocks: int) -> list[int]:
    base, extra = divmod(steps, n_blocks)
    return [base + (i < extra) for i in range(n_blocks)]


from textdiff.sampling import ar, edit, embedding, masked, simplex, uniform  # noqa: E402,F401  (registration)
