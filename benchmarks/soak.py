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
The first five are SIGKILLs the child sends itself from a patched function (`child_main`), so they land exactly
where asked; the process dies the same way as from outside: no cleanup, no flush, no exception handlers.
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
MODES = ("step", "file", "rename", "renamed", "prune", "timer")
SPOTS = (*MODES, "after-save")  # after-save: a planned spot that never came (nothing to prune yet, ...)


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

    def armed():  # inside the planned checkpoint write
        return mode in ("file", "rename", "renamed", "prune") and saves[0] == plan["save"]

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
        fire = armed() and mode in ("rename", "renamed") and hit()
        if fire and mode == "rename":
            die("rename")
        real_replace(src, dst)
        if fire:
            die("renamed")

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
        rundir.read_config(run)
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
    modes = [MODES[i % len(MODES)] for i in range(kills)]
    rng.shuffle(modes)
    note = work / "kill-spots.txt"
    for i, mode in enumerate(modes):
        plan = {**_plan(rng, mode, every), "note": str(note)}
        resume = (run / "config.json").exists()
        argv = ["train", str(recipe), "--no-samples", "--device", "cpu", *(["--resume"] if resume else [])]
        _child(plan, argv, run, fork, env, rng.uniform(0.0, 2 * every * step_s + 0.05))
        result.kills += 1
        result.resumes += resume
        spots = note.read_text().split() if note.exists() else []
        result.by_mode["timer" if mode == "timer" else spots[-1]] += 1
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill plan")
    parser.add_argument("--keep", help="keep the run directories in this folder")
    parser.add_argument("--spawn", action="store_true", help="start each child as a fresh interpreter instead of a "
                        "fork of this process (slower: every child imports torch again)")
    if len(sys.argv) > 2 and sys.argv[1] == "--child":  # a training child: python soak.py --child PLAN ARGV...
        sys.exit(child_main(json.loads(sys.argv[2]), sys.argv[3:]))
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    result = soak(args.kills, args.seed, Path(args.keep) if args.keep else None, fork=not args.spawn)
    print("\n".join(result.lines()))
    sys.exit(0 if result.equal and result.kills == args.kills else 1)


if __name__ == "__main__":
    main()
