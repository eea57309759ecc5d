"""Conditional generation tables: BLEU and ROUGE-L of every back-end beside the AR baseline, at matched size and
budget, one table per task: E2E (630 test MRs, each scored against all its references) and KJV -> ASV (2,803 test
verses, beside the copy-the-input baseline). Trains recipes/<task>/<backend>.yaml (reusing a finished run trained
with the same recipe), then `textdiff eval --metrics bleu,rouge` on the test split:

- greedy rows: the recipe's sampler at temperature 0, swept over the classifier-free guidance scale (--guidance);
- an MBR row: --mbr candidates per source drawn at --mbr-temperature, the one of highest expected BLEU kept.

Every evaluation is cached as JSON under RUNS/results/ (with its predictions), so the command resumes, and parts
can run side by side (`--only e2e/masked kjv-asv/ar --skip report`) before one `--from-cache` call writes the tables.

    python benchmarks/seq2seq.py --device cuda --batch-size 512      # E2E needs $TEXTDIFF_DATA_DIR (data/e2e/)
    python benchmarks/seq2seq.py --from-cache --runs runs/seq2seq          # the tables from cached evaluations
    python benchmarks/seq2seq.py --tasks e2e --only e2e/masked --set train.steps=20 --max-sources 20 --runs /tmp/s
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kjv_ratio import same_recipe, saved_recipe, tok_per_s  # noqa: E402
from paths import shown, shown_argv  # noqa: E402

from textdiff.checkpoint import atomic_write_bytes  # noqa: E402
from textdiff.cli import main as textdiff  # noqa: E402
from textdiff.config import load_recipe  # noqa: E402
from textdiff.data import load_texts  # noqa: E402
from textdiff.evaluation.report import env_lines  # noqa: E402
from textdiff.evaluation.seq2seq import grouped_references, unchanged  # noqa: E402
from textdiff.evaluation.significance import describe, paired_bootstrap  # noqa: E402
from textdiff.noising import BACKENDS  # noqa: E402
from textdiff.training import train_recipe  # noqa: E402

TASKS = {"e2e": "E2E NLG (meaning representation -> sentence), test split", "kjv-asv": "KJV -> ASV verse revision, test split"}
ORDER = ("masked", "embedding", "simplex", "uniform", "edit", "ar")
TARGET = 0.95
"""The issue's bar: the best diffusion back-end's BLEU at least this fraction of the AR baseline's."""


def recipes(root: Path, task: str) -> dict[str, Path]:
    """backend name -> recipe of `task`, in ORDER (recipes of back-ends not registered are left out)."""
    found = {p.stem: p for p in (root / task).glob("*.yaml") if p.stem in BACKENDS}
    return {name: found[name] for name in ORDER if name in found}


def train(recipe_path: Path, out: Path, device: str, overrides: list[str]) -> Path:
    recipe = load_recipe(recipe_path, [f"out_dir={out}", *overrides])
    if (out / "model.safetensors").is_file() and same_recipe(out, recipe):
        print(f"reusing {out}", flush=True)
        return out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    print(f"training {recipe_path} -> {out}", flush=True)
    train_recipe(recipe, device=device, progress=False)
    return out


def cached(path: Path, argv: list[str], from_cache: bool = False) -> dict | None:
    """Run `textdiff ARGV` (which writes `path`) unless `path` exists; return its JSON (None: not cached and
    `from_cache`)."""
    if not path.is_file():
        if from_cache:
            return None
        print(f"\n$ textdiff {' '.join(argv)}", flush=True)
        if textdiff(argv) != 0:
            raise SystemExit(f"seq2seq: `textdiff {' '.join(argv)}` failed")
    return json.loads(path.read_text())


def trained_for_guidance(run: Path) -> bool:
    """The run saw the null condition in training (train.cond_dropout > 0), so classifier-free guidance applies
    (the edit back-end's recipes drop no source; `textdiff eval` refuses ω > 0 for them)."""
    return (run / "config.json").is_file() and saved_recipe(run).train.cond_dropout > 0


