"""Many processes on CPU (gloo): 2-process DDP / FSDP training equals 1-process training with the same global
batch, and a 2-process checkpoint resumes in one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_training import final_state
from textdiff.config import load_recipe
from textdiff.distributed import World
from textdiff.errors import TextdiffError
from textdiff.training import Trainer, train_recipe

ROOT = Path(__file__).resolve().parents[1]


def torchrun(recipe: Path, out: Path, nproc: int = 2) -> None:
    """`torchrun --nproc_per_node 2 -m textdiff train RECIPE` on CPU, one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "textdiff", "train", str(recipe), "--set", f"out_dir={out}", "--no-samples"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        raise
    assert proc.returncode == 0, stdout[-1500:] + stderr[-3000:]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6), k


def validation(run: Path) -> list[float]:
    return [json.loads(ln)["val_nll"] for ln in (run / "metrics.jsonl").read_text().splitlines() if "val_nll" in ln]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(write_recipe, tmp_path, strategy):
    train = {"steps": 6, "checkpoint_every": 3, "eval_every": 3, "eval_batches": 2, "grad_accum": 2,
             "strategy": strategy, "ema": 0.9 if strategy == "fsdp" else 0.0}
    model = {"n_layer": 2, "n_embd": 32, "n_head": 2, "dropout": 0.1, "self_conditioning": strategy == "ddp"}
    recipe = write_recipe(train=train, model=model)  # self-conditioning: some steps leave a layer unused
    one = train_recipe(load_recipe(recipe, [f"out_dir={tmp_path / 'one'}"]), progress=False)
    two = tmp_path / "two"
    torchrun(recipe, two)
    assert_close(final_state(one), final_state(two))
    assert validation(two) == pytest.approx(validation(one), rel=1e-5)
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)), "more than one process wrote metrics.jsonl"

    shutil.rmtree(two / "checkpoints" / "step_00000006")  # back to the 2-process checkpoint at step 3
    train_recipe(load_recipe(recipe, [f"out_dir={two}"]), resume=True, progress=False)
    assert_close(final_state(one), final_state(two))


def test_grad_accum_must_be_a_multiple_of_the_world_size(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(train={"grad_accum": 2}))
    with pytest.raises(TextdiffError, match=r"train.grad_accum=2 must be a multiple of the 3 processes"):
        Trainer(recipe, tmp_path, None, None, None, None, world=World(rank=0, size=3))


def test_activation_checkpointing_gives_the_same_gradients():
    from textdiff.config import DataConfig, ModelConfig, Recipe
    from textdiff.models import build_model

    recipe = Recipe(data=DataConfig(path="x", max_length=12), model=ModelConfig(n_layer=2, n_embd=16, n_head=2))
    torch.manual_seed(0)
    model = build_model(recipe, 32, 12)
    ids = torch.randint(0, 32, (3, 12))
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.checkpoint_blocks = flag
        model(ids).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_fsdp_refuses_self_conditioning_before_any_collective():
    from textdiff.config import DataConfig, ModelConfig, Recipe
    from textdiff.distributed import wrap_model
    from textdiff.models import build_model

    recipe = Recipe(data=DataConfig(path="x"), model=ModelConfig(n_layer=1, n_embd=16, n_head=2, self_conditioning=True))
    with pytest.raises(TextdiffError, match="train.strategy=fsdp does not support model.self_conditioning"):
        wrap_model(build_model(recipe, 32, 8), "fsdp", World(rank=0, size=2), torch.device("cpu"))
