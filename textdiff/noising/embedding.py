"""Gaussian diffusion on learned token embeddings: Diffusion-LM (Li et al. 2022), CDCD (Dieleman et al. 2022),
Plaid (Gulrajani & Hashimoto 2023), in continuous time with the variational bound of VDM (Kingma et al. 2021).

Forward: each counted token's embedding e (d-dimensional, trained with the model) is noised independently,
    q(z_t | x) = N(alpha_t e, sigma_t^2 I),  alpha_t^2 = sigmoid(-gamma(t)),  sigma_t^2 = sigmoid(gamma(t)).
Model: the shared transformer reads W z_t and predicts
    x0_from=logits (default): vocab logits; x0_hat = softmax(logits) @ E (CDCD's score interpolation), with the
        exact per-position Bayes logits of z_t alone added (Plaid's output prior);
    x0_from=vector: a d-dimensional vector read as `target` (x0, eps or v) and converted exactly to x0_hat.
Rounding: logits from x0_hat by similarity to the embedding table, -|x0_hat - e_v|^2 / 2 (or the vocab head's
logits when x0_from=logits); argmax or sampling. The anchor loss is the cross-entropy of the tokens under them.
Bound (nats/token, VDM eq. 11-17): prior KL(q(z_1|x) || N(0, I)) + reconstruction -log p(x | z_0) with the
Gaussian decoder p(x_i | z_0) proportional to N(z_0; alpha_0 e_x, sigma_0^2) + the diffusion term
    E_{t ~ U(0,1), eps} [ 1/2 gamma'(t) exp(-gamma(t)) |x - x0_hat(z_t, t)|^2 ].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from textdiff.noising import register
from textdiff.noising.base import Backend, Batch, BoundOutput, LossOutput, StepOutput
from textdiff.schedules import get_gaussian_schedule


class TimeWarp(nn.Module):
    """Importance sampling of t by where the bound's integrand lies: CDCD's time warping (Dieleman et al. 2022),
    with a piecewise-constant density over K bins of t fitted to the running mean of the diffusion term per bin.

    u in [0, 1) maps monotonically to t (so stratified u stay stratified); the term is divided by the density p(t),
    so the estimate of the bound stays unbiased whatever the fit. A tenth of the mass stays uniform (bounded weights).
    """

    def __init__(self, bins: int = 100, decay: float = 0.98, uniform: float = 0.1):
        super().__init__()
        self.decay, self.uniform = decay, uniform
        self.register_buffer("level", torch.ones(bins))  # running mean of the diffusion term per bin

    def probs(self) -> torch.Tensor:
        level = self.level.float().clamp_min(0)
        fitted = level / level.sum() if level.sum() > 0 else torch.full_like(level, 1.0 / len(level))
        return (1.0 - self.uniform) * fitted + self.uniform / len(level)  # (K,)

    def times(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u (B,) in [0, 1) -> t (B,) and its density p(t) (B,)."""
        p = self.probs().to(u.device)
        K = len(p)
        cdf = p.cumsum(0)
        k = torch.searchsorted(cdf, u.float().clamp(max=1.0 - 1e-7) * cdf[-1], right=True).clamp(max=K - 1)
        frac = ((u - (cdf[k] - p[k])) / p[k]).clamp(0.0, 1.0)
        return (k + frac) / K, p[k] * K

    @torch.no_grad()
    def update(self, t: torch.Tensor, value: torch.Tensor) -> None:
        """Fold per-sequence diffusion terms (B,) observed at times t (B,) into the running means."""
        k = (t * len(self.level)).long().clamp(0, len(self.level) - 1)
        for b, v in zip(k.tolist(), value.float().tolist()):
            self.level[b] = self.decay * self.level[b] + (1.0 - self.decay) * v


