"""The ancestral sampler of uniform-substitution diffusion (D3PM-uniform, Austin et al. 2021; UDLM, Schiff et al.
2025)."""

from __future__ import annotations

from textdiff.sampling import step_rule


@step_rule("uniform_ancestral")
def uniform_ancestral(backend, pred, probs, state, step):
    """x_1 is uniform over the real tokens at every [MASK] of the input (the given tokens stay fixed at every step);
    each step t -> s draws x_s from the posterior with the model's (guided, filtered) x0 distribution plugged in,
    and the last one lands on s = 0: clean tokens everywhere. A block not yet started stays at the prior's noise
    and shows [MASK] to the callback."""
    return backend.step(pred, probs, state, step.t, step.s, step.generator)
