"""Masked (absorbing-state) diffusion in continuous time: MDLM (Sahoo et al. 2024) with the SUBS parameterisation.

Forward: each counted token is independently replaced by [MASK] with probability 1 - alpha(t).
Model: x0 logits; SUBS sets the [MASK] logit to -inf and carries unmasked tokens over unchanged.
Loss: the Rao-Blackwellised continuous-time NELBO (MDLM eq. 10),
    E_t [ -alpha'(t) / (1 - alpha(t)) * sum_{i masked} -log p_theta(x0_i | x_t) ],
with low-discrepancy (antithetic) draws, normalised per counted token. For a denoiser without time input the
t-integral is done exactly given the number of masks k (`backend.mask_sampling: count`, the default):
    E_{k ~ U{1..n}} [ n/k * sum_{i masked, |masked| = k} -log p_theta(x0_i | x_k) ],
the same bound with weights <= n instead of 1/t (see `draw_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from textdiff.noising import register
from textdiff.noising.base import (Backend, Batch, DiscreteOptions, Prediction, StepOutput, block_of, block_uniforms,
                                   clean_context, draw, per_row, per_token)
from textdiff.options import check_choice
from textdiff.schedules import get_schedule


@dataclass(frozen=True)
class MaskedOptions(DiscreteOptions):
    """The masked back-end's keys."""

    mask_sampling: str = "count"
    """The ELBO estimator: `count` draws the number of masks k uniformly and weights n/k (t integrated out exactly;
    needs model.time_conditioning: false) or `time` draws t and weights 1/t-like (MDLM)."""

    def __post_init__(self):
        super().__post_init__()
        check_choice("backend.mask_sampling", self.mask_sampling, ("count", "time"))


