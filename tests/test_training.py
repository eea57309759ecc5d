"""Trainer: exact resume after SIGKILL, checkpoints, non-finite losses, metrics and the loss plot."""

from __future__ import annotations

import json
import os
import re
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
    # one thread in both processes: the reference runs here, the killed run in a child, and float sums differ
    # with the thread count (the child would inherit OMP_NUM_THREADS, this process has conftest's 2)
    train = {"steps": 240, "checkpoint_every": 40, "eval_every": 80, "threads": 1}
    recipe = write_recipe(train=train, model={"n_layer": 2, "n_embd": 32, "n_head": 2, "dropout": 0.1})
    threads = torch.get_num_threads()
    try:
        reference = train_recipe(load_recipe(recipe, ["out_dir=" + str(tmp_path / "ref")]), progress=False)
    finally:
        torch.set_num_threads(threads)

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "textdiff", "train", str(recipe), "--set", f"out_dir={run}", "--no-samples"]
    rc = _kill_after_first_checkpoint(cmd, run, env)
    assert rc == -signal.SIGKILL, "training finished before it could be killed: make the run longer"
    steps_done = json.loads((ckpt.list_checkpoints(run)[-1] / "state.json").read_text())["step"]
    assert steps_done < 240
    # how often a run checkpoints, logs and validates may change on resume without changing its weights
    resume = ["--resume", "--set", "train.checkpoint_every=60", "--set", "train.log_every=7",
              "--set", "train.eval_every=30", "--set", "train.eval_batches=1"]
    done = subprocess.run(cmd + resume, env=env, capture_output=True, text=True)
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


# --- three SIGKILLs at random moments (benchmarks/soak.py, which runs 20) -----------------------------------------


def _soak_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("textdiff_soak", ROOT / "benchmarks" / "soak.py")
    module = sys.modules.setdefault("textdiff_soak", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [0])
def test_three_random_sigkills_leave_readable_checkpoints_and_exact_weights(seed, tmp_path):
    soak = _soak_module()
    result = soak.soak(kills=3, seed=seed, workdir=tmp_path, fork=True, log=lambda line: None)
    assert result.kills == 3 and result.equal, result.lines()
    assert not list((tmp_path / "killed" / "checkpoints").glob(".tmp*")), "a finished run left temporaries"


# --- NaN / inf in the loss or the gradients ----------------------------------------------------------------------


class NanGrad(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward (every gradient becomes NaN)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _poison(monkeypatch, at_calls: set[int], kind: str) -> None:
    """Make the training loss (kind='loss') or only its gradient (kind='grad') NaN on the given loss calls."""
    from textdiff.noising.masked import MaskedDiffusion

    real, calls = MaskedDiffusion.loss, {"n": 0}

    def poisoned(self, model, batch, generator):
        out = real(self, model, batch, generator)
        if model.training:
            calls["n"] += 1
            if calls["n"] in at_calls:
                out.loss = out.loss * float("nan") if kind == "loss" else NanGrad.apply(out.loss)
        return out

    monkeypatch.setattr(MaskedDiffusion, "loss", poisoned)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_stop_through_the_cli(kind, write_recipe, monkeypatch, capsys):
    """stop: exit 2, one line naming the step; the last good checkpoint is untouched and the run still loads."""
    from tests.test_cli_errors import assert_one_line_error, snapshot
    from textdiff.cli import main
    from textdiff.pipeline import TextDiffusionPipeline

    recipe = write_recipe(train={"steps": 12, "checkpoint_every": 4, "eval_every": 0})
    run = load_recipe(recipe).run_dir()
    _poison(monkeypatch, {7}, kind)
    seen = {}
    real_save = ckpt.write_checkpoint

    def save(*args, **kwargs):  # record the good checkpoint's bytes as written
        out = real_save(*args, **kwargs)
        seen.update(snapshot(out))
        return out

    monkeypatch.setattr(ckpt, "write_checkpoint", save)
    capsys.readouterr()
    rc = main(["train", str(recipe), "--no-samples", "--device", "cpu"])
    needle = "loss=nan" if kind == "loss" else "grad_norm=nan"
    err = capsys.readouterr().err
    bar = [ln for ln in re.split(r"[\r\n]", err) if re.search(r"\d+%\|", ln)]  # tqdm's, closed before the error
    assert bar and err.endswith("\n") and not err.splitlines()[-1].startswith("\r"), err
    err = "".join(ln + "\n" for ln in re.split(r"[\r\n]", err) if ln.strip() and ln not in bar)
    line = assert_one_line_error(rc, err, ("step 7:", needle, "step_00000004", "train.nonfinite"))
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000004"], line
    assert snapshot(ckpt.list_checkpoints(run)[-1]) == {k: v for k, v in seen.items() if "step_00000004" in k}
    pipe = TextDiffusionPipeline.from_pretrained(run)  # finite weights of step 4 (NaN weights would be refused)
    assert len(pipe.generate(1, steps=2).texts) == 1


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_skip_continues_with_finite_weights(kind, write_recipe, monkeypatch, capsys):
    recipe = load_recipe(write_recipe(train={"steps": 8, "checkpoint_every": 4, "eval_every": 0, "nonfinite": "skip"}))
    _poison(monkeypatch, {2, 5, 6}, kind)
    run = train_recipe(recipe, progress=False)
    out = capsys.readouterr().out
    assert [ln.split(":")[1].strip() for ln in out.splitlines() if "skipped that step" in ln] == ["step 2", "step 5",
                                                                                               "step 6"]
    assert json.loads((ckpt.list_checkpoints(run)[-1] / "state.json").read_text())["step"] == 8
    for path in (run / "model.safetensors", ckpt.list_checkpoints(run)[-1] / "model.safetensors"):
        assert all(torch.isfinite(v).all() for v in ckpt.load_tensors(path).values())


def test_the_loss_plot_is_on_a_log_axis_with_the_validation_points_marked(tmp_path):
    """A large early loss must not flatten the rest of the curve: a log axis, validation as marked points."""
    import json

    import matplotlib.pyplot as plt

    from textdiff.training import loss_figure, plot_losses

    rows = [{"step": s, "loss": 500.0 / s} for s in range(1, 201)] + [{"step": s, "val_nll": 3.0 + 40.0 / s}
                                                                       for s in (50, 100, 150, 200)]
    fig = loss_figure(rows)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    marked = [ln for ln in ax.get_lines() if ln.get_marker() not in (None, "None", "")]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [50, 100, 150, 200]
    plt.close(fig)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows + [{"step": 201, "loss": -0.5}]))
    plot_losses(metrics, tmp_path / "loss.png")  # a loss <= 0 (a continuous bound can go below 0): symlog
    assert (tmp_path / "loss.png").stat().st_size > 1000
