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

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from textdiff.noising import register
from textdiff.noising.base import (Backend, Batch, BoundOutput, GaussianOptions, LossOutput, Prediction, StepOutput,
                                   ddim_update, draw)
from textdiff.options import check_choice, check_positive
from textdiff.schedules import GaussianSchedule, get_gaussian_schedule


@dataclass(frozen=True)
class EmbeddingOptions(GaussianOptions):
    """The embedding back-end's keys."""

    schedules: ClassVar[tuple[str, ...]] = ("cosine", "sqrt", "linear", "learned")
    targets: ClassVar[tuple[str, ...]] = ("x0", "eps", "v")

    x0_from: str = "logits"
    """Where the x0 estimate comes from. `logits`: the expected embedding under the vocab head's distribution
    (CDCD's score interpolation, Plaid's categorical reparameterisation; needs target x0); `vector`: a vector head
    whose output is read as `target`."""
    output_prior: bool = True
    """With x0_from=logits: add the exact Bayes logits of x_t alone, -|x_t - alpha e_v|^2 / (2 sigma^2), to the
    model's (Plaid's output prior), so the low-noise end is right without learning it."""
    embed_dim: int = 64
    """Width d of the diffused token embeddings."""
    embed_norm: bool = True
    """Scale every token embedding to norm sqrt(d) (CDCD), so embeddings cannot collapse."""
    time_warp: bool = True
    """Draw training times from the density fitted to the bound's integrand (CDCD's time warping; the loss is
    divided by it, so unbiased); False draws t uniformly. The bound always uses the fit."""
    loss: str = "elbo"
    """The diffusion loss: `elbo` (the continuous-time variational bound, VDM) or `simple` (unweighted mean
    squared error of the target, Ho et al. 2020)."""
    ce_weight: float = 1.0
    """Weight of the rounding / anchor cross-entropy of the tokens under the logits of the x0 estimate."""

    def __post_init__(self):
        super().__post_init__()
        check_choice("backend.x0_from", self.x0_from, ("logits", "vector"))
        if self.x0_from == "logits" and self.target != "x0":
            raise ValueError(f"backend.x0_from=logits predicts x0 itself; use backend.target: x0, or backend.x0_from: "
                             f"vector to predict {self.target}")
        check_positive("backend.embed_dim", self.embed_dim)
        check_choice("backend.loss", self.loss, ("elbo", "simple"))
        check_positive("backend.ce_weight", self.ce_weight, allow_zero=True)
        if self.schedule == "learned" and self.loss != "elbo":
            raise ValueError("backend.schedule=learned is trained by the bound; it needs backend.loss: elbo")
        if self.x0_from == "vector" and not self.output_prior:
            raise ValueError("backend.output_prior=false: the output prior is added to the vocab head's logits "
                             "(x0_from: logits); a vector head has none to switch off, leave the key out")


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
        self.schedule = get_gaussian_schedule(cfg.schedule_name(), cfg.gamma_min, cfg.gamma_max)
        self.warp = TimeWarp()

    def table(self) -> torch.Tensor:
        """(V, d) the embeddings that are diffused; with embed_norm each has norm sqrt(d) (CDCD)."""
        e = self.embedding.weight.float()
        if self.embed_norm:
            e = F.normalize(e, dim=-1) * math.sqrt(e.shape[-1])
        return e


