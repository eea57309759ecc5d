"""The autoregressive baseline as a back-end: the same transformer with a causal mask and no time input.

Loss and likelihood are the exact next-token cross-entropy; sampling is left to right with a KV cache.
Every diffusion number is reported beside this one, with the same tokenizer, data and size.

Like for like: the model reads `[EOS] x_0 ... x_{L-2}` and predicts `x_0 ... x_{L-1}`, so every one of the L
positions a diffusion bound scores is scored here too (the sampler already started from [EOS], as GPT-2 does).
A run written before `backend.start_token` existed reads `x_0 ... x_{L-2}` and scores L - 1 positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from textdiff.noising import register
from textdiff.noising.base import Backend, Batch, BoundOutput, LossOutput, Options


@dataclass(frozen=True)
class AROptions(Options):
    """The AR baseline's options."""

    before: ClassVar[dict] = {"start_token": False}

    start_token: bool = True
    """Predict the first token of each sequence after an [EOS] start token, so the loss and the exact likelihood
    count the same positions as a diffusion bound; false: the first token is context only (runs before this key)."""


@register("ar")
class Autoregressive(Backend):
    causal = True
    default_sampler = "ar"
    samplers = ("ar",)
    self_conditioning = False
    Options = AROptions

    @property
    def scores_every_token(self) -> bool:
        return self.cfg.start_token

    @classmethod
    def check_recipe(cls, recipe) -> None:
        super().check_recipe(recipe)
        if recipe.model.time_conditioning:
            raise ValueError("model.time_conditioning=true: the ar baseline has no diffusion time to condition on; "
                             "set it to false")
        if recipe.model.segments:
            raise ValueError("model.segments=true is for the bidirectional back-ends; the ar baseline reads [SEP]")

    def _shift(self, batch: Batch):
        """Model inputs (B, L) `[EOS] x_0..x_{L-2}` (or (B, L-1) `x_0..x_{L-2}` without the start token), and the
        targets and counted mask of the same width."""
        if not self.cfg.start_token:
            return batch.ids[:, :-1], batch.ids[:, 1:], batch.loss_mask[:, 1:]
        start = torch.full_like(batch.ids[:, :1], self.special.eos)
        return torch.cat([start, batch.ids[:, :-1]], dim=1), batch.ids, batch.loss_mask

    def _token_nll(self, model, batch: Batch):
        """(N,) next-token NLL at counted positions, and the mask of those positions."""
        inputs, targets, counted = self._shift(batch)
        logits = model(inputs, select=counted)  # (N, V)
        return F.cross_entropy(logits.float(), targets[counted], reduction="none"), counted

    def loss(self, model, batch: Batch, generator=None):
        nll, counted = self._token_nll(model, batch)
        n = int(counted.sum())
        return LossOutput(loss=nll.sum() / max(n, 1), n_tokens=n)

    @torch.no_grad()
    def bound(self, model, batch: Batch, n_draws: int = 1, generator=None):
        nll, counted = self._token_nll(model, batch)
        per_seq = torch.zeros(batch.ids.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, counted.nonzero()[:, 0], nll)
        return BoundOutput(per_seq, torch.zeros_like(per_seq), counted.sum(dim=1), exact=True)
