"""Block by block over a KV cache: how every step rule samples a block model (model.block_size = K, BD3-LM), and
Fast-dLLM's approximate caches for today's bidirectional models under semi-autoregressive blocks.

A block model's block b attends to itself and to the clean blocks before it, so once a block is decided its keys and
values never change: they are written into the cache by a forward of the clean block (t = 0, as the clean stream
saw it in training) that is also the next block's first step (the clean block ahead of it under the block-causal
mask), and each step of the next block runs over its K positions only, reading the cache. This is
exact: the same tokens as recomputing the whole prefix every step (`cache="none"`, `denoise_blocks_uncached`: the
same steps over the whole sequence under the block-causal mask), at temperature 0 token for token (a test checks
it).

For a bidirectional model the prefix's keys and values do depend on the block being decided, so a cache is an
approximation (Fast-dLLM, Wu et al. 2025): `prefix` computes the whole sequence once per block and then steps over
the block and everything after it, reading the prefix's cached keys; `dual` also caches the suffix and steps over
the block alone.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from textdiff.noising.base import block_of
from textdiff.sampling import filter_probs
from textdiff.sampling.step import Predictions, Step, model_time, times


class Cached:
    """The model as a back-end calls it, with the cache and the position of its first input added to every call
    (read-only: the step's keys and values are not stored). Everything else is the model's.

    `pending` (B, n): the clean tokens of the finished block just before `start`, not yet in the cache. The first
    call writes them in its own forward, ahead of its inputs under the block-causal mask (they see only the cache
    and themselves, as a forward of their own would), so a block model's sampling makes one model call per block
    step and none for the writes; a call on input vectors, or `hidden`, writes them first."""

    def __init__(self, model, cache, start: int, store: bool = False, pending: Optional[torch.Tensor] = None):
        self.model, self.cache, self.start, self.store, self.pending = model, cache, start, store, pending

    def __call__(self, inputs, t=None, x0_prev=None, select=None):
        if self.pending is not None and not inputs.is_floating_point():
            return self._with_pending(inputs, t, x0_prev, select)
        self.flush()
        self.cache.store = self.store
        return self.model(inputs, t, x0_prev=x0_prev, select=select, cache=self.cache, start=self.start)

    def hidden(self, inputs, t=None, x0_prev=None):
        self.flush()
        self.cache.store = self.store
        return self.model.hidden(inputs, t, x0_prev, cache=self.cache, start=self.start)

    def flush(self) -> None:
        """Write the pending block into the cache on its own (the block's steps made no call that could carry it)."""
        if self.pending is not None:
            ids, self.pending = self.pending, None
            write(self.model, self.cache, ids, self.start - ids.shape[1])

    def _with_pending(self, inputs, t, x0_prev, select):
        """One forward of [pending clean block, inputs]: the block's keys and values stored (at t = 0, no
        self-conditioning input, as `write` stores them), the outputs at the inputs' positions returned."""
        ids, self.pending = self.pending, None
        (B, n), L = ids.shape, inputs.shape[1]
        if t is not None:
            t = torch.cat([t.new_zeros(B, n), t[:, None].expand(B, L) if t.dim() == 1 else t], dim=1)
        if x0_prev is not None:
            x0_prev = torch.cat([x0_prev.new_zeros(B, n, *x0_prev.shape[2:]), x0_prev], dim=1)
        both = None if select is None else torch.cat([select.new_zeros(B, n), select], dim=1)
        self.cache.store = True
        out = self.model(torch.cat([ids, inputs], dim=1), t, x0_prev=x0_prev, select=both, cache=self.cache,
                         start=self.start - n)
        self.cache.length = self.start  # the inputs' slots are scratch: every later step writes its own
        return out if select is not None else out[:, n:]

    def __getattr__(self, name):
        return getattr(self.model, name)


@torch.no_grad()
def write(model, cache, ids: torch.Tensor, start: int) -> None:
    """One forward of clean tokens ids (B, n) at positions from `start` (t = 0), their keys and values stored."""
    model.write_cache(ids, torch.zeros(ids.shape[0], device=ids.device), cache, start)


def block_steps(backend, cached, state, shown, active, steps: int, generator, rule, filters: dict,
                guidance: Optional[Callable], emit: Callable):
    """The steps of one block over its positions (state, shown (B, n) slices, active (B, n)); returns both."""
    predict = Predictions(cached, backend, guidance)
    pending = (active & (shown == backend.special.mask)).sum(dim=1)
    for j in range(steps):
        if backend.settled(state, active):
            break
        t, s = times(j, steps, state)
        pred = predict(state, t)
        probs = filter_probs(pred.logits, **filters)
        out = rule(backend, pred, probs, state, Step(t, s, j, steps, active, pending, generator))
        state = backend.select(active, out.sample, state)
        shown = torch.where(active, out.tokens, shown)
        emit(shown)
    return state, shown


@torch.no_grad()
def denoise_blocks(model, backend, x: torch.Tensor, generator, rule: Callable, *, steps: int, filters: dict,
                   callback: Optional[Callable] = None, guidance: Optional[Callable] = None,
                   eos_stop: bool = False) -> torch.Tensor:
    """A block model's sampling: blocks of K positions left to right, `steps` steps for each block with a hole; a
    block given whole (a prompt) takes no step and is only written into the cache. With eos_stop, a row whose block
    drew [EOS] ends there: the rest of the row is [PAD] (lengths vary per row)."""
    K, (B, L) = block_of(model), x.shape
    sp = backend.special
    cache, shown = model.new_cache(B, L), x.clone()
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    count = [0]

    def emit(block_shown, lo, hi):
        shown[:, lo:hi] = block_shown
        count[0] += 1
        if callback is not None:
            callback(count[0], shown, None)

    pending = None  # the finished block not yet written: the next block's first call writes it
    for lo in range(0, L, K):
        hi = lo + K
        shown[done, lo:hi] = sp.pad
        active = (shown[:, lo:hi] == sp.mask) & ~done[:, None]
        if active.any():
            state = backend.start(model, shown[:, lo:hi], generator)
            cached = Cached(model, cache, lo, pending=pending)
            _, block = block_steps(backend, cached, state, shown[:, lo:hi], active, steps, generator, rule, filters,
                                   guidance, lambda b: emit(b, lo, hi))
            cached.flush()
            shown[:, lo:hi] = block
        elif pending is not None:
            write(model, cache, pending, lo - K)
        pending = None
        if eos_stop:
            done |= (shown[:, lo:hi] == sp.eos).any(dim=1) & (x[:, lo:hi] == sp.mask).any(dim=1)
        if hi < L and not done.all():
            pending = shown[:, lo:hi].clone()
    return pad_after_eos(shown, x, sp) if eos_stop else shown


def pad_after_eos(shown: torch.Tensor, x: torch.Tensor, sp) -> torch.Tensor:
    """[PAD] at every generated position after a row's first generated [EOS]."""
    hole = x == sp.mask
    eos = (shown == sp.eos) & hole
    after = (eos.long().cumsum(dim=1) - eos.long()) > 0
    return shown.masked_fill(after & hole, sp.pad)


def window(pred, lo: int, hi: int, length: int):
    """A prediction over the whole sequence cut to positions [lo, hi) (its per-position tensor fields)."""
    import dataclasses

    cut = {f.name: getattr(pred, f.name)[:, lo:hi] for f in dataclasses.fields(pred)
           if torch.is_tensor(getattr(pred, f.name)) and getattr(pred, f.name).dim() >= 2
           and getattr(pred, f.name).shape[1] == length}
    return dataclasses.replace(pred, **cut)


def step_window(backend, rule, pred, filters: dict, state, shown: torch.Tensor, lo: int, hi: int, step: Step):
    """One step of `rule` over the columns [lo, hi) of the whole sequence (pred and step.active (B, hi - lo) are
    the window's): the new state (B, L, ...); `shown` (B, L) is updated in place."""
    out = rule(backend, pred, filter_probs(pred.logits, **filters), state[:, lo:hi], step)
    state = state.clone()
    state[:, lo:hi] = backend.select(step.active, out.sample, state[:, lo:hi])
    shown[:, lo:hi] = torch.where(step.active, out.tokens, shown[:, lo:hi])
    return state


@torch.no_grad()
def denoise_blocks_uncached(model, backend, x: torch.Tensor, generator, rule: Callable, spans, *, steps: int,
                            filters: dict, callback: Optional[Callable] = None, guidance: Optional[Callable] = None,
                            eos_stop: bool = False) -> torch.Tensor:
    """A block model without its cache (`cache="none"`): every step runs the whole sequence under the block-causal
    mask, and the rest is `denoise_blocks`' own: each block (`spans`, (B, L) column masks) started, drawn and
    self-conditioned over its own columns, the clean blocks before it at t = 0 and without a self-conditioning
    input (as the cache holds them), a row ended by [EOS] padded from the next block on, so both use the generator
    alike and give the same tokens."""
    sp, L = backend.special, x.shape[1]
    given = x != sp.mask
    state, shown, known = x.clone(), x.clone(), given.clone()
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    count = 0
    for block in spans:
        cols = block[0].nonzero()[:, 0]
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        shown[done, lo:hi] = sp.pad
        active = (shown[:, lo:hi] == sp.mask) & ~done[:, None]
        if not active.any():
            continue
        state = state.clone()
        state[:, lo:hi] = backend.start(model, shown[:, lo:hi], generator)
        predict = Predictions(model, backend, guidance)
        pending = (active & (shown[:, lo:hi] == sp.mask)).sum(dim=1)
        for j in range(steps):
            if backend.settled(state[:, lo:hi], active):
                break
            t, s = times(j, steps, x)
            pred = window(predict(state, model_time(model, t, known & ~block)), lo, hi, L)
            if predict.x0_prev is not None:  # the block's own feedback only, as over the cache
                predict.x0_prev = predict.x0_prev.masked_fill(~block[..., None], 0.0)
            state = step_window(backend, rule, pred, filters, state, shown, lo, hi,
                                Step(t, s, j, steps, active, pending, generator))
            count += 1
            if callback is not None:
                callback(count, shown, None)
        known |= block & ~given
        if eos_stop:
            done |= (shown[:, lo:hi] == sp.eos).any(dim=1) & (x[:, lo:hi] == sp.mask).any(dim=1)
    return pad_after_eos(shown, x, sp) if eos_stop else shown


@torch.no_grad()
def denoise_fast(model, backend, x, generator, rule, spans, steps_per_block, *, mode: str, filters: dict,
                 callback: Optional[Callable] = None) -> torch.Tensor:
    """Fast-dLLM's approximate caches for a bidirectional model, block by block (`spans`, as the generic loop's):
    at each block's first step one forward over the whole sequence fills the cache and gives that step's
    prediction; the block's other steps run over [block start, end) reading the prefix (`prefix`) or over the block
    alone reading prefix and suffix (`dual`)."""
    sp, (B, L) = backend.special, x.shape
    given = x != sp.mask
    state, shown, known = backend.start(model, x, generator), x.clone(), given.clone()
    count = 0
    for block, n in zip(spans, steps_per_block):
        active = block & ~given
        cols = block.any(dim=0).nonzero()[:, 0]
        lo, hi = int(cols.min()), (int(cols.max()) + 1 if mode == "dual" else L)
        pending = (active & (shown == sp.mask)).sum(dim=1)
        for j in range(n):
            if backend.settled(state, active):
                break
            t, s = times(j, n, x)
            state = backend.hold(model, state, shown, known, t, generator)
            if j == 0:  # the whole sequence: the cache for the block's later steps, and this step's prediction
                cache = model.new_cache(B, L)
                pred = window(backend.predict(Cached(model, cache, 0, store=True), state, t), lo, hi, L)
                cache.length = L if mode == "dual" else lo
            else:
                pred = backend.predict(Cached(model, cache, lo), state[:, lo:hi], t)
            state = step_window(backend, rule, pred, filters, state, shown, lo, hi,
                                Step(t, s, j, n, active[:, lo:hi], pending, generator))
            count += 1
            if callback is not None:
                callback(count, shown, None)
        known |= active
    return shown
