"""Validation curves of run directories side by side, read from their metrics.jsonl: the held-out loss the trainer
logs every train.eval_every steps (the ELBO / exact NLL in nats per token on train.eval_batches batches of the
validation split), for runs finished or stopped early (the table says which).

    python benchmarks/val_curves.py runs/bench-kjv/masked-800 runs/bench-kjv/embedding-800* --out curves.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paths import shown_argv
from textdiff.checkpoint import atomic_write_bytes


def curve(run: Path) -> tuple[dict[int, float], int, int, float]:
    """({step: validation nats/token}, steps trained, steps planned, last logged train tok/s)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    planned = json.loads((run / "config.json").read_text())["recipe"]["train"]["steps"]
    speed = [r["tok_per_s"] for r in rows if "tok_per_s" in r]
    return ({r["step"]: r["val_nll"] for r in rows if "val_nll" in r}, max((r["step"] for r in rows), default=0),
            planned, speed[-1] if speed else float("nan"))


def table(runs: list[Path]) -> list[str]:
    curves = {run: curve(run) for run in runs}
    steps = sorted({s for c, *_ in curves.values() for s in c})
    head = ["run", "trained / planned steps", *[f"step {s}" for s in steps], "train tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, (c, done, planned, speed) in curves.items():
        cells = [f"{c[s]:.3f}" if s in c else "" for s in steps]
        lines.append(f"| {run.name} | {done} / {planned}{'' if done >= planned else ' (stopped)'} | "
                     + " | ".join(cells) + f" | {speed:,.0f} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (those without metrics.jsonl are skipped)")
    p.add_argument("--title", default="Validation curves")
    p.add_argument("--out", help="also write the markdown here")
    args = p.parse_args()
    runs = [r for r in args.runs if (r / "metrics.jsonl").is_file() and (r / "config.json").is_file()]
    if not runs:
        raise SystemExit("val_curves: no run directory with metrics.jsonl and config.json among the arguments")
    lines = [f"# {args.title}", "", "Validation nats per token (ELBO bound for diffusion, exact NLL for AR) logged "
             "during training on train.eval_batches batches of the validation split. Command: "
             f"`python benchmarks/val_curves.py {' '.join(shown_argv(sys.argv[1:]))}`", "", *table(runs)]
    print("\n".join(lines))
    if args.out:
        atomic_write_bytes(Path(args.out), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
