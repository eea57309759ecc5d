"""Left-to-right sampling for the autoregressive baseline, with a KV cache."""

from __future__ import annotations

import torch

from textdiff.noising.base import draw
from textdiff.sampling import filter_probs, register_sampler
from textdiff.sampling.options import TEMPERATURE, TOP_K, TOP_P


@register_sampler("ar", takes_guidance=False)
@torch.no_grad()
def autoregressive(model, backend, x, generator, *, callback=None, guidance=None, temperature: float = TEMPERATURE,
                   top_k: int = TOP_K, top_p: float = TOP_P):
    """Fill the [MASK] suffix of x token by token after an [EOS] start token; the given prefix is the prompt.
    One model call per generated token, each over a single position (the KV cache holds the rest)."""
    x = x.clone()
    masked = x == backend.special.mask
    first = int(masked.float().argmax(dim=1).min()) if masked.any() else x.shape[1]
    if not masked[:, first:].all() or masked[:, :first].any():
        raise ValueError("the autoregressive baseline can only continue a prefix: put every [MASK] at the end")
    B, L = x.shape
    start = torch.full((B, 1), backend.special.eos, dtype=torch.long, device=x.device)
    cache = model.new_cache(B, L + 1)
    logits = model(torch.cat([start, x[:, :first]], dim=1), cache=cache)[:, -1]  # (B, V)
    for i in range(first, L):
        logits = logits.float().index_fill(-1, torch.tensor([backend.special.mask], device=x.device), float("-inf"))
        probs = filter_probs(logits, temperature, top_k, top_p)
        x[:, i] = draw(probs, generator)
        if callback is not None:
            callback(i - first + 1, x, probs)
        if i + 1 < L:
            logits = model(x[:, i:i + 1], cache=cache)[:, -1]
    return x
