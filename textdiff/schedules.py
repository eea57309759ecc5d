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
