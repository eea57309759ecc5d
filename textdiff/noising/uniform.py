"""Uniform-substitution diffusion in continuous time: D3PM-uniform (Austin et al. 2021), SEDD-uniform (Lou et al.
2024) and UDLM (Schiff et al. 2025, arXiv 2412.10193, whose continuous-time NELBO this is).

Forward: each counted token is redrawn, with probability 1 - alpha(t), uniformly from the V' real tokens R:
    q(x_t | x0) = alpha_t onehot(x0) + (1 - alpha_t) u,   u = 1_R / V',
R being the vocabulary without [PAD] [MASK] [BOS] [SEP] [UNK] ([EOS] is real: it ends every packed example). The
noise never writes a special token, so a special token in x_t is clean; one in the data (a counted [PAD]) decays
like any other. alpha(1) = 0 (`loglinear`, 1 - t, or `cosine`), so x_1 is exactly uniform over R.

Model: x0 logits p_theta(x0 | x_t) (never [MASK]); recipes turn time conditioning on, as the noise level cannot
be read off x_t. Reverse (D3PM eq. 4, the plug-in of p_theta for x0), with alpha_{t|s} = alpha_t / alpha_s:
    p(x_s | x_t) ∝ [alpha_{t|s} onehot(x_t) + (1 - alpha_{t|s}) u(x_t)] ⊙ [alpha_s p_theta + (1 - alpha_s) u].

Bound, per token, with f = q(x_t | x0) and g = alpha_t p_theta(. | x_t) + (1 - alpha_t) u, both over V:
    -log p(x0) <= int_{t_min}^1 E_{x_t} [ -alpha'/alpha * u(x_t)/f(x_t) * (KL(f || g) + phi(f(x_t)/g(x_t))) ] dt
                  + E_{x_{t_min}} [ -log p_dec(x0 | x_{t_min}) ] + KL(q(x_1 | x0) || u),     phi(r) = r - 1 - log r.
The integrand is sum_{y != x_t} R^ - R + R log(R / R^) (Campbell et al. 2022; SEDD's score entropy) of the reverse
rates R(x_t -> y) = -alpha'/alpha u(x_t) f(y) / f(x_t) of the true process given x0 and R^ (g in place of f) of the
model's: summing over y gives the closed form above (UDLM's NELBO in other words). The prior KL is 0 (alpha(1) = 0).
p_dec decodes x_{t_min} by Bayes' rule under a uniform prior over the non-[MASK] tokens (no model call): it costs
about t_min (log(V'/t_min) + 1), 2e-5 nats at t_min = 1e-6. Training uses the same integrand over [eps, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textdiff.noising import register
from textdiff.noising.base import (Backend, Batch, DiscreteOptions, Prediction, StepOutput, block_of, block_uniforms,
                                   clean_context, draw, per_token, real_token_mask)
from textdiff.noising.masked import MaskedDiffusion
from textdiff.schedules import get_schedule

TINY = 1e-300
"""Float64 floor under probabilities before a log or a division: 0 only where the weight is 0 (a special x_t), or
where p_theta(x0) of a special x0 underflows float32 (then that token costs ~690 nats instead of more)."""


@register("uniform")
class UniformDiffusion(Backend):
    Options = DiscreteOptions
    default_sampler = "uniform_ancestral"
    samplers = ("uniform_ancestral",)
    time_free = True
    block_diffusion = True

    def __init__(self, cfg, special, vocab_size):
        super().__init__(cfg, special, vocab_size)
        self.schedule = get_schedule(cfg.schedule_name())
        if float(self.alpha(torch.ones(1))) > 1e-6:  # the prior term of the bound is 0 only then
            raise ValueError(f"the uniform back-end needs alpha(1) = 0; backend.schedule={cfg.schedule!r} ends above")
        self.real = real_token_mask(special, vocab_size)
        self.real_ids = self.real.nonzero()[:, 0]  # (V',)
        self.n_real = len(self.real_ids)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t) in float64, clamped to [0, 1] (cosine's alpha(1) rounds to -4e-8 in float32)."""
        return self.schedule.alpha(t.double()).clamp(0.0, 1.0)

    def uniform_u(self, device) -> torch.Tensor:
        """u (V,): 1/V' on the real tokens, 0 on the special ones."""
        return self.real.to(device).float() / self.n_real

    # --- forward process ---------------------------------------------------------------------------------------

    def noise_tokens(self, shape, generator, device=None) -> torch.Tensor:
        """(shape) tokens drawn uniformly from the real tokens: the prior x_1."""
        idx = torch.randint(self.n_real, shape, generator=generator, device=device)
        return self.real_ids.to(device)[idx]

    def corrupt(self, x0, t, generator, noise_mask=None, model=None):
        """x_t ~ q(x_t | x0) for x0 (B, L) and t (B,) (or (B, L), a time per token): each token redrawn from u
        w.p. 1 - alpha(t), only where noise_mask (B, L) is True."""
        p = 1.0 - self.alpha(t)
        redraw = torch.rand(x0.shape, generator=generator, device=x0.device) < (p[:, None] if p.dim() == 1 else p)
        if noise_mask is not None:
            redraw &= noise_mask
        return torch.where(redraw, self.noise_tokens(x0.shape, generator, x0.device), x0)

    def posterior(self, x0_probs: torch.Tensor, x_t: torch.Tensor, a_t, a_s) -> torch.Tensor:
        """p(x_s | x_t) ∝ q(x_t | x_s) sum_x0 q(x_s | x0) p(x0), for an x0 distribution (B, L, V) (D3PM eq. 4); the
        exact posterior q(x_s | x_t, x0) when it is one-hot. alpha_t, alpha_s: numbers or (B,) per sequence.
        Returns (B, L, V); a row with no mass (a special x_t the distribution rules out) stays at x_t, the only x0 a
        special token in x_t can come from."""
        u = self.uniform_u(x_t.device)
        a_t, a_s = (torch.as_tensor(a, device=x_t.device).float().reshape(-1, 1) for a in (a_t, a_s))  # (B or 1, 1)
        a_ts = a_t / a_s
        prior_s = a_s[..., None] * x0_probs.float() + (1.0 - a_s[..., None]) * u  # (B, L, V) sum_x0 q(x_s|x0) p(x0)
        joint = prior_s * ((1.0 - a_ts) * u[x_t])[..., None]  # q(x_t | x_s) off the diagonal ...
        joint = joint.scatter_add(-1, x_t[..., None], a_ts[..., None] * prior_s.gather(-1, x_t[..., None]))  # on it
        z = joint.sum(-1, keepdim=True)
        return torch.where(z > 0, joint / z.clamp_min(1e-30), F.one_hot(x_t, joint.shape[-1]).float())

    # --- the model's x0 distribution ---------------------------------------------------------------------------

    def _logits(self, model, x_t, t, x0_prev=None, select=None, context=None) -> torch.Tensor:
        """Float32 x0 logits (B, L, V), or (N, V) at `select`, with [MASK] at -inf (`context`: the clean sequence
        beside x_t, for a block model's training passes)."""
        extra = {"context": context} if context is not None else {}
        logits = model(x_t, t, x0_prev=self.cond_input(model, x0_prev), select=select, **extra).float()
        logits[..., self.special.mask] = float("-inf")
        return logits

    def predict(self, model, x_t, t, x0_prev=None, context=None) -> Prediction:
        """(B, L, V) x0 logits of x_t (B, L) at times t (B,), never on [MASK]."""
        return Prediction(self._logits(model, x_t, t, x0_prev, context=context))

    unconditional = MaskedDiffusion.unconditional  # classifier-free guidance's null condition: the source as [PAD]

    # --- the bound ---------------------------------------------------------------------------------------------

    def _true_marginal(self, x0, x_t, a, c):
        """f = q(. | x0) = alpha onehot(x0) + c 1_R at x0 and at x_t, and sum_y f log f: three (N,) float64."""
        real = self.real.to(x0.device)
        f_x0 = a + c * real[x0]  # and c on the rest of R
        f_xt = a * (x_t == x0) + c * real[x_t]
        f_log_f = torch.xlogy(f_x0, f_x0) + (self.n_real - real[x0].double()) * torch.xlogy(c, c)
        return f_x0, f_xt, f_log_f

    def _model_marginal(self, logits, x0, x_t, a, c):
        """g = alpha p_theta + c 1_R at x0 and at x_t (float64), and sum_{y in R} log g (N,), from logits (N, V): one
        softmax, one multiply-add and one log over (N, V), about twice a cross-entropy's cost."""
        real = self.real.to(x0.device)
        p = torch.softmax(logits.float(), dim=-1)  # (N, V)
        log_g = torch.addcmul(c.float()[:, None], p, a.float()[:, None]).log()  # (N, V), right on the real tokens
        sum_real = (log_g.sum(-1) - log_g[:, ~real].sum(-1)).double()
        g_x0, g_xt = (a * p.gather(-1, i[:, None])[:, 0].double() + c * real[i] for i in (x0, x_t))
        return g_x0, g_xt, sum_real

    def integrand(self, logits, x0, x_t, t) -> torch.Tensor:
        """The NELBO's time integrand per token (see the module docstring), for logits (N, V) and x0, x_t, t (N,):
            -alpha'/alpha * u(x_t)/f(x_t) * (KL(f || g) + phi(f(x_t)/g(x_t))),
        KL(f || g) = sum_y f log f - c sum_{y in R} log g - alpha log g(x0),  c = (1 - alpha)/V'.
        Returns float32 (N,) nats; the per-token algebra runs in float64."""
        a = self.alpha(t)  # (N,) float64
        c = (1.0 - a) / self.n_real
        f_x0, f_xt, f_log_f = self._true_marginal(x0, x_t, a, c)
        g_x0, g_xt, sum_real = self._model_marginal(logits, x0, x_t, a, c)
        kl = (f_log_f - c * sum_real - a * torch.log(g_x0.clamp_min(TINY))).clamp_min(0.0)  # >= 0 but for rounding
        log_r = torch.log(f_xt.clamp_min(TINY)) - torch.log(g_xt.clamp_min(TINY))  # log f(x_t) / g(x_t)
        phi = torch.expm1(log_r) - log_r
        rate = -self.schedule.alpha_prime(t.double()) / a.clamp_min(TINY)  # -alpha'/alpha
        weight = torch.where(self.real.to(x_t.device)[x_t], rate / (self.n_real * f_xt.clamp_min(TINY)), 0.0)
        return (weight * (kl + phi)).float()

    def decoder_nll(self, x0, keep, generator, t_min: float) -> torch.Tensor:
        """-log p_dec(x0 | x_{t_min}) per sequence (B,), one draw of x_{t_min}; p_dec is Bayes' rule under a
        uniform prior over the non-[MASK] tokens: `posterior` at s = 0 with that prior as the x0 distribution."""
        x_t = self.corrupt(x0, torch.full((x0.shape[0],), t_min, device=x0.device), generator, keep)
        prior = torch.ones(self.vocab_size, device=x0.device)
        prior[self.special.mask] = 0.0
        a_t = float(self.alpha(torch.tensor(t_min)))
        post = self.posterior((prior / prior.sum()).expand(*x0.shape, -1), x_t, a_t, 1.0)
        nll = -torch.log(post.gather(-1, x0[..., None])[..., 0])  # (B, L)
        return (nll * keep).sum(dim=1)

    def _diffusion_nll(self, model, x0, keep, v, generator, t_min: float, self_cond: bool = False):
        """The diffusion term over [t_min, 1], one time per sequence from uniforms v (B,): (B,) nats.

        Importance-sampled times t = t_min + (1 - t_min) v^2, weight 2 v (1 - t_min): at small t a token is off x0
        with probability ~t and then costs ~1/t, which uniform times turn into a variance growing like
        log^3(1/t_min); density 1/(2 sqrt t) about halves the standard deviation (measured on a toy model). t is float64
        so that it stays below 1 (alpha(t) > 0) and 1 - alpha(t) keeps its digits near t_min."""
        K = block_of(model)
        v = (per_token(block_uniforms(v, x0.shape[1], K), K) if K else v[:, None].expand_as(x0)).double()  # (B, L)
        t = t_min + (1.0 - t_min) * v ** 2  # a time per position: each block's own for a block model
        x_t = self.corrupt(x0, t, generator, keep)
        t_in = t.float() if K else t[:, 0].float()  # the model's time input: per position, or per sequence
        x0_prev = self.self_condition(model, x_t, t_in, context=x0) if self_cond else None
        logits = self._logits(model, x_t, t_in, x0_prev, select=keep, **clean_context(model, x0))  # (N, V)
        h = self.integrand(logits, x0[keep], x_t[keep], t[keep])  # (N,)
        weight = (2.0 * v[keep] * (1.0 - t_min)).float()
        return torch.zeros(x0.shape[0], device=x0.device).index_add(0, keep.nonzero()[:, 0], weight * h)

    def _nelbo(self, model, x0, keep, v, generator, t_min: float, self_cond: bool = False):
        """One draw of the whole bound per sequence: the diffusion term plus the decoder term.  (B,) nats."""
        diffusion = self._diffusion_nll(model, x0, keep, v, generator, t_min, self_cond)
        return diffusion + self.decoder_nll(x0, keep, generator, t_min)

    def loss(self, model, batch: Batch, generator):
        """The diffusion term from t_min = backend.eps (no decoder term: it has no parameters)."""
        return self.one_draw_loss(model, batch, generator, self._diffusion_nll)

    @torch.no_grad()
    def bound(self, model, batch: Batch, n_draws: int, generator):
        """NELBO per sequence: the diffusion term at n_draws stratified times plus the decoder term, per draw."""
        return self.stratified_bound(model, batch, n_draws, generator, self._nelbo)

    # --- sampling ----------------------------------------------------------------------------------------------

    def start(self, model, x, generator):
        """x_1: uniform over the real tokens at every [MASK] of x, the given tokens as they are."""
        return torch.where(x == self.special.mask, self.noise_tokens(x.shape, generator, x.device), x)

    def step(self, pred, probs, state, t, s, generator) -> StepOutput:
        """Ancestral step t -> s: x_s drawn from `posterior` with probs (B, L, V) plugged in for x0; at s = 0 a clean
        token (alpha_0 = 1)."""
        post = self.posterior(probs, state, self.alpha(t), self.alpha(s))
        sample = draw(post, generator)
        return StepOutput(sample, sample)
