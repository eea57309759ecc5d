"""Soak test of atomic checkpoints: SIGKILL a tiny training run at N random moments, resume it each time, and
check that every checkpoint on disk stays readable and that the final weights equal an uninterrupted run's.

    python benchmarks/soak.py                 # 20 kills, about 15 s on one CPU thread
    python benchmarks/soak.py --kills 3 --seed 1 --spawn   # each child a fresh interpreter (slow start)

Each kill is one of these moments, in a random order and at a random point (the plan is printed):
- `step`:    inside a training step (after the optimizer step, before the step counter moves);
- `file`:    halfway through writing one safetensors file of a checkpoint (a partial temporary file on disk);
- `rename`:  just before one of the checkpoint's renames (complete temporary files, not yet in place);
- `renamed`: just after one of those renames (e.g. the checkpoint is in place, model.safetensors not yet);
- `prune`:   halfway through deleting an old checkpoint;
- `timer`:   from outside, after a random delay once training has started (wherever the run happens to be).
- `first`:   during the first write of a new run directory (its tokenizer files and config.json), before or after
             one of its renames (the first kill of every soak is one);
- `resume`:  during a `--resume`'s own writes (config.json with a changed cadence, metrics.jsonl cut back to the
             checkpoint), before or after one of their renames.
The others are SIGKILLs the child sends itself from a patched function (`child_main`), so they land exactly
where asked; the process dies the same way as from outside: no cleanup, no flush, no exception handlers.

Two more parts follow the kills (`--rounds`, `--disk`; both on by default):
- concurrency: in each of `--rounds` rounds, 2 to 4 `textdiff train` start at once into one new directory, then 2 to
  4 `textdiff train --resume` at once into it: each time exactly one trains and every other exits 2 with one line;
  the directory then holds one run equal, bit for bit, to an uninterrupted one;
- full disk: training into a small tmpfs (`mount -t tmpfs`, where the machine allows it; otherwise a patched
  writer raising ENOSPC) of a random size, so that the disk fills during the first write, a checkpoint or a
  metrics line: exit 2 with one line, every file on disk readable, no temporary file left, and the directory,
  copied to a roomy disk, resumes bit-exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("step", "file", "rename", "renamed", "prune", "timer", "resume")
SPOTS = (*MODES, "first", "after-save")  # after-save: a planned spot that never came (nothing to prune yet, ...)


def child_main(plan: dict, argv: list[str]) -> int:
    """In the child: patch the planned spot to SIGKILL this process, then run `textdiff <argv>`."""
    from textdiff import checkpoint as ckpt
    from textdiff import training
    from textdiff.cli import main

    saves, calls, steps = [0], [0], [0]
    mode = plan["mode"]

    def die(spot: str):
        with open(plan["note"], "a") as f:  # where the kill really landed, for the counts
            f.write(spot + "\n")
        os.kill(os.getpid(), signal.SIGKILL)

    def armed():  # inside the planned checkpoint write, or (first, resume) in the writes before the first one
        return mode in ("file", "rename", "renamed", "prune", "first", "resume") and saves[0] == plan["save"]

    def hit():
        calls[0] += 1
        return calls[0] == plan["call"]

    real_step, real_save, real_save_file = training.Trainer.train_step, training.Trainer.save, ckpt.save_file
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def train_step(self, step):
        out = real_step(self, step)
        steps[0] += 1
        if mode == "step" and steps[0] == plan["step"]:
            die("step")
        return out

    def save(self):
        if mode in ("first", "resume") and armed():  # the planned rename never came before the first save
            die("after-save")
        saves[0] += 1
        real_save(self)
        if armed():  # the planned spot never came (e.g. nothing to prune yet): die right after the write
            die("after-save")

    def save_file(tensors, path, metadata=None):
        if armed() and mode == "file" and hit():
            from safetensors.torch import save as to_bytes

            data = to_bytes(tensors, metadata=metadata)
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            die("file")
        real_save_file(tensors, path, metadata=metadata)

    def replace(src, dst):
        fire = armed() and mode in ("rename", "renamed", "first", "resume") and hit()
        if fire and (mode == "rename" or (mode in ("first", "resume") and plan["before"])):
            die(mode if mode != "rename" else "rename")
        real_replace(src, dst)
        if fire:
            die(mode if mode in ("first", "resume") else "renamed")

    def rmtree(path, ignore_errors=False):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        if armed() and mode == "prune" and files:
            for p in files[: max(1, len(files) // 2)]:
                p.unlink()
            die("prune")
        real_rmtree(path, ignore_errors=ignore_errors)

    training.Trainer.train_step, training.Trainer.save, ckpt.save_file = train_step, save, save_file
    ckpt.os.replace, ckpt.shutil.rmtree = replace, rmtree
    return main(argv)


@dataclass
class SoakResult:
    kills: int = 0
    by_mode: dict = field(default_factory=lambda: {m: 0 for m in SPOTS})
    checkpoints_checked: int = 0
    resumes: int = 0
    equal: bool = False
    seconds: float = 0.0

    def lines(self) -> list[str]:
        modes = ", ".join(f"{m} {n}" for m, n in self.by_mode.items())
        return [f"kills survived: {self.kills} ({modes})",
                f"checkpoint readability checks after kills: {self.checkpoints_checked} checkpoints, all readable",
                f"resumes: {self.resumes}; final weights equal to the uninterrupted run: {self.equal}",
                f"time: {self.seconds:.0f} s"]


def synthetic_corpus(path: Path, n: int = 600, seed: int = 0) -> Path:
    """A jsonl corpus of made-up sentences (no third-party text)."""
    rng = random.Random(seed)
    words = "the old king river stone city lamp field sees keeps finds builds and a small green".split()
    rows = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))), "split": "train"}
            for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_recipe(corpus: Path, out_dir: Path, kills: int, every: int = 2) -> dict:
    """Long enough that `kills` kills (each at most two checkpoints further on) never reach the end."""
    return {
        "name": "soak", "out_dir": str(out_dir),
        "data": {"path": str(corpus), "text_field": "text", "split_field": None, "max_length": 16},
        "tokenizer": {"kind": "wordlevel", "vocab_size": 32, "min_frequency": 1},
        "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "dropout": 0.1},
        "backend": {"name": "masked"},
        "train": {"steps": every * (2 * kills + 2), "batch_size": 4, "lr": 3e-3, "warmup_steps": 2,
                  "precision": "fp32", "eval_every": 0, "eval_batches": 1, "checkpoint_every": every,
                  "keep_checkpoints": 2, "log_every": 1, "seed": 0, "threads": 1, "ema": 0.9},
        "sample": {"num_samples": 0},
    }


def check_run_readable(run: Path) -> int:
    """Every checkpoint on disk (and the run's config and weights, when present) loads; returns the count."""
    from textdiff import checkpoint as ckpt
    from textdiff import rundir

    if (run / "config.json").exists():
        rundir.read_tokenizer(run, rundir.read_config(run))
    for p in (run / "tokenizer.json", run / "tokenizer_config.json", run / "metrics.jsonl"):
        assert not p.exists() or p.stat().st_size > 0 or p.name == "metrics.jsonl", f"{p} is empty"
    if (run / "model.safetensors").exists():
        ckpt.check_finite(ckpt.load_tensors(run / "model.safetensors"), run / "model.safetensors")
    found = ckpt.list_checkpoints(run)
    for c in found:
        assert ckpt.read_state(c)["step"] == int(c.name.split("_")[1]), c
        for name in ("model", "trainer", "ema"):
            ckpt.load_tensors(c / f"{name}.safetensors")
    return len(found)


def final_state(run: Path) -> dict:
    from textdiff import checkpoint as ckpt

    last = ckpt.list_checkpoints(run)[-1]
    out = {f"final.{k}": v for k, v in ckpt.load_tensors(run / "model.safetensors").items()}
    for name in ("model", "trainer", "ema"):
        out.update({f"{name}.{k}": v for k, v in ckpt.load_tensors(last / f"{name}.safetensors").items() if "rng" not in k})
    out["step"] = ckpt.read_state(last)["step"]
    return out


def _plan(rng: random.Random, mode: str, every: int) -> dict:
    if mode == "step":
        return {"mode": mode, "step": rng.randint(1, 2 * every)}
    if mode == "timer":
        return {"mode": mode}
    if mode in ("first", "resume"):  # first: 2 tokenizer files + config.json; resume: config.json + metrics.jsonl
        return {"mode": mode, "save": 0, "call": rng.randint(1, 3 if mode == "first" else 2),
                "before": rng.random() < 0.5}
    calls = {"file": 4, "rename": 6, "renamed": 6, "prune": 1}[mode]  # 4 safetensors files, 6 renames per save
    return {"mode": mode, "save": rng.randint(1, 2), "call": rng.randint(1, calls)}


def _child(plan: dict, argv: list[str], run: Path, fork: bool, env: dict, delay: float) -> None:
    """Start a training child (os.fork of this process, or a fresh interpreter) and wait for it to be killed."""
    if fork:
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller (or pytest)
            rc = 1
            try:
                log = os.open(run.parent / "children.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(log, 1)
                os.dup2(log, 2)
                rc = child_main(plan, argv)
            finally:
                os._exit(rc)
        reaped: list[int] = []

        def alive() -> bool:
            done, status = os.waitpid(pid, os.WNOHANG)
            reaped.extend([status] if done else [])
            return not done

        wait = lambda: reaped[0] if reaped else os.waitpid(pid, 0)[1]  # noqa: E731
        kill = lambda: reaped or os.kill(pid, signal.SIGKILL)  # noqa: E731
    else:
        with open(run.parent / "children.log", "a") as log:
            proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(plan), *argv], env=env,
                                    stdout=log, stderr=log)
        wait, kill, alive = (lambda: proc.wait()), proc.kill, (lambda: proc.poll() is None)
    if plan["mode"] == "timer":
        started = run / "config.json"
        while not started.exists() and alive():  # imports and data loading are not the interesting moments
            time.sleep(0.01)
        time.sleep(delay)
        kill()
    status = wait()
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL if fork else status == -signal.SIGKILL
    finished = (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0) if fork else status == 0
    if not (finished if plan["mode"] == "none" else killed):
        expected = "exit 0" if plan["mode"] == "none" else "SIGKILL"
        raise RuntimeError(f"the training child ended with status {status}, expected {expected}; plan {plan}; "
                           f"see {run.parent}/children.log")