class EmbeddingModules(nn.Module):
    """The back-end's trainable parts, attached to the model as `model.noise`: the token embeddings that are
    diffused, the projections between them and the transformer, and the (possibly learned) schedule."""

    def __init__(self, cfg, model_cfg, vocab_size: int):
        super().__init__()
        d, D = cfg.embed_dim, model_cfg.n_embd
        self.embed_norm = cfg.embed_norm
        self.embedding = nn.Embedding(vocab_size, d)
        nn.init.normal_(self.embedding.weight, std=1.0)
        self.inp = nn.Linear(d, D)
        self.out = nn.Linear(D, d) if cfg.x0_from == "vector" else None
        self.schedule = get_gaussian_schedule(cfg.schedule or EmbeddingDiffusion.default_schedule,
                                              cfg.gamma_min, cfg.gamma_max)
        self.warp = TimeWarp()

    def table(self) -> torch.Tensor:
        """(V, d) the embeddings that are diffused; with embed_norm each has norm sqrt(d) (CDCD)."""
        e = self.embedding.weight.float()
        if self.embed_norm:
            e = F.normalize(e, dim=-1) * math.sqrt(e.shape[-1])
        return e


@dataclass
class Prediction:
    """The model's view of x0 at one time."""

    x0: torch.Tensor
    """(B, L, d) the x0 estimate in embedding space."""
    logits: torch.Tensor
    """(B, L, V) rounding logits of the tokens."""


