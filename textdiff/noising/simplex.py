"""Simplex-logit diffusion: SSD-LM (Han et al. 2023) and TESS (Karimi Mahabadi et al. 2024).

Tokens become almost-one-hot logits over the vocabulary, s0 = k (2 onehot(x0) - 1) (SSD-LM eq. 1: +k on the
token, -k on every other), and Gaussian noise is added to those logits with the noise scaled by k as in SSD-LM:
    x_t = alpha_t s0 + sigma_t k eps,   eps ~ N(0, I),   alpha_t^2 = sigmoid(-gamma(t)), sigma_t^2 = sigmoid(gamma(t)),
with a Gaussian log-SNR schedule gamma(t) (`cosine` by default, `sqrt` and `linear` selectable; see schedules.py).
The denoiser reads softmax(x_t) @ E, the expected token embedding under the noisy point on the simplex, and
predicts x0 logits trained by cross-entropy (`backend.target: x0`, SSD-LM / TESS), or eps trained by mean squared
error (`backend.target: eps`), its x0 logits then being (x_t - sigma_t k eps_hat) / alpha_t clamped to [-k, k].
Self-conditioning (TESS): the previous x0 distribution, embedded the same way, is a second input of the denoiser.
There is no tractable likelihood bound: judge this back-end by generative perplexity and diversity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from textdiff.noising import register
from textdiff.noising.base import (Backend, Batch, GaussianOptions, LossOutput, Prediction, StepOutput, ddim_update,
                                   draw, per_row)
from textdiff.options import check_positive
from textdiff.schedules import get_gaussian_schedule


@dataclass(frozen=True)
class SimplexOptions(GaussianOptions):
    """The simplex back-end's keys (target: `x0` trains by cross-entropy, `eps` by mean squared error)."""

    simplex_k: float = 5.0
    """Clean tokens become logits +k (the token) and -k (every other)."""

    def __post_init__(self):
        super().__post_init__()
        check_positive("backend.simplex_k", self.simplex_k)


