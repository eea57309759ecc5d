"""The masked back-end's samplers: confidence remasking (the linear schedule, greedy ranking, Fast-dLLM's threshold)."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import B, L, SPECIAL, make, sample


def test_confidence_threshold_reveals_every_confident_draw_and_its_share_of_the_rest():
    model, backend = make("masked")
    left = {}
    for threshold in (1e-9, 1.0):  # every draw is that probable / none is (a random model is never certain)
        counts = []
        sample("confidence", model, backend, backend.prior((B, L)), steps=4, temperature=0.0, threshold=threshold,
               callback=lambda i, xs, p: counts.append(int((xs == SPECIAL.mask).sum(1).max())))
        left[threshold] = counts
    assert left[1e-9] == [0]  # all in the first step; the model is not called again
    assert left[1.0] == [7, 4, 2, 0]  # ceil(10 / 4), ceil(7 / 3), ceil(4 / 2), 2


def test_greedy_confidence_sampler_with_steps_equal_length_reveals_one_token_per_step():
    model, backend = make("masked")
    counts = []
    sample("confidence", model, backend, backend.prior((B, L)), steps=L, temperature=0.0,
           callback=lambda i, xs, p: counts.append(int((xs == SPECIAL.mask).sum(1)[0])))
    assert counts == list(range(L - 1, -1, -1))


def test_greedy_confidence_sampler_reveals_the_most_probable_position_first():
    """At temperature 0 every draw is a one-hot, so the ranking must come from the model's probabilities, not from
    the (all 1.0) filtered ones: each step reveals the masked position whose argmax is most probable."""
    model, backend = make("masked", seed=3)
    states = [backend.prior((B, L))]
    sample("confidence", model, backend, states[0].clone(), steps=L, temperature=0.0,
           callback=lambda i, xs, p: states.append(xs.clone()))
    for j, (before, after) in enumerate(zip(states, states[1:])):
        t = torch.full((B,), 1.0 - j / L)  # the sampler's time at step j
        probs = torch.softmax(backend.predict(model, before, t).logits.float(), -1)
        best = probs.max(-1).values.masked_fill(before != SPECIAL.mask, -1.0).argmax(1)  # (B,)
        revealed = ((before == SPECIAL.mask) & (after != SPECIAL.mask)).float().argmax(1)
        assert torch.equal(revealed, best)
        assert torch.equal(after[torch.arange(B), revealed], probs.argmax(-1)[torch.arange(B), revealed])



def test_random_remasking_keeps_the_same_count_at_positions_not_chosen_by_confidence():
    """remasking=random: one token a step at steps = L, as low_confidence, but its positions are not the most
    probable ones every step (over a few seeds), and with a threshold every confident draw still goes first."""
    model, backend = make("masked", seed=3)
    orders = {}
    for mode in ("low_confidence", "random"):
        for seed in range(3):
            states = [backend.prior((B, L))]
            sample("confidence", model, backend, states[0].clone(), seed=seed, steps=L, remasking=mode,
                   callback=lambda i, xs, p: states.append(xs.clone()))
            assert [int((s == SPECIAL.mask).sum(1).max()) for s in states] == list(range(L, -1, -1))
            orders[mode, seed] = [((a == SPECIAL.mask) & (b != SPECIAL.mask)).float().argmax(1).tolist()
                                  for a, b in zip(states, states[1:])]
    assert all(orders["random", s] != orders["low_confidence", s] for s in range(3))
    for mode in ("random", "entropy", "margin"):
        left = []
        sample("confidence", model, backend, backend.prior((B, L)), steps=4, threshold=1e-9, remasking=mode,
               callback=lambda i, xs, p: left.append(int((xs == SPECIAL.mask).sum())))
        assert left == [0], mode


def _order_key(mode: str, probs: torch.Tensor) -> torch.Tensor:
    """What remasking=entropy / margin rank masked positions by (higher first): minus the entropy, the top-2 gap."""
    if mode == "entropy":
        return torch.special.xlogy(probs, probs).sum(-1)
    top2 = probs.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


@pytest.mark.parametrize("mode", ["entropy", "margin"])
def test_entropy_and_margin_remasking_reveal_the_surest_position_with_an_unranked_draw(mode):
    """One token a step (steps = L): each step reveals the masked position of lowest entropy / widest top-2 margin
    under the model's distribution before the step, whatever value is drawn there; the value is that step's draw
    (at temperature 1 it is not the argmax every time, unlike low_confidence's bias toward the likeliest token)."""
    model, backend = make("masked", seed=3)
    argmax_hits, n = 0, 0
    for seed in range(3):
        states = [backend.prior((B, L))]
        sample("confidence", model, backend, states[0].clone(), seed=seed, steps=L, remasking=mode,
               callback=lambda i, xs, p: states.append(xs.clone()))
        for j, (before, after) in enumerate(zip(states, states[1:])):
            t = torch.full((B,), 1.0 - j / L)
            probs = torch.softmax(backend.predict(model, before, t).logits.float(), -1)
            key = _order_key(mode, probs).masked_fill(before != SPECIAL.mask, -torch.inf)
            changed = (before == SPECIAL.mask) & (after != SPECIAL.mask)
            assert changed.sum(1).tolist() == [1] * B
            assert torch.equal(changed.float().argmax(1), key.argmax(1))
            rows = torch.arange(B)
            tok = after[rows, key.argmax(1)]
            argmax_hits += int((tok == probs.argmax(-1)[rows, key.argmax(1)]).sum())
            n += B
    assert argmax_hits < n  # drawn, not the argmax


def test_dilated_rank_is_the_bit_reversal_order_of_the_columns():
    from textdiff.sampling.masked import dilated_rank

    assert dilated_rank(4).tolist() == [0, 2, 1, 3]
    assert dilated_rank(8).argsort().tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    for n in (1, 2, 5, 10, 16, 33):
        assert sorted(dilated_rank(n).tolist()) == list(range(n))


@pytest.mark.parametrize("steps,groups", [(L, [[0], [8], [4], [2], [6], [1], [9], [5], [3], [7]]),
                                          (5, [[0, 8], [2, 4], [1, 6], [5, 9], [3, 7]])])
def test_dilated_remasking_reveals_in_bit_reversed_order_whatever_the_model(steps, groups):
    """L = 10: the bit reversal of 0..15 without the columns past 9 is 0 8 4 2 6 1 9 5 3 7; at 5 steps two a step,
    never two neighbours at once."""
    for seed in (0, 3):
        model, backend = make("masked", seed=seed)
        states = [backend.prior((B, L))]
        sample("confidence", model, backend, states[0].clone(), seed=seed, steps=steps, remasking="dilated",
               callback=lambda i, xs, p: states.append(xs.clone()))
        revealed = [((a == SPECIAL.mask) & (b != SPECIAL.mask)) for a, b in zip(states, states[1:])]
        for step, want in zip(revealed, groups):
            assert all(sorted(row.nonzero().flatten().tolist()) == want for row in step)
