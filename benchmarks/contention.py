"""Training beside a busy process (issue 32.9): seconds per quickstart training step, side by side.

    python benchmarks/contention.py              # ~5 minutes on 2 cores; run it on an otherwise quiet machine
    python benchmarks/contention.py --steps 10 --recipe recipes/tiny/masked.yaml     # a quick look

Rows, each a fresh interpreter training `--steps` steps of the recipe (its model, batch and data; no evaluation or
checkpoint), timing every step and reporting the median after the first two:
- alone:                 nothing else running, textdiff's defaults;
- busy, before:          beside one busy single-threaded process, as textdiff ran before the fix: torch's own thread
                         count (every core) and OpenMP's default wait policy (threads spin on the shared core);
- busy, textdiff now:    beside it, with the defaults `textdiff train` has now: OMP_WAIT_POLICY=PASSIVE set before
                         torch starts, and train.threads=0 meaning the free cores (textdiff.resources);
- busy, threads=1:       beside it, with train.threads=1 on the free core (the issue's reference point).
The ratios are to `alone` and to `busy, threads=1` (the done-when: the default within 2x of the latter).
Time is only compared within one run of this script, on one machine: the table names it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY = {"python": "while True: pass",  # one pure-Python loop
        "torch": "import torch\ntorch.set_num_threads(1)\nx = torch.randn(512, 512)\nwhile True: x = torch.tanh(x @ x)"}
BUSY_WORDS = {"python": "one pure-Python loop", "torch": "one single-threaded torch matmul loop"}
ROWS = [("alone", False, "PASSIVE", "auto"), ("busy, before", True, None, "torch"),
        ("busy, textdiff now", True, "PASSIVE", "auto"), ("busy, threads=1", True, "PASSIVE", "1")]


def child(recipe: str, steps: int, threads: str, out_dir: str) -> None:
    """In a fresh interpreter: train `steps` steps, print {"median_s": ..., "threads": ...} as the last line."""
    import torch

    from textdiff import training
    from textdiff.config import load_recipe

    times, real = [], training.Trainer.train_step

    def timed(self, step):
        t0 = time.perf_counter()
        out = real(self, step)
        times.append(time.perf_counter() - t0)
        return out

    training.Trainer.train_step = timed
    n = {"torch": torch.get_num_threads(), "auto": 0, "1": 1}[threads]  # "torch": the count torch picks itself
    overrides = [f"train.steps={steps}", f"train.threads={n}", "train.eval_every=0", f"train.checkpoint_every={steps}",
                 f"out_dir={out_dir}", "sample.num_samples=0"]
    training.train_recipe(load_recipe(recipe, overrides), progress=False)
    kept = sorted(times[2:] or times)
    print(json.dumps({"median_s": kept[len(kept) // 2], "threads": torch.get_num_threads()}))


def measure(recipe: str, steps: int, busy: str | None, policy: str | None, threads: str, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    hog = subprocess.Popen([sys.executable, "-c", BUSY[busy]]) if busy else None
    try:
        if hog is not None:
            time.sleep(2.0)  # the competitor is running (and counted in /proc/loadavg) before training starts
        out = work / f"run-{time.time_ns()}"
        proc = subprocess.run([sys.executable, __file__, "--child", recipe, str(steps), threads, str(out)], env=env,
                              capture_output=True, text=True, cwd=ROOT)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        raise SystemExit(f"contention: a training child failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=20, help="training steps per row (the first two are not timed)")
    parser.add_argument("--busy", choices=sorted(BUSY), default="python",
                        help="the competitor: a pure-Python loop, or a single-threaded torch loop (like `textdiff eval "
                             "--threads 1`)")
    parser.add_argument("--out", help="also write the markdown table here")
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:3], int(sys.argv[3]), *sys.argv[4:6])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="textdiff-contention-") as tmp:
        res = {name: measure(args.recipe, args.steps, args.busy if busy else None, policy, threads, Path(tmp))
               for name, busy, policy, threads in ROWS}
    alone, one = res["alone"]["median_s"], res["busy, threads=1"]["median_s"]
    lines = [f"# Training beside a busy process ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/contention.py --recipe {args.recipe} --steps {args.steps} --busy {args.busy}` on "
             f"{platform.node()}: "
             f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch threads as shown; the busy "
             f"process: {BUSY_WORDS[args.busy]}.", "",
             "| row | OMP_WAIT_POLICY | torch threads | s / step | × alone | × busy, threads=1 |", "|---|---|---|---|---|---|"]
    for name, _, policy, _ in ROWS:
        r = res[name]
        lines.append(f"| {name} | {policy or '(unset)'} | {r['threads']} | {r['median_s']:.3f} | "
                     f"{r['median_s'] / alone:.1f} | {r['median_s'] / one:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
