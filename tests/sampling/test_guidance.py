"""The guidance hook of the generic loop: it sees every model evaluation (the back-end's Prediction, the state, t)
and what it returns is what the step uses; classifier-free guidance mixes in the null condition."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tiny import B, L, V, make, sample


@pytest.mark.parametrize("name,sampler", [("masked", "ancestral"), ("masked", "confidence"),
                                          ("uniform", "uniform_ancestral"), ("simplex", "simplex"),
                                          ("simplex", "simplex_ddim")])
def test_guidance_hook_sees_every_evaluation_and_steers_the_sample(name, sampler):
    model, backend = make(name, model={"time_conditioning": name != "masked"})
    calls = []

    def force_seven(pred, x_t, t):
        calls.append((pred.logits.shape, x_t.shape[:2], t.shape))
        return dataclasses.replace(pred, logits=torch.full_like(pred.logits, -1e4).index_fill(-1, torch.tensor([7]), 0.0))

    out = sample(sampler, model, backend, backend.prior((B, L)), steps=5, guidance=force_seven)
    assert (out == 7).all() and calls and calls == [((B, L, V), (B, L), (B,))] * len(calls)
    assert len(calls) == 5 or name == "masked"  # masked stops once every position is revealed
