"""The autoregressive baseline as a back-end: the same transformer with a causal mask and no time input.

Loss and likelihood are the exact next-token cross-entropy; sampling is left to right with a KV cache.
Every diffusion number is reported beside this one, with the same tokenizer, data and size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textdiff.noising import register
from textdiff.noising.base import Backend, Batch, BoundOutput, LossOutput


@register("ar")
class Autoregressive(Backend):
    causal = True
    default_sampler = "ar"
    samplers = ("ar",)
    self_conditioning = False

    @classmethod
    def check_recipe(cls, recipe) -> None:
        super().check_recipe(recipe)
        if recipe.model.time_conditioning:
            raise ValueError("model.time_conditioning=true: the ar baseline has no diffusion time to condition on; "
                             "set it to false")
        if recipe.model.segments:
            raise ValueError("model.segments=true is for the bidirectional back-ends; the ar baseline reads [SEP]")

    def _token_nll(self, model, batch: Batch):
        """(N,) next-token NLL at counted positions, and the (B, L-1) mask of those positions."""
        counted = batch.loss_mask[:, 1:]
        logits = model(batch.ids[:, :-1], select=counted)  # (N, V)
        return F.cross_entropy(logits.float(), batch.ids[:, 1:][counted], reduction="none"), counted

    def loss(self, model, batch: Batch, generator=None):
        nll, counted = self._token_nll(model, batch)
        n = int(counted.sum())
        return LossOutput(loss=nll.sum() / max(n, 1), n_tokens=n)

    @torch.no_grad()
    def bound(self, model, batch: Batch, n_draws: int = 1, generator=None):
        nll, counted = self._token_nll(model, batch)
        per_seq = torch.zeros(batch.ids.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, counted.nonzero()[:, 0], nll)
        return BoundOutput(per_seq, torch.zeros_like(per_seq), counted.sum(dim=1), exact=True)
