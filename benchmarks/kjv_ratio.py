"""Masked diffusion vs the AR baseline on KJV, in the setting of benchmarks/results/anchors.md.

Trains recipes/kjv/masked.yaml and recipes/kjv/ar.yaml (6 x 384 x 6, byte-level BPE 8192, packed 128, batch 32)
at 800 steps x each budget multiplier, then prints test-split ELBO perplexity (with its Monte Carlo standard
error, 32 time draws per sequence, fp32, every full test sequence), the AR model's exact perplexity and their
ratio. Like for like: both sides score the same tokens, every position of every full test sequence (the AR model
predicts each sequence's first token after an [EOS] start, `backend.start_token`); the ratio row names the count
and the script stops if the two differ (an AR run from before `backend.start_token` scores one token fewer per
sequence: retrain it). With --grid, both families are first trained at 1x for every (lr, dropout) in a small grid, each picks
its best by *validation* bound, and the budgets run with those settings (the same search for both).
Runs write a checkpoint every quarter of their steps: run again with the same arguments, a finished run is
reused and an interrupted one goes on from its newest checkpoint.

    python benchmarks/kjv_ratio.py --budgets 1 --out benchmarks/results/kjv_cpu.md
    python benchmarks/kjv_ratio.py --device cuda --grid --budgets 1 4 --out benchmarks/results/kjv_gpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from paths import shown_argv
from textdiff.checkpoint import list_checkpoints, read_state
from textdiff.config import load_recipe
from textdiff.config import read_yaml as load_recipe_yaml
from textdiff.evaluation import perplexity
from textdiff.pipeline import TextDiffusionPipeline
from textdiff.rundir import read_recipe, same_recipe
from textdiff.training import train_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {p.stem: p for p in sorted((ROOT / "recipes/kjv").glob("*.yaml"))  # one per back-end; ar.yaml is the AR twin
           if "backbone" not in ((load_recipe_yaml(p) or {}).get("model") or {})}  # pretrained ones: benchmarks/pretrained.py


saved_recipe = read_recipe  # the recipe a run was trained with, from its config.json


def trained_steps(run: Path) -> int:
    """The step of the run's newest checkpoint; 0 when it has none."""
    found = list_checkpoints(run)
    return read_state(found[-1])["step"] if found else 0


def run_dir(family: str, steps: int, runs: Path, extra: list[str]) -> Path:
    """Where train_one puts (or finds) the run of `family` at `steps` with overrides `extra`."""
    return runs / "-".join([f"{family}-{steps}"] + [s.split(".")[-1].replace("=", "") for s in extra])


def train_one(family: str, steps: int, runs: Path, device: str, extra: list[str]) -> Path:
    out = run_dir(family, steps, runs, extra)
    overrides = [f"train.steps={steps}", f"out_dir={out}", f"train.eval_every={max(steps // 4, 1)}",
                 f"train.checkpoint_every={max(steps // 4, 1)}", *extra]
    recipe = load_recipe(RECIPES[family], overrides)
    if (out / "config.json").is_file() and same_recipe(out, recipe):
        done = trained_steps(out)
        if done >= steps:
            print(f"reusing {out}")
            return out
        if done:  # an interrupted run (a 4x run is hours on a CPU) goes on from its newest checkpoint
            print(f"resuming {out} from step {done}")
            train_recipe(recipe, resume=True, device=device, progress=False)
            return out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    train_recipe(recipe, device=device, progress=False)
    return out


def has_bound(family: str) -> bool:
    from textdiff.noising import BACKENDS

    return BACKENDS[load_recipe(RECIPES[family]).backend.name].has_bound


def evaluate(run: Path, split: str, device: str, draws: int):
    """The split's likelihood (None for a back-end without a bound)."""
    pipe = TextDiffusionPipeline.from_pretrained(run, device=device)
    if not pipe.backend.has_bound:
        return None
    return perplexity(pipe, split, time_draws=draws, batch_size=32, progress=False)


def tok_per_s(run: Path) -> float:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["tok_per_s"] for r in rows if "tok_per_s" in r][-1]


def val_curve(run: Path) -> str:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return " → ".join(f"{r['val_nll']:.2f}" for r in rows if "val_nll" in r)