def soak(kills: int = 20, seed: int = 0, workdir: Path | None = None, fork: bool = True, log=print) -> SoakResult:
    """Kill, check, resume, `kills` times; then finish and compare with an uninterrupted run. `fork`: start each
    training child by forking this process (fast: no imports; the test suite) instead of a fresh interpreter."""
    import torch
    import yaml

    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    t0, rng, result = time.perf_counter(), random.Random(seed), SoakResult()
    work = Path(workdir or tempfile.mkdtemp(prefix="textdiff-soak-"))
    corpus = synthetic_corpus(work / "corpus.jsonl")
    raw = tiny_recipe(corpus, work / "killed", kills)
    every = raw["train"]["checkpoint_every"]
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))

    threads = torch.get_num_threads()
    try:  # the uninterrupted reference, in this process (the recipe pins train.threads: 1, as in the children)
        t = time.perf_counter()
        reference = train_recipe(recipe_from_dict({**raw, "out_dir": str(work / "reference")}), progress=False)
        step_s = (time.perf_counter() - t) / raw["train"]["steps"]
    finally:
        torch.set_num_threads(threads)

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    run = work / "killed"
    modes = [MODES[i % len(MODES)] for i in range(max(kills - 1, 0))]
    rng.shuffle(modes)
    modes = ["first", *modes][:kills]
    note = work / "kill-spots.txt"
    for i, mode in enumerate(modes):
        resume = (run / "config.json").exists()
        mode = "first" if mode == "resume" and not resume else mode
        plan = {**_plan(rng, mode, every), "note": str(note)}
        cadence = ["--set", f"train.log_every={1 + i % 2}"] if mode == "resume" else []  # config.json is rewritten
        argv = ["train", str(recipe), "--no-samples", "--device", "cpu", *(["--resume"] if resume else []), *cadence]
        _child(plan, argv, run, fork, env, rng.uniform(0.0, 2 * every * step_s + 0.05))
        result.kills += 1
        result.resumes += resume
        spots = note.read_text().split() if note.exists() else []
        result.by_mode["timer" if mode == "timer" else spots[-1]] += 1
        if not (run / "config.json").exists() and run.exists():  # killed in the first write: no run yet, and no
            assert not list(run.glob("checkpoints/step_*")), run  # checkpoint without its config
        result.checkpoints_checked += check_run_readable(run)
        shown = json.dumps({k: v for k, v in plan.items() if k != "note"})
        on_disk = ", ".join(p.name for p in sorted((run / "checkpoints").glob("step_*"))) or "none yet"
        log(f"kill {i + 1}/{kills}: {shown}; resumed: {resume}; checkpoints on disk readable ({on_disk})")
    resume = (run / "config.json").exists()
    argv = ["train", str(recipe), "--no-samples", "--device", "cpu", *(["--resume"] if resume else [])]
    _child({"mode": "none", "note": str(note)}, argv, run, fork, env, 0.0)
    result.resumes += resume
    a, b = final_state(reference), final_state(run)
    result.equal = a.keys() == b.keys() and all(
        a[k] == b[k] if k == "step" else torch.equal(a[k], b[k]) for k in a)
    result.seconds = time.perf_counter() - t0
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return result


