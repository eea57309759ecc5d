"""The shared denoiser: textdiff's own transformer (bidirectional for diffusion, causal for the AR baseline), or a
transformers backbone presenting the same protocol (textdiff/models/hf.py); the back-end never knows which."""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Protocol, runtime_checkable

import torch

from textdiff.models.transformer import Transformer


@runtime_checkable
class Denoiser(Protocol):
    """What back-ends, samplers and the trainer call on a model (textdiff's Transformer and every backbone adapter).

    Calls: `model(inputs, t, x0_prev=None, select=None) -> logits` with inputs (B, L) ids or (B, L, D) vectors,
    t (B,), x0_prev (B, L, D) a self-conditioning input, select (B, L) bool giving (N, V) instead of (B, L, V);
    `hidden(inputs, t, x0_prev) -> (B, L, D)`; `head(h) -> logits`; `embed_probs(probs (B, L, V))` -> the
    self-conditioning input; `segmented(segment_ids)` a context manager; `new_cache(batch, max_len)` the AR
    sampler's KV cache (passed back as `cache=`); `num_params()`.
    """

    cfg: Any
    """The recipe's model section: self_conditioning, time_conditioning, segments."""
    noise: Optional[torch.nn.Module]
    """The back-end's own trainable parts (textdiff.noising.base.Backend.modules), or None."""
    tok: Optional[torch.nn.Module]
    """The token embedding (its weight is the (V, D) table)."""
    pos: Optional[torch.nn.Module]
    """The absolute position table, None for rotary positions (the pipeline's length limit reads it)."""
    max_len: int
    """The training sequence length."""
    blocks: torch.nn.ModuleList
    """The stack of layers (compiled and FSDP-wrapped one by one by the trainer)."""
    checkpoint_blocks: bool
    """Activation checkpointing in training (train.activation_checkpointing)."""

    def __call__(self, inputs: torch.Tensor, t: Optional[torch.Tensor] = None, x0_prev: Optional[torch.Tensor] = None,
                 select: Optional[torch.Tensor] = None, **kw) -> torch.Tensor: ...

    def hidden(self, inputs: torch.Tensor, t=None, x0_prev=None) -> torch.Tensor: ...

    def head(self, h: torch.Tensor) -> torch.Tensor: ...

    def embed_probs(self, probs: torch.Tensor) -> torch.Tensor: ...

    def segmented(self, segments: Optional[torch.Tensor]) -> contextlib.AbstractContextManager: ...

    def new_cache(self, batch: int, max_len: int) -> Any: ...

    def num_params(self) -> int: ...


def build_model(recipe, vocab_size: int, max_len: int, backbone: Optional[dict] = None) -> Denoiser:
    """The denoiser a recipe describes, causal exactly when its back-end is, with the back-end's own trainable parts
    (if any) attached as `model.noise`. With model.backbone: the transformers model (textdiff.models.hf), pretrained,
    or, given a run directory's `backbone` record (config.json), its architecture for the run's weights to load."""
    from textdiff.noising import BACKENDS

    backend = BACKENDS[recipe.backend.name]
    if recipe.model.backbone is not None:
        from textdiff.models.hf import build_hf

        model = build_hf(recipe, vocab_size, max_len, backend.causal, backbone)
    else:
        model = Transformer(recipe.model, vocab_size, max_len, causal=backend.causal,
                            **backend.model_options(recipe.backend))
    model.noise = backend.modules(recipe.backend, recipe.model, vocab_size)
    return model


__all__ = ["Denoiser", "Transformer", "build_model"]
