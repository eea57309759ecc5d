"""Samplers for simplex-logit diffusion (SSD-LM, Han et al. 2023, sec. 3.3; TESS, Karimi Mahabadi et al. 2024).

Given tokens (infilling) are held at their clean ±k logits at every step, as SSD-LM holds its context; with
semi-autoregressive blocks a finished block becomes clean context and blocks not yet started stay at the prior's
noise (they show [MASK] to the callback). Self-conditioning feeds each step's x0 distribution into the next (TESS).
"""

from __future__ import annotations

from textdiff.sampling import step_rule
from textdiff.sampling.options import ETA


@step_rule("simplex")
def simplex(backend, pred, probs, state, step):
    """SSD-LM's sampler: every step projects the (guided, filtered) x0 distribution to one token per position
    (temperature 0: SSD-LM's argmax projection; top-p < 1: its top-p sampling) and noises its ±k logits afresh to
    the next level."""
    return backend.step(pred, probs, state, step.t, step.s, step.generator)


@step_rule("simplex_ddim")
def simplex_ddim(backend, pred, probs, state, step, *, eta: float = ETA):
    """The same projection with DDIM's step toward it (stochasticity eta): the noise of x_t carries over, so what
    earlier steps decided is not forgotten at every step."""
    return backend.ddim(probs, state, step.t, step.s, eta, step.generator)
