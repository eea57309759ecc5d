"""Issue 31 (second round) and 32.6 / 32.9: the NaN guard on the weights, the run-directory lock, nothing written by
a failing command, file modes, the accelerate single-process launch, the thread count and the pace warning, and a
seeded fuzz target over nesting, sizes and YAML structure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, tiny_recipe_dict
from textdiff import checkpoint as ckpt
from textdiff import rundir
from textdiff.config import load_recipe, parse_override, read_yaml, recipe_from_dict
from textdiff.errors import TextdiffError
from textdiff.training import train_recipe


# --- the NaN guard looks at the weights the optimizer has just written --------------------------------------------


def test_nonfinite_weights_after_a_finite_step_never_reach_a_checkpoint(write_recipe, monkeypatch):
    """A finite loss and gradient whose optimizer step leaves inf in a weight (what train.lr=inf did): training
    stops at that step, and no checkpoint nor model.safetensors on disk holds a non-finite value."""
    recipe = load_recipe(write_recipe(train={"steps": 6, "checkpoint_every": 1, "eval_every": 0}))
    real, calls = torch.optim.AdamW.step, {"n": 0}

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            self.param_groups[0]["params"][0].data.view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(TextdiffError, match=r"step 3: the optimizer step left NaN or inf in the weights.*step_00000002"):
        train_recipe(recipe, progress=False)
    run = recipe.run_dir()
    files = [run / "model.safetensors"] + [c / f"{n}.safetensors" for c in ckpt.list_checkpoints(run)
                                           for n in ("model", "trainer")]
    assert [c.name for c in ckpt.list_checkpoints(run)] == ["step_00000001", "step_00000002"]
    for path in files:
        assert all(torch.isfinite(v).all() for v in ckpt.load_tensors(path).values() if v.is_floating_point()), path


def test_save_refuses_nonfinite_weights(write_recipe, monkeypatch):
    """The last line of defence: Trainer.save checks the weights before writing anything."""
    from textdiff import training

    recipe = load_recipe(write_recipe(train={"steps": 2, "checkpoint_every": 2, "eval_every": 0}))
    monkeypatch.setattr(training.Trainer, "_check_weights", lambda self, step: None)
    real = training.Trainer.save

    def save(self):
        next(self.module.parameters()).data.view(-1)[0] = float("nan")
        real(self)

    monkeypatch.setattr(training.Trainer, "save", save)
    with pytest.raises(TextdiffError, match="NaN or inf"):
        train_recipe(recipe, progress=False)
    assert not ckpt.list_checkpoints(recipe.run_dir()) and not (recipe.run_dir() / "model.safetensors").exists()


# --- one writer per run directory -----------------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_is_free_after_release(tmp_path):
    first, second = rundir.RunLock(tmp_path), rundir.RunLock(tmp_path)
    first.acquire()
    with pytest.raises(TextdiffError, match=rf"being written by another textdiff process \(pid {os.getpid()}\)"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    """flock dies with its process: after a SIGKILL the next writer gets the lock at once."""
    code = ("import sys, time; from textdiff.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(TextdiffError, match=f"pid {child.pid}"):
            rundir.RunLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    lock = rundir.RunLock(tmp_path)
    lock.acquire()
    lock.release()


def test_a_failed_new_run_leaves_an_existing_directory_as_found(write_recipe, tmp_path, monkeypatch):
    """A too-large model, or any failure before the first checkpoint: the corrected rerun is not blocked by an
    'already holds a run' config.json, and files that were there before stay."""
    from textdiff import training

    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    recipe = load_recipe(write_recipe(out_dir=str(out), train={"steps": 4, "checkpoint_every": 4}))
    monkeypatch.setattr(training.Trainer, "fit", lambda *a, **k: (_ for _ in ()).throw(TextdiffError("boom")))
    with pytest.raises(TextdiffError, match="boom"):
        train_recipe(recipe, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".textdiff.lock", "notes.txt"]
    monkeypatch.undo()
    train_recipe(recipe, progress=False)
    assert rundir.is_run(out)


def test_failing_resume_leaves_config_json_untouched(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(train={"steps": 4, "checkpoint_every": 4}))
    run = train_recipe(recipe, progress=False)
    before = (run / "config.json").read_bytes()
    (ckpt.list_checkpoints(run)[-1] / "trainer.safetensors").write_bytes(b"damaged")
    longer = load_recipe(write_recipe(train={"steps": 9, "checkpoint_every": 4}))
    with pytest.raises(TextdiffError, match="trainer.safetensors"):
        train_recipe(longer, resume=True, progress=False)
    assert (run / "config.json").read_bytes() == before


def test_resume_refuses_changed_data(write_recipe, tmp_path, corpus):
    data = tmp_path / "data.jsonl"
    data.write_bytes(corpus.read_bytes())
    recipe = load_recipe(write_recipe(data={"path": str(data)}, train={"steps": 4, "checkpoint_every": 4}))
    train_recipe(recipe, progress=False)
    with open(data, "a") as f:
        f.write(json.dumps({"text": "a new line of text", "split": "train"}) + "\n")
    with pytest.raises(TextdiffError, match=r"--resume: data.path=.* is not the data .* bytes then"):
        train_recipe(load_recipe(write_recipe(data={"path": str(data)}, train={"steps": 8, "checkpoint_every": 4})),
                     resume=True, progress=False)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        ckpt.atomic_write_bytes(tmp_path / "a.json", b"{}")
        ckpt.save_tensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
        plain = tmp_path / "plain"
        plain.write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o666 & ~umask, "w.safetensors": 0o666 & ~umask, "plain": 0o666 & ~umask}


@pytest.mark.parametrize("how", ["oserror", "rust"])
def test_full_disk_while_writing_the_tokenizer_leaves_nothing(how, write_recipe, tmp_path, monkeypatch, capsys):
    """ENOSPC in the first write of a new run (as Python's OSError, or as tokenizers' Rust writer says it): one
    line, exit 2, and no half-written (0-byte) file left."""
    import errno

    from textdiff.cli import main

    def full(self, path, *a, **k):
        (__import__("pathlib").Path(path) / "tokenizer_config.json").write_bytes(b"")
        if how == "rust":
            raise Exception("No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("transformers.PreTrainedTokenizerFast.save_pretrained", full)
    out = tmp_path / "full"
    capsys.readouterr()
    rc = main(["train", str(write_recipe(out_dir=str(out))), "--no-samples", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0], err
    assert not out.exists()


def test_rows_whose_text_is_not_a_string_are_counted_and_reported(tmp_path, capsys):
    from textdiff.config import DataConfig
    from textdiff.data import load_texts

    path = tmp_path / "mixed.jsonl"
    rows = [{"text": "the old king", "split": "train"}, {"text": 7, "split": "train"},
            {"text": "a river", "split": "train"}, {"text": None, "split": "train"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_texts(DataConfig(path=str(path)))["train"] == ["the old king", "a river"]
    assert "skipped 1 of 4 rows" in capsys.readouterr().out


# --- accelerate, threads and pace ------------------------------------------------------------------------------------


def test_accelerate_single_process_launch_is_refused():
    from textdiff.distributed import check_launch

    simple = {"ACCELERATE_USE_CPU": "False", "ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1"}
    with pytest.raises(TextdiffError, match="single process.*--multi_gpu"):
        check_launch(simple)
    check_launch({**simple, "WORLD_SIZE": "2"})  # --multi_gpu: torchrun's environment
    check_launch({k: v for k, v in simple.items() if k != "MASTER_ADDR"})  # --num_processes 1
    check_launch({"MASTER_ADDR": "127.0.0.1"})  # not accelerate


def test_threads_beside_busy_cores(monkeypatch):
    from textdiff import resources

    monkeypatch.setattr(resources, "usable_cores", lambda: 4)
    monkeypatch.setattr(resources, "busy_cores", lambda: 1)
    threads, why = resources.threads_beside_others()
    assert threads == 3 and "1 of 4 cores are busy" in why
    monkeypatch.setattr(resources, "busy_cores", lambda: 0)
    assert resources.threads_beside_others() is None
    monkeypatch.setattr(resources, "busy_cores", lambda: 9)
    assert resources.threads_beside_others()[0] == 1


def test_busy_cores_reads_the_load_and_the_running_processes(monkeypatch):
    from textdiff import resources

    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.0, 1.0))
    assert resources.busy_cores() >= 2  # 1.6 rounds to 2, whatever runs right now


def test_pace_warns_once_when_steps_slow_down():
    from textdiff.resources import Pace

    pace = Pace(early=5, window=4, factor=4.0)
    said = [pace.add(s) for s in [2.0] + [0.1] * 5 + [0.15] * 4]
    assert not any(said)
    said = [pace.add(s) for s in [2.5] * 6]
    assert [s for s in said if s] and len([s for s in said if s]) == 1 and "25x" in [s for s in said if s][0]


# --- fuzz: nesting, sizes and YAML structure --------------------------------------------------------------------

LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30), st.floats(allow_nan=True),
                 st.text(max_size=8))
NESTED = st.recursive(LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=40)


def _only_clean(fn, *args):
    try:
        fn(*args)
    except TextdiffError as e:
        assert "\n" not in str(e) and len(str(e)) < 2000, str(e)[:300]


def _deep(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "flow" else "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + "x"


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(section=st.sampled_from(["model", "train", "data", "tokenizer", "sample", "backend"]),
       key=st.sampled_from(["n_layer", "n_embd", "n_head", "steps", "batch_size", "threads", "max_length",
                            "vocab_size", "length", "num_samples", "mbr", "name", "lr"]),
       value=st.one_of(NESTED, st.integers(-10 ** 40, 10 ** 40)))
def test_fuzz_sizes_and_nested_values_in_a_recipe(section, key, value, tmp_path_factory):
    raw = tiny_recipe_dict(tmp_path_factory.getbasetemp() / "c.jsonl", tmp_path_factory.getbasetemp() / "r")
    raw.setdefault(section, {})[key] = value
    _only_clean(recipe_from_dict, raw)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(1, 3000), kind=st.sampled_from(["flow", "block"]),
       dup=st.booleans(), alias=st.integers(0, 9))
def test_fuzz_yaml_structure(depth, kind, dup, alias, tmp_path_factory):
    """Deep nesting, duplicate keys and alias fan-out in a recipe file and in --set: a result or one clean line."""
    path = tmp_path_factory.mktemp("y") / "r.yaml"
    extra = ("train: {steps: 3}\ntrain: {lr: 1}\n" if dup else "")
    bomb = "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else 'x'}]\n" for i in range(alias))
    path.write_text(f"data: {{path: x.jsonl}}\nextra: {_deep(min(depth, 400), kind) if kind == 'flow' else 1}\n"
                    + extra + bomb)
    _only_clean(read_yaml, path)
    _only_clean(parse_override, f"train.lr={_deep(depth, 'flow')}")
    if kind == "block":
        block = tmp_path_factory.mktemp("y") / "b.yaml"
        block.write_text(_deep(min(depth, 800), "block"))
        _only_clean(read_yaml, block)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(depth=st.integers(1, 200_000), sizes=st.fixed_dictionaries(
    {"vocab_size": st.integers(-5, 10 ** 30), "max_len": st.integers(-5, 10 ** 30)}))
def test_fuzz_config_json_nesting_and_sizes(depth, sizes, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    (run / "config.json").write_text(json.dumps({"type": "textdiff", "recipe": {}, **sizes})[:-1]
                                     + ', "x": ' + "[" * depth + "]" * depth + "}")
    _only_clean(rundir.read_config, run)


# --- the soak's new parts, at test size (benchmarks/soak.py runs them at 8 / 20 / 6) -----------------------------


def _soak():
    from tests.test_training import _soak_module

    return _soak_module()


def test_soak_concurrent_writers_first_write_kills_and_a_full_disk(tmp_path):
    import random

    soak = _soak()
    corpus = soak.synthetic_corpus(tmp_path / "corpus.jsonl")
    race = soak.race_rounds(2, tmp_path, corpus, random.Random(0), log=lambda line: None)
    assert race["rounds"] == race["equal"] == 2 and race["refused"] >= 2
    first = soak.first_write_rounds(6, tmp_path, corpus, log=lambda line: None)  # every rename, both sides
    assert first["equal"] == 6 and first["no_run"] >= 1 and first["run_without_checkpoint"] >= 1
    disk = soak.disk_rounds(2, tmp_path, corpus, random.Random(1), log=lambda line: None)
    assert disk["equal"] == 2 and disk["full"] >= 1


def test_soak_patched_enospc_writer(tmp_path, monkeypatch):
    """Where tmpfs cannot be mounted, a writer raising ENOSPC after a random number of writes stands in."""
    import random

    soak = _soak()
    monkeypatch.setattr(soak, "can_mount_tmpfs", lambda where: False)
    corpus = soak.synthetic_corpus(tmp_path / "corpus.jsonl")
    disk = soak.disk_rounds(3, tmp_path, corpus, random.Random(2), log=lambda line: None)
    assert disk["equal"] == 3 and disk["how"].startswith("patched")


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_sets_the_wait_policy_before_torch_is_imported(given, expected):
    code = ("import builtins, os\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] == 'torch' and 'OMP_WAIT_POLICY' not in os.environ:\n"
            "        raise SystemExit('torch imported before OMP_WAIT_POLICY was set')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import textdiff.cli, torch\n"
            "print(os.environ['OMP_WAIT_POLICY'])\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"PYTHONPATH": str(ROOT), **({"OMP_WAIT_POLICY": given} if given else {})})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr[-500:]
