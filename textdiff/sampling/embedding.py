"""Samplers for Gaussian diffusion on embeddings: DDPM ancestral and DDIM, any number of steps.

Given tokens (infilling, prefixes, earlier semi-autoregressive blocks) are re-imposed every step as fresh draws
of q(z_t | x) at the current time (the replacement method, `backend.hold`), so the model sees them exactly as in
training. The tokens are read off the last step's rounding logits. The sampler's temperature / top-k / top-p shape
the x0 estimate every step moves toward (`backend.steer`), not only the last step's tokens.
"""

from __future__ import annotations

from textdiff.noising.base import StepOutput, draw
from textdiff.sampling import step_rule
from textdiff.sampling.options import ETA, Option

CLAMP = Option(False, "snap every x0 estimate to its nearest token embedding (Diffusion-LM's clamping trick)")


@step_rule("ddim")
def ddim(backend, pred, probs, state, step, *, eta: float = ETA, clamp: bool = CLAMP):
    """DDIM (Song et al. 2021, eq. 12) toward the x0 estimate: eta = 0 is deterministic given z_1, 1 the DDPM
    posterior; `clamp` first snaps the estimate to its nearest embedding."""
    pred = backend.snap(pred) if clamp else backend.steer(pred, probs)
    return StepOutput(backend.ddim(pred, state, step.t, step.s, eta, step.generator), draw(probs, step.generator))


@step_rule("ddpm")
def ddpm(backend, pred, probs, state, step, *, clamp: bool = CLAMP):
    """Ancestral sampling from the DDPM posterior q(z_s | z_t, x0_hat) (DDIM with eta = 1)."""
    pred = backend.snap(pred) if clamp else backend.steer(pred, probs)
    return backend.step(pred, probs, state, step.t, step.s, step.generator)
