"""`draw`, the one categorical draw every sampler makes: the right frequencies, never a zero-probability token
(not at the rounding edge either), unnormalised weights and any leading shape, a bad distribution refused."""

from __future__ import annotations

import pytest
import torch

from textdiff.noising.base import draw


def test_frequencies_match_the_distribution_and_zeros_are_never_drawn():
    p = torch.tensor([0.1, 0.0, 0.6, 0.0, 0.3])
    ids = draw(p.expand(200_000, 5), torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=5).double() / len(ids)
    assert freq[1] == 0 and freq[3] == 0
    assert torch.allclose(freq, p.double(), atol=4e-3)


def test_weights_need_not_sum_to_one_and_the_shape_is_kept():
    w = torch.zeros(3, 4, 7)
    w[..., 5] = 2.5  # one token of weight: always it
    ids = draw(w, torch.Generator().manual_seed(1))
    assert ids.shape == (3, 4) and (ids == 5).all()


def test_a_uniform_that_rounds_up_to_the_total_still_lands_on_a_token_of_weight(monkeypatch):
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones_like(real_rand(*a, **k)))  # u = 1: u x total = total
    p = torch.tensor([[0.2, 0.8, 0.0, 0.0]])
    assert draw(p, torch.Generator().manual_seed(0)).item() == 1


@pytest.mark.parametrize("bad", [torch.zeros(2, 5), torch.full((2, 5), float("nan"))])
def test_a_distribution_of_no_weight_is_refused(bad):
    with pytest.raises(ValueError, match="sums to zero or is not a number"):
        draw(bad, torch.Generator().manual_seed(0))