def gaussian_logits(z: torch.Tensor, alpha: torch.Tensor, var: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """log N(z; alpha e_v, var I) over the vocabulary up to a constant: (alpha z.e_v - alpha^2 |e_v|^2 / 2) / var.
    z (B, L, d); alpha, var (B,) or scalars; table (V, d) -> (B, L, V)."""
    alpha, var = torch.as_tensor(alpha, device=z.device), torch.as_tensor(var, device=z.device)
    if alpha.dim():
        alpha, var = alpha[:, None, None], var[:, None, None]
    dots = z.float() @ table.t()  # (B, L, V)
    return (alpha * dots - 0.5 * alpha ** 2 * (table ** 2).sum(-1)) / var


@register("embedding")
class EmbeddingDiffusion(Backend):
    default_sampler = "ddim"
    samplers = ("ddim", "ddpm")
    default_schedule = "cosine"
    schedules = ("cosine", "sqrt", "linear", "learned")

    @classmethod
    def model_options(cls, cfg):
        return {"token_input": False, "vocab_head": cfg.x0_from == "logits"}

    @classmethod
    def modules(cls, cfg, model_cfg, vocab_size):
        return EmbeddingModules(cfg, model_cfg, vocab_size)

    # --- the forward process -----------------------------------------------------------------------------------

    def noised(self, e, alpha, sigma, generator, noise_mask=None):
        """z = alpha e + sigma eps where noise_mask (B, L) holds, e elsewhere. e (B, L, d); alpha, sigma (B,)."""
        eps = torch.randn(e.shape, generator=generator, device=e.device)
        z = alpha[:, None, None] * e + sigma[:, None, None] * eps
        if noise_mask is not None:
            z = torch.where(noise_mask[..., None], z, e)
        return z, eps

    def corrupt(self, x0, t, generator, noise_mask=None, model=None):
        """Token ids x0 (B, L) -> z_t (B, L, d) ~ q(z_t | x0) at times t (B,); needs the model's embeddings."""
        if model is None:
            raise ValueError("the embedding back-end corrupts learned embeddings: pass model=")
        alpha, sigma = model.noise.schedule.alpha_sigma(t)
        return self.noised(model.noise.table()[x0], alpha, sigma, generator, noise_mask)[0]

    # --- parameterisation --------------------------------------------------------------------------------------

    def to_x0(self, out, z, alpha, sigma):
        """Exact conversion of the model's `target` prediction to x0 (alpha, sigma (B,) broadcast over (B, L, d))."""
        a, s = alpha[:, None, None], sigma[:, None, None]
        if self.cfg.target == "eps":
            return (z - s * out) / a
        if self.cfg.target == "v":  # v = alpha eps - sigma x0
            return a * z - s * out
        return out

    def from_x0(self, x0, z, alpha, sigma):
        """The inverse of `to_x0`: the `target` quantity implied by an x0 estimate."""
        a, s = alpha[:, None, None], sigma[:, None, None]
        eps = (z - a * x0) / s
        return {"x0": x0, "eps": eps, "v": a * eps - s * x0}[self.cfg.target]

    def predict(self, model, z, t, x0_prev=None) -> Prediction:
        """x0 estimate and rounding logits from z_t (B, L, d) at times t (B,)."""
        noise = model.noise
        table = noise.table()
        alpha, sigma = noise.schedule.alpha_sigma(t)
        cond = None if x0_prev is None else noise.inp(x0_prev.to(z.dtype))
        h = model.hidden(noise.inp(z), t, x0_prev=cond)
        out = model.head(h) if self.cfg.x0_from == "logits" else noise.out(h)
        with torch.autocast(z.device.type, enabled=False):  # the bound needs x0_hat to float32 precision
            if self.cfg.x0_from == "logits":
                logits = out.float()
                if self.cfg.output_prior:
                    logits = logits + gaussian_logits(z, alpha, sigma ** 2, table)
                logits[..., self.special.mask] = float("-inf")
                return Prediction(torch.softmax(logits, dim=-1) @ table, logits)
            x0 = self.to_x0(out.float(), z.float(), alpha, sigma)
            return Prediction(x0, self.rounding_logits(x0, table))

    def rounding_logits(self, x0, table):
        """-|x0 - e_v|^2 / 2 up to a constant, with [MASK] excluded."""
        logits = gaussian_logits(x0, 1.0, 1.0, table)
        logits[..., self.special.mask] = float("-inf")
        return logits

    def _self_condition(self, model, z, t):
        """Analog-Bits self-conditioning: a no-grad pass whose x0 estimate is fed back in."""
        with torch.no_grad():
            return self.predict(model, z, t).x0

    # --- training and likelihood -------------------------------------------------------------------------------

    def _terms(self, model, batch: Batch, t, generator, self_cond: bool):
        """At times t (B,): per-token training diffusion loss, the bound's diffusion integrand and the anchor
        cross-entropy, each (B, L) (not yet divided by the density of t)."""
        noise = model.noise
        e = noise.table()[batch.ids]  # (B, L, d)
        g = noise.schedule.gamma(t)
        alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
        z, _ = self.noised(e, alpha, sigma, generator, batch.loss_mask)
        x0_prev = self._self_condition(model, z, t) if self_cond else None
        pred = self.predict(model, z, t, x0_prev)
        sq = ((e - pred.x0) ** 2).sum(-1)  # (B, L)
        elbo = 0.5 * noise.schedule.gamma_prime(t) * torch.exp(-g)  # (B,) -1/2 SNR'(t)
        if self.cfg.loss == "elbo":
            diffusion = elbo[:, None] * sq
        else:  # L_simple: mean squared error of the target itself, |target - target_hat|^2 / d
            snr = torch.exp(-g)
            weight = {"x0": torch.ones_like(snr), "eps": snr, "v": 1.0 / sigma ** 2}[self.cfg.target]
            diffusion = weight[:, None] * sq / e.shape[-1]
        ce = F.cross_entropy(pred.logits.transpose(1, 2), batch.ids, reduction="none")  # (B, L)
        return diffusion, elbo[:, None] * sq, ce

    def _ends(self, model, ids, generator):
        """Per-token prior KL at t = 1 and reconstruction -log p(x | z_0) at t = 0: each (B, L)."""
        noise = model.noise
        table = noise.table()
        e = table[ids]
        ones = torch.ones(ids.shape[0], device=ids.device)
        a1, s1 = noise.schedule.alpha_sigma(ones)
        var1 = s1[0] ** 2
        d = e.shape[-1]
        prior = 0.5 * (d * (var1 - 1.0 - torch.log(var1)) + a1[0] ** 2 * (e ** 2).sum(-1))
        a0, s0 = noise.schedule.alpha_sigma(0 * ones)
        z0, _ = self.noised(e, a0, s0, generator)
        with torch.autocast(z0.device.type, enabled=False):
            logits = gaussian_logits(z0, a0, s0 ** 2, table)
        recon = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        return prior, recon

    def loss(self, model, batch: Batch, generator):
        keep = batch.loss_mask
        u = self.uniforms(batch.ids.shape[0], generator, batch.ids.device)
        t, density = model.noise.warp.times(u) if self.cfg.time_warp else (u, torch.ones_like(u))
        self_cond = self.self_condition_now(model, generator)
        diffusion, term, ce = self._terms(model, batch, t, generator, self_cond)
        if model.training:
            model.noise.warp.update(t, (term * keep).sum(1) / keep.sum(1).clamp_min(1))
        per_token = diffusion / density[:, None] + self.cfg.ce_weight * ce
        if self.cfg.loss == "elbo" and self.cfg.schedule == "learned":  # the end terms train the end points
            prior, recon = self._ends(model, batch.ids, generator)
            per_token = per_token + prior + recon
        n = int(batch.loss_mask.sum())
        return LossOutput(loss=(per_token * batch.loss_mask).sum() / max(n, 1), n_tokens=n)

    @torch.no_grad()
    def bound(self, model, batch: Batch, n_draws: int, generator):
        """NELBO per sequence: prior + reconstruction + the diffusion term averaged over n_draws stratified times
        (the model self-conditions on a first pass when it was trained to)."""
        keep = batch.loss_mask
        B = batch.ids.shape[0]
        u = torch.rand(B, generator=generator, device=batch.ids.device)
        draws = []
        for k in range(n_draws):
            t, density = model.noise.warp.times((u + k / n_draws) % 1.0)
            _, term, _ = self._terms(model, batch, t, generator, model.cfg.self_conditioning)
            prior, recon = self._ends(model, batch.ids, generator)
            draws.append(((term / density[:, None] + prior + recon) * keep).sum(dim=1))
        return BoundOutput.from_draws(torch.stack(draws, dim=1), keep.sum(dim=1))  # draws (B, D)

    # --- sampling ----------------------------------------------------------------------------------------------

    def unconditional(self, model, z, t, source) -> Prediction:
        """Classifier-free guidance's null-condition prediction: the source (B, L) given as the clean [PAD] embedding."""
        null = model.noise.table()[self.special.pad].to(z.dtype)  # (d,)
        return self.predict(model, torch.where(source[..., None], null, z), t)

    def classifier_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def classifier_input_dim(self, model) -> int:
        return model.noise.embedding.weight.shape[1]

    def classifier_guided(self, model, out: Prediction, grad: torch.Tensor, t: torch.Tensor) -> Prediction:
        """Gradient guidance on the score, grad log p(z_t) += grad (= scale grad_z log p(c | z_t)): by Tweedie the x0
        estimate moves by sigma_t^2 / alpha_t grad, and the rounding logits with it, l_v += dx0 . e_v."""
        alpha, sigma = model.noise.schedule.alpha_sigma(t)
        dx0 = (sigma ** 2 / alpha)[:, None, None] * grad
        return Prediction(out.x0 + dx0, out.logits + dx0 @ model.noise.table().float().T)

    def prior_sample(self, model, shape, generator) -> torch.Tensor:
        """z_1 ~ N(0, I): (B, L) -> (B, L, d)."""
        d = model.noise.embedding.weight.shape[1]
        device = model.noise.embedding.weight.device
        return torch.randn((*shape, d), generator=generator, device=device)

    def step(self, x0, z, t: float, s: float, generator, eta: float = 0.0, model=None) -> StepOutput:
        """DDIM (Song et al. 2021, eq. 12) from t to s < t given the x0 estimate (B, L, d): with eta = 1 it is the
        DDPM posterior q(z_s | z_t, x0_hat) (ancestral sampling); with eta = 0 deterministic."""
        times = torch.tensor([t, s], device=z.device)
        alpha, sigma = model.noise.schedule.alpha_sigma(times)
        (a_t, a_s), (s_t, s_s) = alpha.tolist(), sigma.tolist()
        eps = (z - a_t * x0) / s_t
        c = eta * s_s / s_t * math.sqrt(max(1.0 - (a_t / a_s) ** 2, 0.0))  # DDIM's sigma_{t -> s}
        z_s = a_s * x0 + math.sqrt(max(s_s ** 2 - c ** 2, 0.0)) * eps
        if c > 0:
            z_s = z_s + c * torch.randn(z.shape, generator=generator, device=z.device)
        return StepOutput(z_s)