def grid_search(runs: Path, device: str, base: int, families: list[str], grid: list[tuple[float, float]],
                common: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    best, lines = {}, ["| family | lr | dropout | validation nats/token |", "|---|---|---|---|"]
    for family in families:
        scores = []
        if not has_bound(family):  # no validation bound to choose by: the recipe's own settings
            best[family] = list(common)
            continue
        for lr, dropout in grid:
            extra = [*common, f"train.lr={lr}", f"model.dropout={dropout}"]
            run = train_one(family, base, runs, device, extra)
            val = evaluate(run, "validation", device, draws=8).nats_per_token
            scores.append((val, extra))
            lines.append(f"| {family} | {lr:g} | {dropout} | {val:.4f} |")
            print(lines[-1], flush=True)
        best[family] = min(scores)[1]
    print("\n".join(lines))
    return best, lines


def ratio_rows(steps: int, res: dict) -> list[str]:
    """The `family ÷ AR` rows of one budget; each pair must have scored the same test tokens."""
    ar, rows = res.get("ar"), []
    for family, r in res.items():
        if family == "ar" or r is None or ar is None:
            continue
        if r.n_tokens != ar.n_tokens:
            sys.exit(f"kjv_ratio: {family} scored {r.n_tokens:,} test tokens and AR {ar.n_tokens:,}: not like for like "
                     "(an AR run from before backend.start_token? retrain it)")
        rows.append(f"| {steps} steps | **ratio {family} ÷ AR** | both over the same {r.n_tokens:,} test tokens | | "
                    f"**{r.ppl / ar.ppl:.2f}** | | | |")
        print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 4], help="multiples of the 800-step budget")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", default="runs/bench-kjv", help="where the runs go")
    p.add_argument("--grid", action="store_true", help="pick lr and dropout per family on validation first")
    p.add_argument("--set", action="append", default=[], help="override for both recipes, e.g. train.lr=1e-3")
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 2e-3], help="learning rates for --grid")
    p.add_argument("--dropouts", type=float, nargs="+", default=[0.1, 0.0], help="dropouts for --grid")
    p.add_argument("--families", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--base-steps", type=int, default=800, help="the 1x budget in steps (800 in "
                   "benchmarks/results/anchors.md)")
    p.add_argument("--draws", type=int, default=32, help="time draws per test sequence for the ELBO")
    p.add_argument("--out", help="write the markdown table here")
    args = p.parse_args()
    runs = Path(args.runs)
    settings = {f: list(args.set) for f in args.families}
    header = [f"# KJV: diffusion back-ends vs AR ({time.strftime('%Y-%m-%d')})", "",
              f"Machine: {platform.processor() or platform.machine()}, "
              f"{torch.cuda.get_device_name() if args.device == 'cuda' else f'{torch.get_num_threads()} CPU threads'}; "
              f"torch {torch.__version__}. Command: `python benchmarks/kjv_ratio.py {' '.join(shown_argv(sys.argv[1:]))}`", ""]
    if args.grid:
        settings, grid_lines = grid_search(runs, args.device, args.base_steps, args.families,
                                           [(lr, d) for lr in args.lrs for d in args.dropouts], args.set)
        header += ["Grid at 800 steps (validation ELBO / exact NLL, 8 draws):", "", *grid_lines, ""]
    lines = ["| budget | model | settings | test nats/token | test PPL | nats/word | train tok/s | validation curve |",
             "|---|---|---|---|---|---|---|---|"]
    for mult in args.budgets:
        steps = args.base_steps * mult
        res = {}
        for family in args.families:
            run = train_one(family, steps, runs, args.device, settings[family])
            res[family] = r = evaluate(run, "test", args.device, args.draws)
            if r is None:
                lines.append(f"| {steps} steps | {family} | {' '.join(settings[family]) or 'recipe'} | no bound | | | "
                             f"{tok_per_s(run):,.0f} | |")
                continue
            se = "" if r.exact else f" ± {r.stderr:.3f}"
            lines.append(f"| {steps} steps ({steps * 32 * 128 / 1e6:.2f}M tokens) | {family} | "
                         f"{' '.join(settings[family]) or 'recipe'} | {r.nats_per_token:.3f}{se} | {r.ppl:.1f} | "
                         f"{r.nats_per_word:.3f} | {tok_per_s(run):,.0f} | {val_curve(run)} |")
            print(lines[-1], flush=True)
        lines += ratio_rows(steps, res)
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
