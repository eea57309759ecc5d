"""Noise schedules in continuous time t in [0, 1].

A masking schedule gives alpha(t), the probability that a token is still clean at time t
(alpha(0) = 1, alpha(1) = 0), and its derivative; the MDLM ELBO weight is -alpha'(t) / (1 - alpha(t))
(Sahoo et al. 2024, eq. 10).
"""

from __future__ import annotations

import math

import torch

from textdiff.registry import Registry

SCHEDULES = Registry("schedule")
register_schedule = SCHEDULES.register


class MaskingSchedule:
    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def elbo_weight(self, t: torch.Tensor) -> torch.Tensor:
        """-alpha'(t) / (1 - alpha(t)): the weight of the masked cross-entropy at time t."""
        return -self.alpha_prime(t) / (1.0 - self.alpha(t)).clamp_min(1e-12)


@register_schedule("loglinear")
class LogLinear(MaskingSchedule):
    """alpha(t) = 1 - t: the log-linear noise sigma(t) = -log(1 - t) of MDLM / SEDD; weight 1/t."""

    def alpha(self, t):
        return 1.0 - t

    def alpha_prime(self, t):
        return -torch.ones_like(t)


@register_schedule("cosine")
class Cosine(MaskingSchedule):
    """alpha(t) = cos(pi t / 2) (MaskGIT's cosine masking ratio)."""

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def alpha_prime(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


def get_schedule(name: str) -> MaskingSchedule:
    return SCHEDULES[name]()


# --- Gaussian (variance-preserving) schedules ----------------------------------------------------------------------
#
# A Gaussian schedule gives the log noise-to-signal ratio gamma(t) = log(sigma_t^2 / alpha_t^2) (VDM, Kingma et al.
# 2021), increasing from gamma_min at t = 0 to gamma_max at t = 1, with alpha_t^2 = sigmoid(-gamma) and
# sigma_t^2 = sigmoid(gamma) (so alpha^2 + sigma^2 = 1). Each named shape (sqrt, cosine, linear) is run on the
# stretch of its own time axis whose log-SNR lies in [gamma_min, gamma_max], so every schedule shares the end points
# that matter for the bound (the prior and reconstruction terms); the diffusion term is invariant to the shape in
# between (VDM, eq. 17), which only changes the variance of its Monte Carlo estimate and what L_simple emphasises.

GAUSSIAN_SCHEDULES = Registry("Gaussian schedule")
register_gaussian = GAUSSIAN_SCHEDULES.register


class GaussianSchedule(torch.nn.Module):
    """gamma(t) and gamma'(t) on t in [0, 1]; an nn.Module so a learned schedule trains with the model."""

    def __init__(self, gamma_min: float, gamma_max: float):
        super().__init__()
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gamma_prime(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t (both (B,)) for times t (B,)."""
        g = self.gamma(t.float())
        return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


class _Warped(GaussianSchedule):
    """A shape gamma = f(u) on its own axis u, run over [u(gamma_min), u(gamma_max)]."""

    def f(self, u):  # gamma as a function of u
        raise NotImplementedError

    def f_prime(self, u):
        raise NotImplementedError

    def f_inverse(self, g: float) -> float:
        raise NotImplementedError

    def _u(self, t):
        lo, hi = self.f_inverse(self.gamma_min), self.f_inverse(self.gamma_max)
        return lo + (hi - lo) * t, hi - lo

    def gamma(self, t):
        return self.f(self._u(t)[0])

    def gamma_prime(self, t):
        u, span = self._u(t)
        return span * self.f_prime(u)


@register_gaussian("cosine")
class CosineGaussian(_Warped):
    """alpha_bar(u) = cos^2(pi u / 2) (Nichol & Dhariwal 2021): gamma = 2 log tan(pi u / 2)."""

    def f(self, u):
        return 2.0 * torch.log(torch.tan(0.5 * math.pi * u))

    def f_prime(self, u):
        return 2.0 * math.pi / torch.sin(math.pi * u)

    def f_inverse(self, g):
        return 2.0 / math.pi * math.atan(math.exp(0.5 * g))


@register_gaussian("sqrt")
class SqrtGaussian(_Warped):
    """alpha_bar(u) = 1 - sqrt(u) (Diffusion-LM, Li et al. 2022): noise rises fast at first, then slowly."""

    def f(self, u):
        r = u.sqrt()
        return torch.log(r) - torch.log1p(-r)

    def f_prime(self, u):
        r = u.sqrt()
        return 0.5 / u + 0.5 / (r * (1.0 - r))

    def f_inverse(self, g):
        return (1.0 / (1.0 + math.exp(-g))) ** 2  # sqrt(u) = sigmoid(gamma)


@register_gaussian("linear")
class LinearBetaGaussian(_Warped):
    """DDPM's linear betas in continuous time (the VP SDE, Song et al. 2021): -log alpha_bar(u) = b0 u + (b1 - b0) u^2 / 2
    with b0 = 0.1, b1 = 20, so gamma = log(expm1(b0 u + (b1 - b0) u^2 / 2))."""

    b0, b1 = 0.1, 20.0

    def _q(self, u):
        return self.b0 * u + 0.5 * (self.b1 - self.b0) * u * u

    def f(self, u):
        return torch.log(torch.expm1(self._q(u)))

    def f_prime(self, u):
        return (self.b0 + (self.b1 - self.b0) * u) / -torch.expm1(-self._q(u))

    def f_inverse(self, g):
        q = math.log1p(math.exp(g)) if g < 30 else g  # softplus(gamma) = -log alpha_bar
        a = 0.5 * (self.b1 - self.b0)
        return (-self.b0 + math.sqrt(self.b0 ** 2 + 4.0 * a * q)) / (2.0 * a)


@register_gaussian("learned")
class LearnedLinear(GaussianSchedule):
    """gamma(t) = gamma_min + (gamma_max - gamma_min) t with both end points learned (VDM; Plaid's learned log-SNR
    bounds, Gulrajani & Hashimoto 2023). Trained by the ELBO: the end points trade the prior and reconstruction
    terms against the diffusion term; gamma_max - gamma_min is kept >= 1."""

    def __init__(self, gamma_min, gamma_max):
        super().__init__(gamma_min, gamma_max)
        self.g0 = torch.nn.Parameter(torch.tensor(float(gamma_min)))
        self.log_span = torch.nn.Parameter(torch.tensor(math.log(gamma_max - gamma_min - 1.0)))

    def _ends(self):
        span = 1.0 + self.log_span.float().exp()
        return self.g0.float(), span

    def gamma(self, t):
        g0, span = self._ends()
        return g0 + span * t

    def gamma_prime(self, t):
        return self._ends()[1].expand(t.shape)


def get_gaussian_schedule(name: str, gamma_min: float, gamma_max: float) -> GaussianSchedule:
    return GAUSSIAN_SCHEDULES[name](gamma_min, gamma_max)
