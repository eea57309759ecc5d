"""The masked back-end's bound against the exact likelihood of its own reverse process on a toy problem."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.tiny import make
from textdiff.noising.base import Batch


@torch.no_grad()
def _conditional_logprob(model, backend, x, visible: tuple[int, ...], pos: int) -> float:
    inp = torch.full_like(x, backend.special.mask)
    for v in visible:
        inp[v] = x[v]
    logits = backend.predict(model, inp[None], torch.ones(1)).logits[0, pos]
    return float(torch.log_softmax(logits, -1)[x[pos]])


def exact_masked_nll(model, backend, x) -> float:
    """-log p(x) of the masked model's reverse process: tokens are revealed one at a time in a uniformly random
    order (the continuous-time limit), so p(x) is the average over all orders of the product of conditionals."""
    logs = []
    for order in itertools.permutations(range(len(x))):
        logs.append(sum(_conditional_logprob(model, backend, x, order[:i], order[i]) for i in range(len(x))))
    return -(torch.logsumexp(torch.tensor(logs), 0).item() - math.log(len(logs)))


def exact_masked_elbo(model, backend, x) -> float:
    """The NELBO in closed form: sum over mask sets M of (1/|M|) / C(n, |M|) * sum_{i in M} -log p(x_i | x_notM)."""
    n, total = len(x), 0.0
    for k in range(1, n + 1):
        for masked in itertools.combinations(range(n), k):
            visible = tuple(i for i in range(n) if i not in masked)
            ce = -sum(_conditional_logprob(model, backend, x, visible, i) for i in masked)
            total += ce / k / math.comb(n, k)
    return total


@pytest.mark.parametrize("mask_sampling", ["count", "time"])
def test_masked_bound_is_at_least_the_exact_nll_and_estimates_the_closed_form_elbo(mask_sampling):
    model, backend = make("masked", seed=3, mask_sampling=mask_sampling)
    for seq in ([7, 12, 9], [20, 20, 6]):
        x = torch.tensor(seq)
        nll, elbo = exact_masked_nll(model, backend, x), exact_masked_elbo(model, backend, x)
        assert elbo >= nll - 1e-6
        b = Batch(x[None].repeat(64, 1), torch.ones(64, 3, dtype=torch.bool))
        out = backend.bound(model, b, 64, torch.Generator().manual_seed(0))
        estimate = out.nll.mean().item()
        se = math.sqrt(out.mc_var.mean().item() / 64)
        assert abs(estimate - elbo) < 5 * se + 1e-3, (estimate, elbo, se)
        assert estimate >= nll - 5 * se