def evaluations(task: str, name: str, run: Path, res: Path, args) -> dict:
    """The greedy (guidance sweep) and MBR evaluations of one run, cached under `res` (with --from-cache, those
    that exist)."""
    causal = BACKENDS[name].causal
    common = ["eval", str(run), "--metrics", "bleu,rouge", "--split", "test", "--device", args.device, "--seed", "0",
              "--batch-size", str(args.batch_size), *(["--max-sequences", str(args.max_sources)] if args.max_sources else [])]
    copy = ["--copy-baseline"] if task == "kjv-asv" and name == ORDER[0] else []
    greedy = ["--guidance-scale", args.guidance] if not causal and trained_for_guidance(run) else []
    todo = {"greedy": (res / f"{task}-{name}-greedy.json", [*common, *greedy, *copy, "--temperature", "0"])}
    for sampler in ([] if causal else args.samplers):  # more greedy rows, each with another sampler of the back-end
        if sampler in BACKENDS[name].samplers:
            todo[f"greedy, {sampler}"] = (res / f"{task}-{name}-greedy-{sampler}.json",
                                          [*common, *greedy, "--sampler", sampler, "--temperature", "0"])
    for extra in ([] if causal else args.greedy_args):  # more greedy rows with other sampling options
        tag = "".join(c if c.isalnum() or c in ".-" else "_" for c in extra.replace("--", "").replace(" ", ""))
        todo[f"greedy, {extra}"] = (res / f"{task}-{name}-greedy-{tag}.json",
                                    [*common, *greedy, *shlex.split(extra), "--temperature", "0"])
    if args.mbr > 1:
        todo["mbr"] = (res / f"{task}-{name}-mbr{args.mbr}.json",
                       [*common, "--mbr", str(args.mbr), "--temperature", str(args.mbr_temperature)])
    out = {}
    for kind, (path, argv) in todo.items():
        try:
            out[kind] = cached(path, [*argv, "--out", str(path)], args.from_cache)
        except SystemExit as e:  # an extra row's options refused by this back-end (textdiff printed why): no row
            if not kind.startswith("greedy, --"):
                raise
            print(f"{e}; no '{kind}' row for {name}", flush=True)
    return {kind: e for kind, e in out.items() if e is not None}


def rows(name: str, ev: dict, run: Path, sources: list[str] | None = None) -> list[dict]:
    """One row per (evaluation, guidance scale); with the sources, the share of outputs equal to their source (read
    from the evaluation, or counted from its predictions where an older evaluation lacks it)."""
    speed = tok_per_s(run) if (run / "metrics.jsonl").is_file() else float("nan")
    out = []
    for kind, e in ev.items():
        for r in e["seq2seq"]["rows"]:
            same = (r["unchanged"] if "unchanged" in r else unchanged(r["predictions"], sources[:len(r["predictions"])])
                    ) if sources is not None else None
            out.append({"model": name, "causal": BACKENDS[name].causal, "kind": kind.split(",")[0], "machine": e.get("machine", ""),
                        **r["settings"], "bleu": r["bleu"]["score"], "unchanged": same,
                        "rouge": r["rouge"]["score"], "seconds": r["seconds"], "tok_per_s": speed,
                        "bleu_signature": r["bleu"]["signature"], "rouge_signature": r["rouge"]["signature"],
                        "predictions": r.get("predictions")})
    return out


def sampler_cell(r: dict) -> str:
    """The sampler, with its semi-autoregressive blocks, confidence threshold and joint edits where they were set."""
    extras = [f"blocks of {r['block_size']}" if r.get("block_size") else "",
              f"threshold {r['threshold']:g}" if r.get("threshold") else "", "joint edits" if r.get("joint_edits") else ""]
    return ", ".join([r["sampler"], *filter(None, extras)])


def significance(best: dict, ar: dict, sources: list[str] | None, references: list[list[str]]) -> list[str]:
    """Paired bootstrap lines: the best diffusion row against the best AR row and, with the sources, copying."""
    n = len(best["predictions"])
    others = [("AR", ar["predictions"])] if ar["predictions"] and len(ar["predictions"]) == n else []
    others += [("copy", sources[:n])] if sources is not None else []
    return [f"Paired bootstrap (1,000 resamples of the {n} sources, BLEU): "
            + "; ".join(describe(paired_bootstrap(best["predictions"], outputs, references[:n]), best["model"], name)
                        for name, outputs in others) + "."] if others else []


