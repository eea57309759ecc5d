"""train.log_to: [jsonl, tensorboard] writes event files that TensorBoard's own reader reads back: the jsonl's
metrics as scalars at the same steps, and sample texts at each validation."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install -e '.[tensorboard]'")

from tests.conftest import tiny_recipe_dict  # noqa: E402
from textdiff.config import recipe_from_dict  # noqa: E402
from textdiff.errors import TextdiffError  # noqa: E402
from textdiff.tensorboard_log import read_scalars, read_texts  # noqa: E402
from textdiff.training import train_recipe  # noqa: E402


def train(corpus, out, steps=12, resume=False, **train):
    raw = tiny_recipe_dict(corpus, out)
    raw["train"].update(steps=steps, threads=1, **train)
    return train_recipe(recipe_from_dict(raw), resume=resume, progress=False)


def test_event_files_hold_the_metrics_and_samples(corpus, tmp_path):
    run = train(corpus, tmp_path / "run", log_to=["jsonl", "tensorboard"])
    scalars = read_scalars(run / "tensorboard")
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in rows if "loss" in r]
    assert [s for s, _ in scalars["train/lr"]] == [r["step"] for r in rows if "lr" in r]
    assert [s for s, _ in scalars["train/tok_per_s"]] == [r["step"] for r in rows if "tok_per_s" in r]
    val = [(r["step"], r["val_nll"]) for r in rows if "val_nll" in r]
    assert scalars["validation/nats_per_token"] == [(s, pytest.approx(v)) for s, v in val] and len(val) == 2
    texts = read_texts(run / "tensorboard")
    assert [s for s, _ in texts] == [s for s, _ in val]
    assert all(t.startswith("0. `") and t.count("\n") == 1 for _, t in texts)  # two samples (sample.num_samples)


def test_resume_drops_events_past_the_checkpoint(corpus, tmp_path):
    """A run resumed from an older checkpoint (its newest one lost) logs steps 9..12 again: each step once."""
    import shutil

    run = train(corpus, tmp_path / "run", steps=12, log_to=["jsonl", "tensorboard"])
    shutil.rmtree(run / "checkpoints" / "step_00000012")
    train(corpus, tmp_path / "run", steps=12, resume=True, log_to=["jsonl", "tensorboard"])
    steps = [s for s, _ in read_scalars(run / "tensorboard")["train/loss"]]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_jsonl_alone_writes_no_events(corpus, tmp_path):
    run = train(corpus, tmp_path / "run", steps=4)
    assert not (run / "tensorboard").exists()


@pytest.mark.parametrize("log_to", [["tensorboard"], ["jsonl", "wandb"]])
def test_bad_log_to(corpus, tmp_path, log_to):
    raw = tiny_recipe_dict(corpus, tmp_path / "run")
    raw["train"]["log_to"] = log_to
    with pytest.raises(TextdiffError, match="train.log_to"):
        recipe_from_dict(raw)
