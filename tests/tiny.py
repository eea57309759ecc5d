"""Tiny models of every back-end for the conformance suites and unit tests: a 24-token vocabulary, 10 positions."""

from __future__ import annotations

import torch

from textdiff.config import DataConfig, ModelConfig, Recipe
from textdiff.models import build_model
from textdiff.noising import BACKENDS, get_backend, options_for
from textdiff.noising.base import Batch, SpecialTokens

SPECIAL = SpecialTokens(pad=0, mask=1, bos=2, eos=3, unk=4, sep=5)
V, L, B = 24, 10, 4
BACKEND_NAMES = sorted(BACKENDS)
PAIRS = [(b, s) for b in BACKEND_NAMES for s in BACKENDS[b].samplers]


def make(backend_name: str, seed: int = 0, model: dict | None = None, **backend_kw):
    """A 2 x 32 model of `backend_name` (in eval mode, seeded) and its back-end."""
    recipe = Recipe(data=DataConfig(path="unused.jsonl", max_length=L),
                    model=ModelConfig(**{"n_layer": 2, "n_embd": 32, "n_head": 2, **(model or {})}),
                    backend=options_for(backend_name, **backend_kw))
    torch.manual_seed(seed)
    return build_model(recipe, V, L).eval(), get_backend(recipe.backend, SPECIAL, V)


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, V, (B, L), generator=g)
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[0, -3:] = False  # a padded tail
    return Batch(ids, keep)


def self_conditioned(name: str):
    """A one-layer self-conditioned model of back-end `name` (time-conditioned unless masked) and its back-end."""
    return make(name, model={"n_layer": 1, "time_conditioning": name != "masked", "self_conditioning": True})


def sample(name: str, model, backend, x, seed: int = 0, **options):
    """SAMPLERS[name] on x with a seeded generator (options: steps, callback, guidance, the sampler's own)."""
    from textdiff.registry import SAMPLERS

    return SAMPLERS[name](model, backend, x, torch.Generator().manual_seed(seed), **options)