def table(task: str, results: dict[str, dict], runs: dict[str, Path], sources: list[str] | None = None,
          references: list[list[str]] | None = None) -> list[str]:
    """The task's table; with `sources` (tasks beside the copy baseline) a column of the outputs equal to their
    source, and the best diffusion row set against copying; with the `references` of the sources too, a paired
    bootstrap of the best diffusion row against the best AR row (and copying), where the evaluations kept their
    outputs."""
    first = next(e for ev in results.values() for e in ev.values())["seq2seq"]
    sources = sources if "copy" in first else None
    all_rows = [row for name, ev in results.items() for row in rows(name, ev, runs[name], sources)]
    ar = max((r["bleu"] for r in all_rows if r["causal"]), default=None)
    ratio = lambda bleu: f"{bleu / ar:.2f}" if ar else ""  # noqa: E731
    machines = sorted({r["machine"] for r in all_rows})
    head = ["model", "decoding", "sampler", "steps", "ω", "MBR", "temperature", "BLEU", "÷ AR", "ROUGE-L",
            *(["= source"] if sources is not None else []), "generation s", "train tok/s",
            *(["machine"] if len(machines) > 1 else [])]
    mixed = (" The rows were computed on different machines (machine column); budgets are counted in steps, so only the "
             "wall times and tok/s depend on it.") if len(machines) > 1 else ""
    lines = [f"{TASKS[task]}: {first['n_sources']} sources, {first['n_references']} references.{mixed}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if "copy" in first:
        bleu, rouge = first["copy"]["bleu"]["score"], first["copy"]["rouge"]["score"]
        lines.append(f"| copy the input | | | | | | | {bleu:.2f} | {ratio(bleu)} | {rouge:.2f} | 100% | | |")
    for r in all_rows:
        steps, omega = ("", "") if r["causal"] else (r["steps"], f"{r['guidance_scale']:g}")
        same = f"{r['unchanged']:.1f}% | " if sources is not None else ""
        lines.append(f"| {r['model']} | {r['kind']} | {sampler_cell(r)} | {steps} | {omega} | {r['mbr']} | "
                     f"{r['temperature']:g} | {r['bleu']:.2f} | {ratio(r['bleu'])} | {r['rouge']:.2f} | {same}"
                     f"{r['seconds']:.1f} | {r['tok_per_s']:,.0f} |" + (f" {r['machine']} |" if len(machines) > 1 else ""))
    diffusion = [r for r in all_rows if not r["causal"]]
    if diffusion and ar:
        best = max(diffusion, key=lambda r: r["bleu"])
        verdict = "meets" if best["bleu"] >= TARGET * ar else "misses"
        lines += ["", f"Best diffusion row: {best['model']} ({best['kind']}, {sampler_cell(best)}, ω {best['guidance_scale']:g}) at BLEU "
                      f"{best['bleu']:.2f} = {best['bleu'] / ar:.2f} × the AR baseline's {ar:.2f}; it {verdict} the "
                      f"{TARGET}× target."]
        if sources is not None:
            copy = first["copy"]["bleu"]["score"]
            lines[-1] += (f" Copying the source scores {copy:.2f}: the row is {best['bleu'] - copy:+.2f} BLEU from it, "
                          f"with {best['unchanged']:.1f}% of its outputs equal to their source.")
        if references is not None and best["predictions"]:
            ar_row = next(r for r in all_rows if r["causal"] and r["bleu"] == ar)
            lines += ["", *significance(best, ar_row, sources, references)]
    lines += ["", f"BLEU: `{all_rows[0]['bleu_signature']}`; ROUGE-L: `{all_rows[0]['rouge_signature']}`."]
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--only", nargs="+", help="TASK/BACKEND names to include (default: every recipe of every task)")
    p.add_argument("--recipes", default="recipes", help="folder holding <task>/<backend>.yaml")
    p.add_argument("--runs", default="runs/seq2seq", help="where the runs and their evaluations go")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", action="append", default=[], help="recipe override for every run, e.g. train.steps=20")
    p.add_argument("--guidance", default="0,1", help="classifier-free guidance scales of the greedy rows")
    p.add_argument("--samplers", type=lambda v: [x for x in v.split(",") if x], default=[],
                   help="comma-separated samplers for extra greedy rows of the back-ends that have them "
                        "(e.g. ancestral: the masked back-end's random reveal order beside its recipe's confidence)")
    p.add_argument("--greedy-args", action="append", default=[], dest="greedy_args",
                   help="`textdiff eval` sampling options for one more greedy row of each diffusion back-end, "
                        "written with '=' since they start with dashes: --greedy-args='--threshold 0.9', "
                        "--greedy-args=--joint-edits (repeatable)")
    p.add_argument("--mbr", type=int, default=8, help="candidates per source of the MBR row (1: no MBR row)")
    p.add_argument("--mbr-temperature", type=float, default=0.7, dest="mbr_temperature")
    p.add_argument("--batch-size", type=int, default=256, dest="batch_size", help="sequences per generation batch")
    p.add_argument("--max-sources", type=int, default=0, dest="max_sources", help="evaluate the first N sources only")
    p.add_argument("--skip", nargs="*", default=[], choices=["report"])
    p.add_argument("--from-cache", action="store_true", help="train and evaluate nothing: tables from cached JSON")
    p.add_argument("--out-dir", default="benchmarks/results", dest="out_dir", help="writes <task><suffix>.md here")
    p.add_argument("--suffix", default="", help="appended to each table's file name, e.g. _masked_cpu")
    args = p.parse_args()
    runs, res = Path(args.runs), Path(args.runs) / "results"
    res.mkdir(parents=True, exist_ok=True)
    todo = {task: recipes(Path(args.recipes), task) for task in args.tasks}
    names = {f"{t}/{n}" for t, rs in todo.items() for n in rs}
    if set(args.only or []) - names:
        raise SystemExit(f"seq2seq: no recipe for {', '.join(sorted(set(args.only) - names))}; have {', '.join(sorted(names))}")
    for task, rs in todo.items():
        picked = {n: r for n, r in rs.items() if not args.only or f"{task}/{n}" in args.only}
        run_dirs = {n: runs / f"{task}-{n}" for n in picked}
        if not args.from_cache:
            for n, r in picked.items():
                train(r, run_dirs[n], args.device, args.set)
        results = {n: evaluations(task, n, run_dirs[n], res, args) for n in picked}
        missing = [f"{n} ({', '.join(k for k in ('greedy', 'mbr') if k not in ev and (k == 'greedy' or args.mbr > 1))})"
                   for n, ev in results.items() if "greedy" not in ev or (args.mbr > 1 and "mbr" not in ev)]
        results = {n: ev for n, ev in results.items() if ev}
        if "report" in args.skip or not results:
            continue
        recipe = load_recipe(rs[next(iter(picked))])
        copied = any("copy" in e["seq2seq"] for ev in results.values() for e in ev.values())  # the sources are needed
        groups = grouped_references(load_texts(recipe.data)["test"])  # {source: references}, in `textdiff eval`'s order
        budget = (f"{recipe.train.steps} steps of batch {recipe.train.batch_size} x {recipe.data.max_length} tokens, "
                  f"{recipe.model.n_layer} x {recipe.model.n_embd} x {recipe.model.n_head} every model")
        lines = [f"# {TASKS[task]}: every back-end beside the AR baseline ({time.strftime('%Y-%m-%d')})", "",
                 *env_lines(next(e for ev in results.values() for e in ev.values())), "",  # where they were evaluated
                 f"Recipes: `{shown(Path(args.recipes) / task)}/*.yaml` ({budget}{'; overrides ' + ', '.join(args.set) if args.set else ''}). "
                 f"greedy: temperature 0, one output per source, swept over ω (classifier-free guidance; the "
                 f"diffusion models dropped the source w.p. train.cond_dropout); "
                 + (f"MBR: {args.mbr} candidates at temperature {args.mbr_temperature:g}, the one of highest "
                    f"expected BLEU against the others. " if args.mbr > 1 else "no MBR rows. ")
                 + f"Command: `python benchmarks/seq2seq.py {shlex.join(shown_argv(sys.argv[1:]))}`"
                 + (" (the tables from evaluations cached by earlier calls, e.g. the s2s-* jobs of "
                    "`benchmarks/device_suite.sh`)" if args.from_cache else ""), "",
                 *table(task, results, run_dirs, list(groups) if copied else None, list(groups.values())),
                 *(["", f"Not evaluated (no cached result): {'; '.join(missing)}."] if missing else [])]
        out = Path(args.out_dir) / f"{task.replace('-', '_')}{args.suffix}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
        print("\n".join(lines) + f"\n\nwrote {out}")


if __name__ == "__main__":
    main()