@register("simplex")
class SimplexDiffusion(Backend):
    Options = SimplexOptions
    default_sampler = "simplex"
    samplers = ("simplex", "simplex_ddim")
    has_bound = False

    def __init__(self, cfg, special, vocab_size):
        super().__init__(cfg, special, vocab_size)
        self.k = cfg.simplex_k
        self.schedule = get_gaussian_schedule(cfg.schedule_name(), cfg.gamma_min, cfg.gamma_max)
        self.never = torch.zeros(vocab_size, dtype=torch.bool)
        self.never[special.mask] = True

    # --- the simplex and the forward process ---------------------------------------------------------------------

    def simplex(self, ids: torch.Tensor) -> torch.Tensor:
        """Tokens as almost-one-hot logits: (B, L) -> (B, L, V), +k on the token and -k elsewhere."""
        return self.k * (2.0 * F.one_hot(ids, self.vocab_size).float() - 1.0)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) -> tokens (B, L) by argmax over the allowed tokens; token ids pass through."""
        if not x.is_floating_point():
            return x
        return self.no_mask(x).argmax(dim=-1)

    def noise(self, s0: torch.Tensor, t: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t = alpha_t s0 + sigma_t k eps for s0 (B, L, V) and t (B,).  Returns x_t and eps, both (B, L, V)."""
        alpha, sigma = (v[:, None, None] for v in self.schedule.alpha_sigma(t))  # 2 × (B, 1, 1)
        eps = torch.randn(s0.shape, generator=generator, device=s0.device)
        return alpha * s0 + sigma * self.k * eps, eps

    def corrupt(self, x0, t, generator, noise_mask=None, model=None):
        """Noisy logits (B, L, V) of tokens x0 (B, L) at times t (B,); positions outside noise_mask stay clean."""
        s0 = self.simplex(x0)
        x_t = self.noise(s0, t, generator)[0]
        return x_t if noise_mask is None else torch.where(noise_mask[..., None], x_t, s0)

    # --- the model's x0 distribution ---------------------------------------------------------------------------

    @staticmethod
    def model_input(model, x_t: torch.Tensor) -> torch.Tensor:
        """The denoiser's input: softmax(x_t) @ E.  (B, L, V) -> (B, L, D)"""
        return model.embed_probs(torch.softmax(x_t.float(), dim=-1))

    def _forward(self, model, x_t, t, x0_prev=None, select=None) -> torch.Tensor:
        """The model's raw output (B, L, V), or (N, V) at `select`; x0_prev (B, L, V) is a distribution or None."""
        return model(self.model_input(model, x_t), t, x0_prev=self.cond_input(model, x0_prev), select=select).float()

    def predict(self, model, x_t, t, x0_prev=None) -> Prediction:
        """(B, L, V) x0 logits from noisy logits x_t (B, L, V) at times t (B,), never on [MASK]."""
        out = self._forward(model, x_t, t, x0_prev)
        if self.cfg.target == "eps":
            alpha, sigma = (v[:, None, None] for v in self.schedule.alpha_sigma(t))
            out = ((x_t - sigma * self.k * out) / alpha).clamp(-self.k, self.k)
        return Prediction(self.no_mask(out))

    def classifier_input(self, x_t: torch.Tensor) -> torch.Tensor:
        """The noisy logits as the distribution the denoiser reads, softmax(x_t) (B, L, V)."""
        return torch.softmax(x_t.float(), dim=-1)

    def no_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """The clean distribution never puts mass on [MASK]: its logit becomes -inf.  (..., V) -> (..., V)"""
        return logits.masked_fill(self.never.to(logits.device), float("-inf"))

    # --- training ------------------------------------------------------------------------------------------------

    def loss(self, model, batch: Batch, generator):
        """Cross-entropy of x0 (target x0) or mean squared error of eps (target eps), per counted token."""
        ids, keep = batch.ids, batch.loss_mask
        t = self.uniforms(ids.shape[0], generator, ids.device)  # (B,)
        s0 = self.simplex(ids)  # (B, L, V)
        x_t, eps = self.noise(s0, t, generator)  # 2 × (B, L, V)
        x_t = torch.where(keep[..., None], x_t, s0)  # uncounted positions stay clean
        x0_prev = self.self_condition(model, x_t, t) if self.self_condition_now(model, generator) else None
        out = self._forward(model, x_t, t, x0_prev, select=keep)  # (N, V)
        if self.cfg.target == "eps":
            total = (out - eps[keep]).pow(2).mean(dim=-1).sum()
        else:
            total = F.cross_entropy(self.no_mask(out), ids[keep], reduction="sum")
        n = int(keep.sum())
        return LossOutput(loss=total / max(n, 1), n_tokens=n)

    # --- sampling --------------------------------------------------------------------------------------------------

    def unconditional(self, model, x_t, t, source) -> Prediction:
        """Classifier-free guidance's null-condition x0 logits: the source (B, L) held at the clean [PAD] logits."""
        null = self.simplex(torch.full(source.shape, self.special.pad, dtype=torch.long, device=source.device))
        return self.predict(model, torch.where(source[..., None], null, x_t), t)

    def start(self, model, x, generator) -> torch.Tensor:
        """x_1 = sigma_1 k eps at every [MASK] of x (B, L), the given tokens at their clean ±k logits: (B, L, V)."""
        clean = self.simplex(x)
        ones = torch.ones(x.shape[0], device=x.device)
        return torch.where((x != self.special.mask)[..., None], clean,
                           self.noise(torch.zeros_like(clean), ones, generator)[0])

    def hold(self, model, x_t, ids, known, t, generator) -> torch.Tensor:
        """Known tokens (given, or a finished semi-autoregressive block) stay at their clean ±k logits, as SSD-LM
        holds its context."""
        return torch.where(known[..., None], self.simplex(ids), x_t)

    def tokens(self, x_t) -> torch.Tensor:
        return self.decode(x_t)

    def _renoised(self, s0: torch.Tensor, s: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        return torch.where(per_row(s <= 0, s0), s0, noisy)

    def step(self, pred, probs, x_t, t, s, generator) -> StepOutput:
        """SSD-LM's reverse step t -> s: project the x0 distribution probs (B, L, V) to one token per position and
        noise its ±k logits afresh to level s (x_t is forgotten; at s = 0 the clean ±k logits)."""
        ids = draw(probs, generator)
        s0 = self.simplex(ids)
        return StepOutput(self._renoised(s0, s, self.noise(s0, s, generator)[0]), ids)

    def ddim(self, probs, x_t, t, s, eta: float, generator) -> StepOutput:
        """DDIM's step t -> s (Song et al. 2021, eq. 12) toward the projected x0: the noise of x_t is kept, eta = 0
        deterministic given the projection, eta = 1 the DDPM posterior q(x_s | x_t, x0). The process runs on x / k,
        whose noise has unit scale."""
        ids = draw(probs, generator)
        s0 = self.simplex(ids)
        z_s = ddim_update(s0 / self.k, x_t / self.k, self.schedule.alpha_sigma(t), self.schedule.alpha_sigma(s), eta,
                          generator)
        return StepOutput(self._renoised(s0, s, self.k * z_s), ids)
