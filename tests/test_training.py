"""Trainer: exact resume after SIGKILL, checkpoints, non-finite losses, metrics and the loss plot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from textdiff import checkpoint as ckpt
from textdiff.config import load_recipe
from textdiff.errors import TextdiffError
from textdiff.training import lr_at, train_recipe

ROOT = Path(__file__).resolve().parents[1]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    last = ckpt.list_checkpoints(run)[-1]
    out = {f"model.{k}": v for k, v in ckpt.load_tensors(last / "model.safetensors").items()}
    out.update({f"trainer.{k}": v for k, v in ckpt.load_tensors(last / "trainer.safetensors").items() if "rng" not in k})
    out.update({f"final.{k}": v for k, v in ckpt.load_tensors(run / "model.safetensors").items()})
    return out


def _kill_after_first_checkpoint(cmd: list[str], run: Path, env: dict) -> int:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.list_checkpoints(run):
            time.sleep(0.05)
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def test_sigkill_then_resume_equals_an_uninterrupted_run(write_recipe, tmp_path):
    train = {"steps": 240, "checkpoint_every": 40, "eval_every": 80}
    recipe = write_recipe(train=train, model={"n_layer": 2, "n_embd": 32, "n_head": 2, "dropout": 0.1})
    reference = train_recipe(load_recipe(recipe, ["out_dir=" + str(tmp_path / "ref")]), progress=False)

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "textdiff", "train", str(recipe), "--set", f"out_dir={run}", "--no-samples"]
    rc = _kill_after_first_checkpoint(cmd, run, env)
    assert rc == -signal.SIGKILL, "training finished before it could be killed: make the run longer"
    steps_done = json.loads((ckpt.list_checkpoints(run)[-1] / "state.json").read_text())["step"]
    assert steps_done < 240
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step" in done.stdout

    a, b = final_state(reference), final_state(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines() if "loss" in ln]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats or reorders steps after resume"


def test_checkpoints_keep_the_newest_and_write_everything(write_recipe):
    recipe = load_recipe(write_recipe(train={"steps": 12, "checkpoint_every": 3, "keep_checkpoints": 2, "ema": 0.9}))
    run = train_recipe(recipe, progress=False)
    found = ckpt.list_checkpoints(run)
    assert [p.name for p in found] == ["step_00000009", "step_00000012"]
    for name in ("model", "ema", "trainer"):
        assert (found[-1] / f"{name}.safetensors").is_file()
    assert not list((run / "checkpoints").glob(".tmp*"))
    state = json.loads((found[-1] / "state.json").read_text())
    assert state["step"] == 12 and state["data_position"] == 12 * recipe.train.batch_size
    # EMA weights are what the run directory serves for sampling
    assert all(torch.equal(v, ckpt.load_tensors(found[-1] / "ema.safetensors")[k])
               for k, v in ckpt.load_tensors(run / "model.safetensors").items())
    assert (run / "loss.png").stat().st_size > 1000
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_nll" in r for r in rows) and any("tok_per_s" in r for r in rows)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(write_recipe, monkeypatch):
    from textdiff.noising.masked import MaskedDiffusion

    recipe = load_recipe(write_recipe(train={"steps": 12, "checkpoint_every": 4}))
    real = MaskedDiffusion.loss
    calls = {"n": 0}

    def poisoned(self, model, batch, generator):
        calls["n"] += 1
        out = real(self, model, batch, generator)
        if calls["n"] == 7:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedDiffusion, "loss", poisoned)
    with pytest.raises(TextdiffError, match=r"step 7: .*not finite.*step_00000004"):
        train_recipe(recipe, progress=False)
    last = ckpt.list_checkpoints(recipe.run_dir())[-1]
    assert all(torch.isfinite(v).all() for v in ckpt.load_tensors(last / "model.safetensors").values())


def test_nonfinite_skip_mode_continues(write_recipe, monkeypatch):
    from textdiff.noising.masked import MaskedDiffusion

    recipe = load_recipe(write_recipe(train={"steps": 6, "checkpoint_every": 6, "nonfinite": "skip"}))
    real = MaskedDiffusion.loss

    def poisoned(self, model, batch, generator):
        out = real(self, model, batch, generator)
        out.loss = out.loss * float("inf") if model.training and torch.rand(1).item() < 0.3 else out.loss
        return out

    monkeypatch.setattr(MaskedDiffusion, "loss", poisoned)
    run = train_recipe(recipe, progress=False)
    assert all(torch.isfinite(v).all() for v in ckpt.load_tensors(run / "model.safetensors").values())


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = load_recipe(ROOT / "recipes/kjv/masked.yaml").train
    assert lr_at(0, cfg) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert lr_at(cfg.warmup_steps - 1, cfg) == pytest.approx(cfg.lr)
    assert lr_at(cfg.steps - 1, cfg) == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=1e-3)
    lrs = [lr_at(s, cfg) for s in range(cfg.warmup_steps, cfg.steps)]
    assert lrs == sorted(lrs, reverse=True)


def test_grad_accumulation_matches_one_big_batch(write_recipe, tmp_path):
    common = {"steps": 3, "checkpoint_every": 3, "batch_size": 8}
    one = train_recipe(load_recipe(write_recipe(train=common), [f"out_dir={tmp_path / 'a'}"]), progress=False)
    two = train_recipe(load_recipe(write_recipe(train={**common, "grad_accum": 2}), [f"out_dir={tmp_path / 'b'}"]),
                       progress=False)
    a, b = ckpt.load_tensors(one / "model.safetensors"), ckpt.load_tensors(two / "model.safetensors")
    # same data and optimizer; the masks differ per micro-batch, so the weights are close, not equal
    assert all(torch.allclose(a[k], b[k], atol=5e-2) for k in a)