# --- concurrency: several writers, one directory ---------------------------------------------------------------


def _fork_cli(argv: list[str], log: Path) -> int:
    """Fork this process into `textdiff <argv>` (stdout and stderr into `log`); returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout, sys.stderr = open(1, "w", buffering=1, closefd=False), open(2, "w", buffering=1, closefd=False)
            from textdiff.cli import main as cli

            rc = cli(argv)
        except BaseException:  # a bug, not a refusal: show it in the child's log
            import traceback

            traceback.print_exc()
        finally:
            os._exit(rc)
    return pid


def _exit_code(pid: int) -> int:
    status = os.waitpid(pid, 0)[1]
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


REFUSALS = ("is being written by another textdiff process", "already holds a run")


def _race(argv: list[str], k: int, logs: Path, final_step: int) -> tuple[int, int]:
    """k copies of `textdiff <argv>` at once: (how many trained, how many refused in exactly one line). A resume of
    a run already at its last step exits 0 without training; it counts as neither."""
    pids = [_fork_cli(argv, logs / f"child{i}.log") for i in range(k)]
    trained = refused = 0
    for i, pid in enumerate(pids):
        rc, text = _exit_code(pid), (logs / f"child{i}.log").read_text()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if rc == 2 and len(lines) == 1 and lines[0].startswith("textdiff: error:") and any(r in lines[0] for r in REFUSALS):
            refused += 1
        elif rc == 0 and f"resumed from step {final_step}" in text:
            continue
        elif rc == 0:
            trained += 1
        else:
            raise RuntimeError(f"a concurrent child ended with code {rc}: {text[-400:]}")
    return trained, refused


def race_rounds(rounds: int, work: Path, corpus: Path, rng: random.Random, log=print) -> dict:
    """`rounds` times: 2-4 fresh trainings at once into a new directory (to half the steps), then 2-4 resumes at
    once (to all of them); exactly one trains each time, the others refuse in one line; the directory ends equal,
    bit for bit, to an uninterrupted run."""
    import torch
    import yaml

    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    raw = tiny_recipe(corpus, work / "race-reference", kills=1)
    raw["train"].update(steps=8, checkpoint_every=4)
    threads = torch.get_num_threads()
    try:  # the same two commands, one writer at a time: 4 steps, then --resume to 8 (the schedule follows steps)
        train_recipe(recipe_from_dict({**raw, "train": {**raw["train"], "steps": 4}}), progress=False)
        reference = final_state(train_recipe(recipe_from_dict(raw), resume=True, progress=False))
    finally:
        torch.set_num_threads(threads)
    out = {"rounds": 0, "writers": 0, "refused": 0, "equal": 0}
    for r in range(rounds):
        run, logs = work / f"race{r}", work / f"race{r}-logs"
        logs.mkdir(parents=True)
        half, full = work / f"race{r}-half.yaml", work / f"race{r}-full.yaml"
        half.write_text(yaml.safe_dump({**raw, "out_dir": str(run), "train": {**raw["train"], "steps": 4}}))
        full.write_text(yaml.safe_dump({**raw, "out_dir": str(run)}))
        k1, k2 = rng.randint(2, 4), rng.randint(2, 4)
        first = _race(["train", str(half), "--no-samples", "--device", "cpu"], k1, logs, -1)
        second = _race(["train", str(full), "--no-samples", "--device", "cpu", "--resume"], k2, logs, 8)
        equal = _equal(reference, final_state(run))
        if first != (1, k1 - 1) or second[0] != 1 or not equal:  # _race raised on anything but these outcomes
            raise RuntimeError(f"round {r}: fresh {first} of {k1}, resume {second} of {k2}, equal {equal}; see {logs}")
        out["rounds"] += 1
        out["writers"] += k1 + k2
        out["refused"] += first[1] + second[1]
        out["equal"] += equal
        log(f"race {r + 1}/{rounds}: {k1} fresh at once -> 1 trained, {first[1]} refused; {k2} resumes at once -> "
            f"1 trained, {second[1]} refused; bit-equal to the uninterrupted run: {equal}")
    return out


def _equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(a[k] == b[k] if k == "step" else torch.equal(a[k], b[k]) for k in a)


# --- kills during a new run's first write -------------------------------------------------------------------------


def first_write_rounds(rounds: int, work: Path, corpus: Path, log=print) -> dict:
    """`rounds` new run directories, each killed during its first write (before or after one of the renames of its
    tokenizer files and config.json); the directory is then either no run yet (trained afresh) or a run without a
    checkpoint (resumed from step 0); either way it ends bit-equal to an uninterrupted run."""
    import torch
    import yaml

    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    raw = tiny_recipe(corpus, work / "first-reference", kills=1)
    raw["train"].update(steps=8, checkpoint_every=4)
    threads = torch.get_num_threads()
    try:
        reference = final_state(train_recipe(recipe_from_dict(raw), progress=False))
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = {"rounds": 0, "no_run": 0, "run_without_checkpoint": 0, "equal": 0}
    for r in range(rounds):
        run, recipe = work / f"first{r}", work / f"first{r}.yaml"
        recipe.write_text(yaml.safe_dump({**raw, "out_dir": str(run)}))
        plan = {"mode": "first", "save": 0, "call": 1 + r % 3, "before": (r // 3) % 2 == 0,  # every rename, both sides
                "note": str(work / f"first{r}.spots")}
        argv = ["train", str(recipe), "--no-samples", "--device", "cpu"]
        _child(plan, argv, run, True, env, 0.0)
        if run.exists():
            check_run_readable(run)
        resume = (run / "config.json").exists()
        assert resume or not list(run.glob("checkpoints/step_*")), run
        rc = _exit_code(_fork_cli([*argv, *(["--resume"] if resume else [])], work / f"first{r}.log"))
        equal = rc == 0 and _equal(reference, final_state(run))
        if not equal:
            raise RuntimeError(f"first-write round {r}: exit {rc}, equal {equal}; see {work}/first{r}.log")
        out["rounds"] += 1
        out["run_without_checkpoint" if resume else "no_run"] += 1
        out["equal"] += equal
        log(f"first write {r + 1}/{rounds}: {json.dumps({k: v for k, v in plan.items() if k != 'note'})}; left "
            f"{'a run without checkpoint (resumed)' if resume else 'no run (trained afresh)'}; bit-equal: {equal}")
    return out


# --- a full disk ---------------------------------------------------------------------------------------------------


def _leftover_temps(run: Path) -> list[str]:
    return [str(p.relative_to(run)) for p in run.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


def can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(where)], check=True)
    return ok


def disk_rounds(rounds: int, work: Path, corpus: Path, rng: random.Random, log=print) -> dict:
    """`rounds` trainings into a small tmpfs of a random size (a patched writer raising ENOSPC after a random number
    of writes where tmpfs cannot be mounted): a full disk ends in exit 2 and one line; what is on disk is readable,
    no temporary file is left, and the directory, copied to a roomy disk, resumes (or restarts) bit-exactly."""
    import torch
    import yaml

    from textdiff.config import recipe_from_dict
    from textdiff.training import train_recipe

    raw = tiny_recipe(corpus, work / "disk-reference", kills=1)
    raw["train"].update(steps=8, checkpoint_every=4)
    threads = torch.get_num_threads()
    try:
        reference = final_state(train_recipe(recipe_from_dict(raw), progress=False))
    finally:
        torch.set_num_threads(threads)
    tmpfs = can_mount_tmpfs(work / "probe-mount")
    out = {"rounds": 0, "full": 0, "fit": 0, "equal": 0, "how": "tmpfs" if tmpfs else "patched writer (ENOSPC)"}
    for r in range(rounds):
        mount = work / f"disk{r}"
        mount.mkdir()
        size_kb = rng.randint(4, 160)
        if tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)], check=True)
        run, copy = mount / "run", work / f"disk{r}-copy"
        recipe = work / f"disk{r}.yaml"
        recipe.write_text(yaml.safe_dump({**raw, "out_dir": str(run)}))
        argv = ["train", str(recipe), "--no-samples", "--device", "cpu"]
        pid = _fork_full(argv, work / f"disk{r}.log", None if tmpfs else rng.randint(1, 30))
        rc, text = _exit_code(pid), (work / f"disk{r}.log").read_text()
        errors = [ln for ln in text.splitlines() if ln.startswith("textdiff: error:")]
        if rc not in (0, 2) or (rc == 2 and (len(errors) != 1 or "No space left" not in errors[0])):
            raise RuntimeError(f"disk round {r} ({size_kb} KiB): exit {rc}: {text[-400:]}")
        if run.exists():
            check_run_readable(run)
            assert not _leftover_temps(run), _leftover_temps(run)
            shutil.copytree(run, copy)
        if tmpfs:
            subprocess.run(["umount", str(mount)], check=True)
        resume = (copy / "config.json").exists()
        if rc == 2:
            recipe.write_text(yaml.safe_dump({**raw, "out_dir": str(copy)}))
            again = _fork_cli([*argv, *(["--resume"] if resume else [])], work / f"disk{r}-again.log")
            assert _exit_code(again) == 0, (work / f"disk{r}-again.log").read_text()[-400:]
        equal = _equal(reference, final_state(copy))
        out["rounds"] += 1
        out["full" if rc == 2 else "fit"] += 1
        out["equal"] += equal
        if not equal:
            raise RuntimeError(f"disk round {r}: the run resumed after a full disk differs from the reference")
        where = errors[0].split("could not write ")[-1].split(":")[0] if errors else "-"
        log(f"disk {r + 1}/{rounds}: {size_kb} KiB {out['how']}: "
            + (f"full while writing {Path(where).name}; resumed: {resume}; bit-equal: {equal}" if rc == 2 else
               f"the run fit; bit-equal: {equal}"))
    return out


def _fork_full(argv: list[str], log: Path, fail_after: int | None) -> int:
    """`textdiff <argv>` in a fork; with `fail_after`, that many file writes succeed and the next raises ENOSPC."""
    if fail_after is None:
        return _fork_cli(argv, log)
    import errno

    from textdiff import checkpoint as ckpt

    real_fsync, real_save, calls = os.fsync, ckpt.save_file, [0]

    def counted(real):
        def write(*args, **kwargs):
            calls[0] += 1
            if calls[0] > fail_after:
                raise OSError(errno.ENOSPC, "No space left on device", str(args[1]) if len(args) > 1 else None)
            return real(*args, **kwargs)
        return write

    os.fsync, ckpt.save_file = counted(real_fsync), counted(real_save)
    try:
        return _fork_cli(argv, log)
    finally:
        os.fsync, ckpt.save_file = real_fsync, real_save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill plan")
    parser.add_argument("--keep", help="keep the run directories in this folder")
    parser.add_argument("--spawn", action="store_true", help="start each child as a fresh interpreter instead of a "
                        "fork of this process (slower: every child imports torch again)")
    parser.add_argument("--first", type=int, default=8, help="new runs killed during their first write (0: none)")
    parser.add_argument("--rounds", type=int, default=20, help="concurrency rounds (2-4 writers at once; 0: none)")
    parser.add_argument("--disk", type=int, default=6, help="full-disk rounds (0: none)")
    if len(sys.argv) > 2 and sys.argv[1] == "--child":  # a training child: python soak.py --child PLAN ARGV...
        sys.exit(child_main(json.loads(sys.argv[2]), sys.argv[3:]))
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="textdiff-soak-"))
    (work / "kills").mkdir(parents=True, exist_ok=True)
    result = soak(args.kills, args.seed, work / "kills", fork=not args.spawn)
    print("\n".join(result.lines()))
    rng, corpus = random.Random(args.seed), synthetic_corpus(work / "corpus.jsonl")
    t = time.perf_counter()
    first = first_write_rounds(args.first, work, corpus) if args.first else {}
    if args.first:
        print(f"first write: {first['rounds']} new runs killed during their first write: {first['no_run']} left no "
              f"run (trained afresh), {first['run_without_checkpoint']} a run without a checkpoint (resumed); "
              f"{first['equal']} of {first['rounds']} bit-equal to an uninterrupted run ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    race = race_rounds(args.rounds, work, corpus, rng) if args.rounds else {"rounds": 0}
    if args.rounds:
        print(f"concurrency: {race['rounds']} rounds, {race['writers']} writers started, exactly one trained each "
              f"time, {race['refused']} refused in one line; {race['equal']} of {race['rounds']} directories "
              f"bit-equal to an uninterrupted run ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    disk = disk_rounds(args.disk, work, corpus, rng) if args.disk else {"rounds": 0}
    if args.disk:
        print(f"full disk ({disk['how']}): {disk['rounds']} rounds, {disk['full']} filled up (exit 2, one line, "
              f"every file readable, no temporary file left), {disk['fit']} fit; {disk['equal']} of {disk['rounds']} "
              f"resumed bit-exactly ({time.perf_counter() - t:.0f} s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if result.equal and result.kills == args.kills else 1)


if __name__ == "__main__":
    main()
