"""Every (back-end, sampler) pair reproduces its frozen output (tests/sampling/expected.py says how to refreeze)."""

from __future__ import annotations

import json

import pytest

from tests.sampling.expected import PATH, outputs
from tests.tiny import PAIRS

SAVED = json.loads(PATH.read_text())


def test_every_pair_is_frozen():
    assert sorted(SAVED) == sorted(f"{n}/{s}" for n, s in PAIRS), "python -m tests.sampling.expected --update"


@pytest.mark.parametrize("name,sampler", PAIRS)
def test_the_pair_reproduces_its_frozen_output(name, sampler):
    now, saved = outputs(name, sampler), SAVED[f"{name}/{sampler}"]
    assert now["tokens"] == saved["tokens"]
    for key in ("prob_sum", "prob_max"):
        assert (now[key] is None) == (saved[key] is None)
        if now[key] is not None:
            assert now[key] == pytest.approx(saved[key], rel=1e-4, abs=1e-5), key