@register("masked")
class MaskedDiffusion(Backend):
    Options = MaskedOptions
    default_sampler = "ancestral"
    samplers = ("ancestral", "confidence")
    time_free = True
    block_diffusion = True

    def __init__(self, cfg, special, vocab_size):
        super().__init__(cfg, special, vocab_size)
        self.schedule = get_schedule(cfg.schedule_name())
        self.mask_id = special.mask

    @classmethod
    def check_recipe(cls, recipe) -> None:
        super().check_recipe(recipe)
        if recipe.model.time_conditioning and recipe.backend.mask_sampling == "count":
            raise ValueError("backend.mask_sampling=count integrates t out and needs model.time_conditioning: false; "
                             "set backend.mask_sampling: time for a time-conditioned denoiser")
        if recipe.backend.mask_sampling == "count" and recipe.backend.eps != MaskedOptions.eps:
            raise ValueError(f"backend.eps={recipe.backend.eps}: backend.mask_sampling=count draws the number of masks, "
                             "not t, so there is no smallest t to set; use backend.mask_sampling: time or leave eps out")

    # --- forward process ---------------------------------------------------------------------------------

    def corrupt(self, x0, t, generator, noise_mask=None, model=None):
        """Mask each token with probability 1 - alpha(t), t (B,) or per position (B, L) (a block model's time per
        block); only where noise_mask (B, L) is True."""
        p_mask = 1.0 - self.schedule.alpha(t)
        p_mask = p_mask if p_mask.dim() == 2 else p_mask[:, None]  # (B, L) or (B, 1)
        masked = torch.rand(x0.shape, generator=generator, device=x0.device) < p_mask
        if noise_mask is not None:
            masked &= noise_mask
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0)

    def draw_masks(self, keep: torch.Tensor, v: torch.Tensor, generator, t_min: float):
        """Masks and ELBO weights for one draw per sequence, from uniforms v (B,).

        `time`:  t = t_min + (1 - t_min) v, each counted token masked w.p. 1 - alpha(t), weight -alpha'/(1 - alpha).
        `count`: k = 1 + floor(v n) of the n counted tokens masked, uniformly, weight n / k. For a denoiser that
                 ignores t this is the same NELBO with t integrated out exactly: int_0^1 (1/t) Binom(k; n, t) dt = 1/k
                 (any schedule), so the loss is the any-order autoregressive bound, with bounded weights (<= n)
                 instead of 1/t (up to 1/t_min).
        Returns masked (B, L) bool, weight (B,), t (B,) (the model's time input).
        """
        if self.cfg.mask_sampling == "time":
            t = t_min + (1.0 - t_min) * v
            p_mask = (1.0 - self.schedule.alpha(t))[:, None]  # (B, 1)
            masked = (torch.rand(keep.shape, generator=generator, device=keep.device) < p_mask) & keep
            return masked, self.schedule.elbo_weight(t), t
        n = keep.sum(dim=1)  # (B,)
        k = torch.minimum(1 + (v * n).long(), n)  # (B,) in [1, n] (0 when n = 0)
        scores = torch.rand(keep.shape, generator=generator, device=keep.device).masked_fill(~keep, 2.0)
        rank = scores.argsort(dim=1).argsort(dim=1)  # (B, L) a uniformly random order of the counted tokens
        masked = rank < k[:, None]
        weight = torch.where(n > 0, n / k.clamp_min(1), torch.zeros_like(n, dtype=torch.float32)).float()
        return masked, weight, k / n.clamp_min(1)

    # --- the model's x0 distribution ---------------------------------------------------------------------

    def subs(self, logits: torch.Tensor) -> torch.Tensor:
        """SUBS: the clean distribution never puts mass on [MASK]."""
        logits = logits.float()
        logits[..., self.mask_id] = float("-inf")
        return logits

    def predict(self, model, x_t, t, x0_prev=None, context=None) -> Prediction:
        """(B, L, V) x0 logits; at unmasked positions the distribution is a point mass on the given token
        (`context`: the clean sequence beside x_t, for a block model's training passes)."""
        extra = {"context": context} if context is not None else {}
        masked = x_t == self.mask_id
        out = self.subs(model(x_t, t, x0_prev=self.cond_input(model, x0_prev), select=masked, **extra))  # (N, V)
        logits = out.new_full((*x_t.shape, out.shape[-1]), float("-inf"))  # the vocab head ran at the masks only
        logits[masked] = out
        b, i = (~masked).nonzero(as_tuple=True)
        logits[b, i, x_t[b, i]] = 0.0
        return Prediction(logits)

    # --- training and likelihood -------------------------------------------------------------------------

    def block_masks(self, keep: torch.Tensor, v: torch.Tensor, generator, t_min: float, block: int):
        """`draw_masks` for a block model: each block of K positions drawn on its own (its own k or t, from
        stratified uniforms), so the bound is the sum over blocks of each block's NELBO given the clean blocks
        before it. Returns masked (B, L), weight (B, L) per position, t (B, L) per position."""
        B, L = keep.shape
        vb = block_uniforms(v, L, block)  # (B, L / K)
        masked, weight, t = self.draw_masks(keep.reshape(-1, block), vb.reshape(-1), generator, t_min)
        return masked.view(B, L), per_token(weight.view(B, -1), block), per_token(t.view(B, -1), block)

    def _masked_nll(self, model, x0, keep, v, generator, t_min: float, self_cond: bool = False):
        """Per-sequence weighted cross-entropy over masked positions, one draw each.  Returns (B,) nats."""
        K = block_of(model)
        if K:
            masked, weight, t = self.block_masks(keep, v, generator, t_min, K)
        else:
            masked, weight, t = self.draw_masks(keep, v, generator, t_min)
            weight = weight[:, None].expand_as(keep)
        x_t = x0.masked_fill(masked, self.mask_id)
        x0_prev = self.self_condition(model, x_t, t, context=x0) if self_cond else None
        logits = self.subs(model(x_t, t, x0_prev=self.cond_input(model, x0_prev), select=masked,
                                 **clean_context(model, x0)))  # (N, V)
        ce = F.cross_entropy(logits, x0[masked], reduction="none") * weight[masked]  # (N,)
        per_seq = torch.zeros(x0.shape[0], device=x0.device, dtype=ce.dtype)
        return per_seq.index_add(0, masked.nonzero()[:, 0], ce)  # (B,)

    def loss(self, model, batch: Batch, generator):
        return self.one_draw_loss(model, batch, generator, self._masked_nll)

    @torch.no_grad()
    def bound(self, model, batch: Batch, n_draws: int, generator):
        """NELBO per sequence, averaged over n_draws stratified draws each (a Monte Carlo estimate)."""
        return self.stratified_bound(model, batch, n_draws, generator, self._masked_nll)

    # --- sampling ----------------------------------------------------------------------------------------

    def unconditional(self, model, x_t, t, source) -> Prediction:
        """Classifier-free guidance's null-condition prediction: the source (B, L) set to [PAD]."""
        return self.predict(model, x_t.masked_fill(source, self.special.pad), t)

    def reveal(self, probs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, generator):
        """MDLM's ancestral step t -> s (eq. 7), per sequence (t, s (B,)) or per position (B, L): each masked token
        is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t) (1 at s = 0), its value drawn from probs
        (B, L, V)."""
        a_t, a_s = self.schedule.alpha(t.double()), self.schedule.alpha(s.double())
        p = torch.where(s <= 0, torch.ones_like(a_t), (a_s - a_t) / (1.0 - a_t).clamp_min(1e-12)).float()
        masked = x_t == self.mask_id
        p = p if p.dim() == 2 else per_row(p, x_t)  # (B, L) or (B, 1)
        reveal = masked & (torch.rand(x_t.shape, generator=generator, device=x_t.device) < p)
        if not reveal.any():
            return x_t
        sample = x_t.clone()
        sample[reveal] = draw(probs[reveal], generator)
        return sample

    def step(self, pred, probs, state, t, s, generator) -> StepOutput:
        sample = self.reveal(probs, state, t, s, generator)
        return StepOutput(sample, sample)

    def settled(self, state, where) -> bool:
        return not bool((state == self.mask_id)[where].any())
