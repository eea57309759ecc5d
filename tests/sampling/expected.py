"""Frozen outputs of every (back-end, sampler) pair on a tiny fixed model, as diffusers' scheduler tests end in a
`result_sum`: what shape and property tests cannot see (a changed draw order, a step off by one) changes these.

    python -m tests.sampling.expected            # compare (what tests/sampling/test_expected.py does)
    python -m tests.sampling.expected --update   # rewrite expected.json, deliberately, after a change meant to
                                                 # alter the outputs (say which and why in the commit)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tests.tiny import B, L, PAIRS, make, sample
from textdiff.registry import SAMPLERS

PATH = Path(__file__).with_name("expected.json")


def start(backend) -> torch.Tensor:
    """The prior with a given two-token prefix (every sampler supports prefixes)."""
    x = backend.prior((B, L))
    x[:, :2] = torch.tensor([7, 8])
    return x


@torch.no_grad()
def outputs(name: str, sampler: str) -> dict:
    """{"tokens": the (B, L) ids at seed 0 with the sampler's defaults, a row per string; "prob_sum", "prob_max":
    of the first step's x0 distribution (None when the sampler reports none)} for one pair."""
    torch.manual_seed(0)
    model, backend = make(name, seed=0)
    steps = {"steps": 4} if SAMPLERS[sampler].takes_steps else {}
    first = []
    tokens = sample(sampler, model, backend, start(backend), seed=0,
                    callback=lambda i, ids, probs: first.append(probs) if not first else None, **steps)
    probs = first[0] if first and first[0] is not None else None
    return {"tokens": [" ".join(map(str, row)) for row in tokens.tolist()], "prob_sum": None if probs is None else round(float(probs.double().sum()), 6),
            "prob_max": None if probs is None else round(float(probs.max()), 6)}


def compute() -> dict:
    return {f"{name}/{sampler}": outputs(name, sampler) for name, sampler in PAIRS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update", action="store_true", help="rewrite expected.json with the current outputs")
    args = p.parse_args(argv)
    now = compute()
    if args.update:
        PATH.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"wrote {PATH} ({len(now)} pairs)")
        return 0
    saved = json.loads(PATH.read_text())
    changed = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))
    print("\n".join(f"changed: {k}" for k in changed) or "all pairs as frozen")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