@dataclass
class GaussianPrediction(Prediction):
    """A prediction with the Gaussian process it was made under (a learned schedule and the embeddings train with
    the model, so the reverse step reads them here)."""

    schedule: Optional[GaussianSchedule] = None
    """The model's log-SNR schedule."""
    table: Optional[torch.Tensor] = None
    """(V, d) the diffused token embeddings."""


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
    Options = EmbeddingOptions
    default_sampler = "ddim"
    samplers = ("ddim", "ddpm")

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

    def predict(self, model, z, t, x0_prev=None) -> GaussianPrediction:
        """x0 estimate (B, L, d) and rounding logits (B, L, V) from z_t (B, L, d) at times t (B,)."""
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
                x0 = torch.softmax(logits, dim=-1) @ table
            else:
                x0 = self.to_x0(out.float(), z.float(), alpha, sigma)
                logits = self.rounding_logits(x0, table)
        return GaussianPrediction(logits, x0, noise.schedule, table)

    def rounding_logits(self, x0, table):
        """-|x0 - e_v|^2 / 2 up to a constant, with [MASK] excluded."""
        logits = gaussian_logits(x0, 1.0, 1.0, table)
        logits[..., self.special.mask] = float("-inf")
        return logits

    def feedback(self, pred: Prediction) -> torch.Tensor:
        """Self-conditioning feeds back the x0 estimate itself (B, L, d)."""
        return pred.x0

    # --- training and likelihood -------------------------------------------------------------------------------

    def _terms(self, model, batch: Batch, t, generator, self_cond: bool):
        """At times t (B,): per-token training diffusion loss, the bound's diffusion integrand and the anchor
        cross-entropy, each (B, L) (not yet divided by the density of t)."""
        noise = model.noise
        e = noise.table()[batch.ids]  # (B, L, d)
        g = noise.schedule.gamma(t)
        alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
        z, _ = self.noised(e, alpha, sigma, generator, batch.loss_mask)
        x0_prev = self.self_condition(model, z, t) if self_cond else None
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

    def unconditional(self, model, z, t, source) -> GaussianPrediction:
        """Classifier-free guidance's null-condition prediction: the source (B, L) given as the clean [PAD] embedding."""
        null = model.noise.table()[self.special.pad].to(z.dtype)  # (d,)
        return self.predict(model, torch.where(source[..., None], null, z), t)

    def classifier_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def classifier_input_dim(self, model) -> int:
        return model.noise.embedding.weight.shape[1]

    def classifier_guided(self, model, out: GaussianPrediction, grad: torch.Tensor, t: torch.Tensor):
        """Gradient guidance on the score, grad log p(z_t) += grad (= scale grad_z log p(c | z_t)): by Tweedie the x0
        estimate moves by sigma_t^2 / alpha_t grad, and the rounding logits with it, l_v += dx0 . e_v."""
        alpha, sigma = model.noise.schedule.alpha_sigma(t)
        dx0 = (sigma ** 2 / alpha)[:, None, None] * grad
        return dataclasses.replace(out, x0=out.x0 + dx0, logits=out.logits + dx0 @ model.noise.table().float().T)

    def start(self, model, x, generator) -> torch.Tensor:
        """z_1 ~ N(0, I): (B, L) -> (B, L, d); the given positions are re-imposed by `hold` at every step."""
        d = model.noise.embedding.weight.shape[1]
        return torch.randn((*x.shape, d), generator=generator, device=model.noise.embedding.weight.device)

    def hold(self, model, z, ids, known, t, generator) -> torch.Tensor:
        """The replacement method: the known positions (B, L) become a fresh draw of q(z_t | ids), as in training; a
        seq2seq model (model.segments) was trained on a clean source, so it gets the clean embeddings (DiffuSeq's
        partial noising)."""
        if not known.any():
            return z
        if model.cfg.segments:
            return torch.where(known[..., None], model.noise.table()[ids].to(z.dtype), z)
        return torch.where(known[..., None], self.corrupt(ids, t, generator, model=model), z)

    def ddim(self, pred: GaussianPrediction, z, t, s, eta: float, generator) -> torch.Tensor:
        """DDIM (Song et al. 2021, eq. 12) from z_t to z_s toward pred.x0: eta = 0 deterministic, 1 the DDPM posterior
        q(z_s | z_t, x0_hat) (ancestral sampling)."""
        return ddim_update(pred.x0, z, pred.schedule.alpha_sigma(t), pred.schedule.alpha_sigma(s), eta, generator)

    def step(self, pred, probs, z, t, s, generator) -> StepOutput:
        """Ancestral step t -> s (DDPM's posterior, DDIM with eta = 1); the tokens are drawn from probs, the
        (filtered) rounding distribution."""
        return StepOutput(self.ddim(pred, z, t, s, 1.0, generator), draw(probs, generator))

    def steer(self, pred: GaussianPrediction, probs: torch.Tensor) -> GaussianPrediction:
        """The x0 estimate a step moves toward, shaped by the sampler's temperature / top-k / top-p: it moves by what
        the filters change in the expected embedding under the rounding distribution, (probs - softmax(logits)) @ E
        (nothing at the defaults; with x0_from=logits the estimate is that expectation, CDCD's score interpolation,
        so temperature 0 gives the argmax's embedding). Near t = 0 the rounding distribution is one-hot, so filters
        on the last step's tokens alone would change nothing."""
        table = pred.table
        shift = (probs.to(table.dtype) - torch.softmax(pred.logits.float(), dim=-1).to(table.dtype)) @ table
        return dataclasses.replace(pred, x0=pred.x0 + shift)

    def snap(self, pred: GaussianPrediction) -> GaussianPrediction:
        """The clamping trick (Diffusion-LM): the x0 estimate replaced by its nearest (most likely) embedding."""
        return dataclasses.replace(pred, x0=pred.table[pred.logits.argmax(-1)])
