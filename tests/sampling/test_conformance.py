"""The conformance suite every (back-end, sampler) pair runs: shapes and dtypes, no [MASK] after the last step,
infilling keeps the given tokens, seeded determinism, callbacks in order, semi-autoregressive blocks left to right
over the holes only, every given token of an infill template in the output in order (spans at their maximum length
included), and self-conditioning fed the model's own distribution. `SAMPLER_CHECKS` are functions of
(back-end, sampler) so a back-end registered inside a test runs the same suite. The frozen outputs are in
test_expected.py."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import B, L, PAIRS, SPECIAL, make, sample, self_conditioned
from textdiff.noising import BACKENDS
from textdiff.registry import SAMPLERS

FIXED = [p for p in PAIRS if not (BACKENDS[p[0]].causal or BACKENDS[p[0]].variable_length)]
"""Pairs with fixed positions (semi-autoregressive blocks apply)."""


def _start(backend, infill: bool) -> torch.Tensor:
    x = backend.prior((B, L))
    if infill:
        x = torch.full((B, L), SPECIAL.mask)  # holes of a fixed length, [MASK] per token, on every back-end
        x[:, :3] = torch.tensor([7, 8, 9])  # a given prefix (every sampler supports prefixes)
        if not backend.causal:
            x[:, 6] = 10  # and a given token in the middle
    return x


def _steps(sampler: str, n: int) -> dict:
    return {"steps": n} if SAMPLERS[sampler].takes_steps else {}


def check_sampler_fills_every_mask_and_keeps_given_tokens(name, sampler):
    model, backend = make(name)
    for infill in (False, True):
        x = _start(backend, infill)
        calls = []
        out = sample(sampler, model, backend, x.clone(), callback=lambda i, xs, p: calls.append(i), **_steps(sampler, 4))
        assert out.shape == (B, L) and out.dtype == torch.long
        assert not (out == SPECIAL.mask).any()
        given = ~torch.isin(x, torch.tensor([SPECIAL.mask, *backend.open_hole(2)]))  # a hole's own ids are not given
        assert torch.equal(out[given], x[given])
        assert calls and calls == sorted(calls)


def _template(backend) -> torch.Tensor:
    """A template's sampler input of L positions: a given token, a hole, two given tokens. On a variable-length
    back-end the hole is a span of unknown length (`[...]`) whose room is the rest of the row, so it can reach its
    maximum length; elsewhere it is [MASK]s. The AR baseline only continues a prefix."""
    given_after = [] if backend.causal else [8, 9]
    room = L - 1 - len(given_after)
    hole = backend.open_hole(room) if backend.variable_length else [SPECIAL.mask] * room
    return torch.tensor([[7] + hole + given_after] * B)


def _in_order(given: list[int], row: list[int]) -> bool:
    it = iter(row)
    return all(tok in it for tok in given)


def check_every_given_token_is_in_the_output_in_order(name, sampler):
    """Every given token of an infill template comes out, in order, also when a span reaches its maximum length
    (it must stop growing rather than push the given text after it out of the row)."""
    model, backend = make(name)
    x = _template(backend)
    holes = torch.isin(x, torch.tensor([SPECIAL.mask, *backend.open_hole(2)]))
    given = x[0][~holes[0]].tolist()
    for seed in range(8):
        out = sample(sampler, model, backend, x.clone(), seed=seed, **_steps(sampler, 4))
        for row in out.tolist():
            assert _in_order(given, row), (seed, given, row)


def check_sampler_is_seeded(name, sampler):
    model, backend = make(name)
    opts = {**_steps(sampler, 5), "top_p": 0.9, "temperature": 0.8}
    a = sample(sampler, model, backend, backend.prior((B, L)), seed=3, **opts)
    b = sample(sampler, model, backend, backend.prior((B, L)), seed=3, **opts)
    assert torch.equal(a, b)


def check_semi_autoregressive_blocks_reveal_left_to_right(name, sampler):
    model, backend = make(name)
    for block_size in (0, 3):
        order = []

        def record(i, xs, p):
            order.append((xs != SPECIAL.mask).sum(0).clone())  # (L,) revealed count per position

        out = sample(sampler, model, backend, backend.prior((B, L)), steps=8, block_size=block_size, callback=record)
        assert not (out == SPECIAL.mask).any()
        if block_size:
            first_done = [next(i for i, c in enumerate(order) if c[pos] == B) for pos in range(L)]
            blocks_done = [max(first_done[lo:lo + block_size]) for lo in range(0, L, block_size)]
            assert blocks_done == sorted(blocks_done)


def check_blocks_cover_the_holes_only(name, sampler):
    """A given prefix (a seq2seq source) takes no block: one step per block of the holes fills them all."""
    model, backend = make(name)
    x = backend.prior((B, L))
    x[:, :4] = torch.tensor([7, 8, 9, 5])
    changed, last = [], x.clone()

    def record(i, xs, p):
        nonlocal last
        changed.append(not torch.equal(xs, last))
        last = xs.clone()

    out = sample(sampler, model, backend, x.clone(), steps=2, block_size=3, callback=record)  # blocks (4,7), (7,10)
    assert not (out == SPECIAL.mask).any() and torch.equal(out[:, :4], x[:, :4])
    assert changed == [True, True]


SAMPLER_CHECKS = [check_sampler_fills_every_mask_and_keeps_given_tokens, check_every_given_token_is_in_the_output_in_order,
                  check_sampler_is_seeded]
"""Checks every pair passes; BLOCK_CHECKS concern samplers of fixed-length back-ends."""
BLOCK_CHECKS = [check_semi_autoregressive_blocks_reveal_left_to_right, check_blocks_cover_the_holes_only]


@pytest.mark.parametrize("check", SAMPLER_CHECKS, ids=lambda c: c.__name__[6:])
@pytest.mark.parametrize("name,sampler", PAIRS)
def test_sampler(name, sampler, check):
    check(name, sampler)


@pytest.mark.parametrize("check", BLOCK_CHECKS, ids=lambda c: c.__name__[6:])
@pytest.mark.parametrize("name,sampler", FIXED)
def test_blocks(name, sampler, check):
    check(name, sampler)


@pytest.mark.parametrize("name,sampler", [p for p in FIXED if BACKENDS[p[0]].self_conditioning])
def test_greedy_sampling_feeds_the_models_own_distribution_back_as_self_conditioning(name, sampler):
    """Training feeds back the model's own x0 estimate (softmax of the x0 logits, or the continuous x0); greedy
    sampling must too, not its one-hot draws."""
    model, backend = self_conditioned(name)
    fed, predict = [], backend.predict

    def spy(m, x, t, x0_prev=None):
        out = predict(m, x, t, x0_prev)
        fed.append((x0_prev, backend.feedback(out)))
        return out

    backend.predict = spy
    sample(sampler, model, backend, backend.prior((B, L)), steps=4, temperature=0.0)
    assert fed[0][0] is None and len(fed) > 1
    for (_, produced), (prev, _) in zip(fed, fed[1:]):
        assert torch.allclose(prev, produced)


def test_every_sampler_belongs_to_a_backend_and_declares_its_options():
    owned = {s for b in BACKENDS.values() for s in b.samplers}
    assert owned == set(SAMPLERS)
    for name, sampler in SAMPLERS.items():
        assert sampler.options and all(opt.help for _, opt in sampler.options.values()), name
