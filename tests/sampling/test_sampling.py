"""Sampler details: MDLM's cache skips model calls when nothing changes; logit filters."""

from __future__ import annotations

import torch

from textdiff.sampling import blocks, filter_probs, hole_blocks, split_steps
from tests.tiny import B, L, SPECIAL, make, sample


def test_ancestral_cache_calls_the_model_only_when_a_step_changed_something():
    model, backend = make("masked")
    calls = {"n": 0}
    real = model.forward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    model.forward = counting
    revealed = []
    out = sample("ancestral", model, backend, backend.prior((B, L)), steps=200,
                 callback=lambda i, x, p: revealed.append(int((x != 1).sum())))
    changed = [a != b for a, b in zip([0] + revealed, revealed)]  # did step j reveal anything?
    assert not (out == SPECIAL.mask).any()
    assert calls["n"] == 1 + sum(changed[:-1])  # one call to start, then one after each step that changed x
    assert calls["n"] < 200 // 2  # with 200 steps over 40 tokens most steps reveal nothing


def test_filter_probs():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.equal(filter_probs(logits, temperature=0.0), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    top2 = filter_probs(logits, top_k=2)
    assert (top2[0, 2:] == 0).all() and torch.isclose(top2.sum(), torch.tensor(1.0))
    nucleus = filter_probs(logits, top_p=0.5)  # the first token alone holds > 0.5 of the mass
    assert torch.equal(nucleus, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    hot = filter_probs(logits, temperature=100.0)
    assert (hot.max() - hot.min()) < 0.01


def test_blocks_and_step_split():
    assert blocks(10, 0) == [(0, 10)]
    assert blocks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert split_steps(10, 3) == [4, 3, 3] and sum(split_steps(7, 7)) == 7
    x = torch.tensor([[7, 8, 5, 1, 1, 1, 1, 1], [7, 5, 1, 1, 1, 1, 1, 1]])  # source [SEP] then holes
    spans = [m.long().tolist() for m in hole_blocks(x, 1, 4)]  # each row's blocks start at its first hole
    assert spans == [[[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 0, 0]],
                     [[0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1, 1]]]
    assert [m.all().item() for m in hole_blocks(torch.full((2, 5), 1), 1, 0)] == [True]
