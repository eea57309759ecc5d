"""Shared fixtures: a synthetic corpus (no third-party text), tiny recipes and tiny trained runs."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="textdiff-hf-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
NOUNS = ["king", "river", "stone", "shepherd", "city", "garden", "lamp", "field", "servant", "mountain"]
ADJS = ["old", "green", "quiet", "bright", "great", "small"]
VERBS = ["sees", "keeps", "finds", "builds", "crosses", "remembers"]


def make_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}"
        if rng.random() < 0.5:
            s += f" and the {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}"
        out.append(s + ".")
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A jsonl corpus with `text` and `split` fields: 1200 / 80 / 80 synthetic sentences."""
    path = tmp_path_factory.mktemp("corpus") / "toy.jsonl"
    rows = [{"text": t, "split": s} for s, n, seed in (("train", 1200, 0), ("validation", 80, 1), ("test", 80, 2))
            for t in make_sentences(n, seed)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_recipe_dict(corpus: Path, out_dir: Path, backend: str = "masked") -> dict:
    return {
        "name": f"tiny-{backend}",
        "out_dir": str(out_dir),
        "data": {"path": str(corpus), "text_field": "text", "split_field": "split", "max_length": 24},
        "tokenizer": {"kind": "wordlevel", "vocab_size": 64, "min_frequency": 1},
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2},
        "backend": {"name": backend},
        "train": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "precision": "fp32",
                  "eval_every": 6, "eval_batches": 1, "checkpoint_every": 4, "log_every": 2, "seed": 0},
        "sample": {"steps": 8, "num_samples": 2},
    }


@pytest.fixture
def write_recipe(tmp_path, corpus):
    """write_recipe(backend='masked', **section_overrides) -> path of a tiny YAML recipe under tmp_path."""
    def write(backend: str = "masked", name: str = "recipe.yaml", **sections) -> Path:
        raw = tiny_recipe_dict(corpus, tmp_path / f"run-{backend}", backend)
        for section, values in sections.items():
            if isinstance(values, dict):
                raw.setdefault(section, {}).update(values)
            else:
                raw[section] = values
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path
    return write


def _train(corpus: Path, out: Path, backend: str, steps: int, sections: dict | None = None) -> Path:
    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    raw = tiny_recipe_dict(corpus, out, backend)
    raw["train"]["steps"] = steps
    for section, values in (sections or {}).items():
        raw[section].update(values)
    return train_recipe(recipe_from_dict(raw), progress=False)


@pytest.fixture(scope="session")
def masked_run(tmp_path_factory, corpus) -> Path:
    """A tiny masked-diffusion run trained long enough to learn the toy grammar's words."""
    return _train(corpus, tmp_path_factory.mktemp("runs") / "masked", "masked", 150)


@pytest.fixture(scope="session")
def ar_run(tmp_path_factory, corpus) -> Path:
    return _train(corpus, tmp_path_factory.mktemp("runs") / "ar", "ar", 60)


@pytest.fixture(scope="session")
def edit_run(tmp_path_factory, corpus) -> Path:
    """A tiny edit-diffusion run (variable length: infill templates take [...] spans)."""
    return _train(corpus, tmp_path_factory.mktemp("runs") / "edit", "edit", 12)
