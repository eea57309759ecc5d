"""Every back-end's KJV numbers in one command: trains recipes/kjv/<name>.yaml of every back-end (and the AR
twin) at one budget, then runs `textdiff eval` and `textdiff bench` on them and writes benchmarks/results/kjv.md
with the frontier plot. Resumable: finished runs are reused (benchmarks/kjv_ratio.py's runs, same names and
settings) and every finished evaluation is a JSON file under RUNS/results/ that is not recomputed.

    python benchmarks/run_all.py                                                   # 800 steps, CPU
    python benchmarks/run_all.py --device cuda --steps 3200 --out benchmarks/results/kjv_gpu.md
    python benchmarks/run_all.py --only masked ar --skip throughput               # a subset
    # two halves side by side on a 2-core machine (one thread each), then the report from their cached results:
    OMP_NUM_THREADS=1 python benchmarks/run_all.py --only masked embedding ar --skip report &
    OMP_NUM_THREADS=1 python benchmarks/run_all.py --only simplex simplex-no-selfcond --skip report; wait
    python benchmarks/run_all.py

Each name's frontier covers its back-end's default sampler at every step count (`--all-samplers` for all of
them); the headline table's genppl columns are the 16 / 64 / 256-step points of that frontier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kjv_ratio import RECIPES, run_dir, tok_per_s, train_one  # noqa: E402  (same runs as kjv_ratio.py)
from paths import ROOT, shown, shown_argv, shown_frontier  # noqa: E402

from textdiff.bench.frontier import markdown as frontier_markdown, plot  # noqa: E402
from textdiff.checkpoint import atomic_write_bytes, atomic_write_json  # noqa: E402
from textdiff.cli import main as textdiff  # noqa: E402
from textdiff.config import load_recipe  # noqa: E402
from textdiff.evaluation.perplexity import ppl_text, stderr_text  # noqa: E402
from textdiff.evaluation.report import env_lines  # noqa: E402
from textdiff.noising import BACKENDS  # noqa: E402

GENPPL_STEPS = (16, 64, 256)
# self-conditioning on vs off (issues 3 and 4): the simplex recipe has it on
DEFAULT_VARIANTS = ("simplex-no-selfcond=simplex:model.self_conditioning=false",)
ANCHORS = """Reference implementations in the same setting ([anchors.md]({link}): MDLM's and GPT-2's own code,
800 steps, 2-core CPU; judge SmolLM2-135M on 16 x 128 samples, fp32):

| model | test PPL | ÷ AR | judge PPL / entropy | sampling wall time |
|---|---|---|---|---|
| MDLM (ELBO bound) | 174.2 | 2.75 | 500 / 5.26 @128 steps; 608 / 5.28 @32 steps | 81.5 s @128; 19.5 s @32 |
| GPT-2 (exact, KV cache) | 63.3 | 1 | 155 / 5.23 | 1.56 s |
| real test text | | | 32.6 / 5.37 | |"""


def placed(lines: list[str], folder: Path) -> list[str]:
    """`lines` for a file in `folder`: the ANCHORS paragraph links benchmarks/results/anchors.md from there."""
    anchors, folder = ROOT / "benchmarks/results/anchors.md", folder.resolve()
    inside = folder == ROOT or ROOT in folder.parents  # outside the repository: the repository-relative path
    link = Path(os.path.relpath(anchors, folder)).as_posix() if inside else shown(anchors)
    return [ln.format(link=link) if ln is ANCHORS else ln for ln in lines]


def command() -> str:
    """This call as its results name it: `python benchmarks/run_all.py ARGS`, paths relative (benchmarks/paths.py)."""
    return f"python benchmarks/run_all.py {' '.join(shown_argv(sys.argv[1:]))}"


def cached(path: Path, argv: list[str]) -> dict:
    """Run `textdiff ARGV` (which writes `path`) unless `path` exists; return its JSON."""
    if not path.is_file():
        print(f"\n$ textdiff {' '.join(argv)}", flush=True)
        if textdiff(argv) != 0:
            raise SystemExit(f"run_all: `textdiff {' '.join(argv)}` failed")
    return json.loads(path.read_text())


def evaluate(name: str, family: str, run: Path, res: Path, args) -> dict:
    """The test bound (back-ends that have one) and the run's frontier (judge genppl, entropy and wall time of its
    default sampler at every step count; AR: one KV-cache point), each cached as JSON under `res`."""
    backend = BACKENDS[load_recipe(RECIPES[family]).backend.name]
    out = {"backend": backend.name, "causal": backend.causal, "run": str(run),
           "tok_per_s": tok_per_s(run) if (run / "metrics.jsonl").is_file() else float("nan")}
    if backend.has_bound:
        out["ppl"] = cached(res / f"{name}-ppl.json", ["eval", str(run), "--metrics", "ppl", "--draws", str(args.draws),
                            "--out", str(res / f"{name}-ppl.json"), "--device", args.device, "--seed", "0"])["ppl"]
    steps = sorted(set(args.genppl_steps) | set(map(int, args.frontier_steps.split(","))))
    samplers = [] if args.all_samplers else ["--samplers", backend.default_sampler]
    fdir = res / f"{name}-frontier"
    out["frontier"] = cached(fdir / "frontier.json", ["bench", "frontier", str(run), "--steps", ",".join(map(str, steps)),
                             "--num-samples", str(args.num_samples), "--device", args.device, "--out-dir", str(fdir),
                             *samplers, *(["--judge", args.judge] if args.judge else [])])
    return out


def headline(results: dict[str, dict], steps_list) -> list[str]:
    ar = next((r for r in results.values() if r["causal"]), None)
    masked = results.get("masked")
    head = ["model", "test PPL", "÷ AR", "÷ masked", *[f"genppl / entropy (wall) @{s} steps" for s in steps_list], "train tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        p = r.get("ppl")
        ppl = "no bound" if p is None else f"{p['ppl']:.1f}" if p["ppl"] < 1e6 else ppl_text(p["ppl"])
        if p is not None and not p["exact"]:
            ppl += f" ({stderr_text(False, p['stderr']).strip()} nats/token, {p['time_draws']} draws)"
        ratio = f"{p['ppl'] / ar['ppl']['ppl']:.2f}" if p and ar and not r["causal"] else ""
        to_masked = f"{p['ppl'] / masked['ppl']['ppl']:.2f}" if p and masked and masked.get("ppl") else ""
        points = r["frontier"]["points"]
        if r["causal"]:  # one KV-cache point, shown in every column
            points = [dict(points[0], steps=s) for s in steps_list]
        by_steps = {q["steps"]: q for q in points if q["sampler"] == points[0]["sampler"]}
        cells = [f"{q['genppl']:.1f} / {q['entropy']:.2f} ({q['wall_s']:.1f} s)" if (q := by_steps.get(s)) else ""
                 for s in steps_list]
        sampler = "KV cache" if r["causal"] else points[0]["sampler"]
        lines.append(f"| {name} ({r['backend']}, {sampler}) | {ppl} | {ratio} | {to_masked} | " + " | ".join(cells)
                     + f" | {r['tok_per_s']:,.0f} |")
    ref = next(iter(next(iter(results.values()))["frontier"]["references"].values()), None)
    if ref:
        lines.append("| real test text | | | | " + " | ".join([f"{ref['ppl']:.1f} / {ref['entropy']:.2f}"] * len(steps_list))
                     + " | |")
    return lines


def merged_frontier(results: dict[str, dict]) -> dict:
    """One frontier over every run (for one plot and one table)."""
    parts = [r["frontier"] for r in results.values()]
    merged = dict(parts[0], runs=[run for f in parts for run in f["runs"]], points=[p for f in parts for p in f["points"]],
                  skipped=[s for f in parts for s in f["skipped"]], references={})
    for f in parts:
        merged["references"].update(f["references"])
    merged["steps"] = sorted({s for f in parts for s in f["steps"]})
    return merged


def entries(args) -> dict[str, tuple[str, list[str]]]:
    """name -> (recipe family, overrides): every recipe as written, then the --variant ones."""
    out = {name: (name, []) for name in RECIPES}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        family, _, sets = rest.partition(":")
        if not name or family not in RECIPES or "=" not in sets:
            raise SystemExit(f"run_all: --variant {spec!r}: want NAME=RECIPE:KEY=VALUE[,KEY=VALUE], RECIPE one of "
                             f"{', '.join(RECIPES)}")
        out[name] = (family, sets.split(","))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=800, help="training steps of every recipe (the budget)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", default="runs/bench-kjv", help="where the runs and their evaluations go")
    p.add_argument("--recipes", default=None, help="a folder of <name>.yaml recipes instead of recipes/kjv (smoke runs: "
                   "recipes/tiny)")
    p.add_argument("--variant", action="append", default=None, metavar="NAME=RECIPE:KEY=VALUE[,...]",
                   help="also train RECIPE with these overrides, reported as NAME (default: "
                   f"{' '.join(DEFAULT_VARIANTS)}; give --variant none for none)")
    p.add_argument("--only", nargs="+", help="names to include (recipes and variants; default: every one)")
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "report"])
    p.add_argument("--judge", help="judge for genppl (default: SmolLM2-135M)")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--draws", type=int, default=32, help="time draws per test sequence for ELBO bounds")
    p.add_argument("--genppl-steps", type=int, nargs="+", default=list(GENPPL_STEPS), help="headline table columns")
    p.add_argument("--frontier-steps", default="4,8,16,32,64,128,256")
    p.add_argument("--all-samplers", action="store_true", help="frontier of every sampler of each back-end, not only "
                   "its default one")
    p.add_argument("--throughput-rounds", type=int, default=3, help="interleaved rounds of `textdiff bench throughput`")
    p.add_argument("--throughput-steps", type=int, default=5, help="timed steps per model and round")
    p.add_argument("--from-cache", action="store_true", help="train nothing: write the report from the cached "
                   "evaluations under RUNS/results/ (their run directories may be gone)")
    p.add_argument("--out", default="benchmarks/results/kjv.md")
    p.add_argument("--readme", help="also rewrite the block between the run_all markers (<!-- run_all:start --> ... "
                   "<!-- run_all:end -->) of this markdown file; README.md keeps one hand-made results table instead")
    args = p.parse_args()
    if args.recipes:  # kjv_ratio.train_one reads this dict
        RECIPES.clear()
        RECIPES.update({p.stem: p for p in sorted(Path(args.recipes).glob("*.yaml"))
                        if not load_recipe(p).data.source_field})  # language modelling only, no seq2seq recipes
    if args.variant is None:
        args.variant = [v for v in DEFAULT_VARIANTS if v.partition(":")[0].partition("=")[2] in RECIPES]
    args.variant = [v for v in args.variant if v != "none"]
    todo = entries(args)
    unknown = set(args.only or []) - set(todo)
    if unknown:
        raise SystemExit(f"run_all: no recipe or variant {', '.join(sorted(unknown))}; have {', '.join(todo)}")
    runs, out = Path(args.runs), Path(args.out)
    res = runs / "results" / f"{args.steps}"
    res.mkdir(parents=True, exist_ok=True)
    names = args.only or list(todo)
    if args.from_cache:  # only the cached evaluations under RUNS/results/ (a run directory may be gone)
        trained = {name: run_dir(todo[name][0], args.steps, runs, todo[name][1]) for name in names}
    else:
        trained = {name: train_one(todo[name][0], args.steps, runs, args.device, todo[name][1]) for name in names}
    results = {name: evaluate(name, todo[name][0], run, res, args) for name, run in trained.items()}
    if "report" in args.skip:  # a partial job (e.g. one of two run side by side); a later full call writes the report
        return
    first = load_recipe(RECIPES[todo[names[0]][0]])
    batch, length = first.train.batch_size, first.data.max_length
    variants = [f"{n} = {todo[n][0]} with {', '.join(todo[n][1])}" for n in names if todo[n][1]]
    lines = [f"# KJV: every back-end beside the AR baseline ({time.strftime('%Y-%m-%d')})", "",
             *env_lines(next(iter(results.values()))["frontier"]), "",  # where the samples were drawn
             f"Budget: {args.steps} steps of batch {batch} x {length} tokens ({args.steps * batch * length / 1e6:.2f}M "
             f"tokens) per recipe in {shown(Path(next(iter(RECIPES.values()))).parent)}/"
             + (f" (variants: {'; '.join(variants)})" if variants else "") + f". Test PPL: ELBO bound (time draws "
             f"per sequence as shown, ± Monte Carlo standard error) or exact for AR. genppl: {args.num_samples} "
             f"samples x {length} tokens from the back-end's default sampler (AR: its KV cache), seed 0, fp32, scored "
             f"by the judge, token-weighted, in the judge's tokens; entropy: unigram, nats, over the run's BPE ids of "
             f"all samples; wall: sampling time of all {args.num_samples}. train tok/s: from each run's log (runs may "
             f"have shared the machine; `textdiff bench throughput` measures side by side). "
             f"Command: `{command()}`", "",
             *headline(results, args.genppl_steps), "", ANCHORS]
    if "throughput" not in args.skip:
        cached(res / "throughput.json", ["bench", "throughput", "--device", args.device, "--rounds", str(args.throughput_rounds),
                                         "--steps", str(args.throughput_steps), "--out", str(res / "throughput.json")])
        lines += ["", "## Training throughput", "", (res / "throughput.md").read_text().split("\n\n", 2)[-1].strip()]
    fdir = out.parent / f"{out.stem}_frontier"
    fdir.mkdir(parents=True, exist_ok=True)
    merged = shown_frontier(merged_frontier(results))
    atomic_write_json(fdir / "frontier.json", merged)
    atomic_write_bytes(fdir / "frontier.md", "\n".join(["# Sampling frontier", "", *frontier_markdown(merged)]).encode() + b"\n")
    plot(merged, fdir / "frontier.png")
    frontier_lines = lambda base: ["", "Sampling frontier (judge perplexity and entropy against wall time, one curve per "  # noqa: E731
                                   "back-end; the AR model's KV-cache sampling and real text are the lines):", "",
                                   f"![frontier]({base}/frontier.png)", "", f"Every point: [{base}/frontier.md]({base}/frontier.md)."]
    atomic_write_bytes(out, ("\n".join(placed(lines, out.parent) + frontier_lines(fdir.name)) + "\n").encode())
    print("\n".join(placed(lines, out.parent)))
    print(f"\nwrote {out}")
    if args.readme:
        readme = Path(args.readme)
        rel = lambda p: Path(os.path.relpath(p, readme.parent)).as_posix()  # noqa: E731
        update_readme(readme, "\n".join([f"Written by `{command()}`; the full "
                                         f"report is [{rel(out)}]({rel(out)}).", *placed(lines, readme.parent)[2:],
                                         *frontier_lines(rel(fdir))]))
        print(f"updated the results block of {readme}")


README_BLOCK = ("<!-- run_all:start -->", "<!-- run_all:end -->")


def update_readme(readme: Path, body: str) -> None:
    """Replace what lies between the README's run_all markers with `body` (atomically)."""
    start, end = README_BLOCK
    text = readme.read_text()
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"run_all: {readme} needs one {start} ... {end} block for --readme")
    head, rest = text.split(start)
    atomic_write_bytes(readme, (head + start + "\n" + body + "\n" + end + rest.split(end)[1]).encode())


if __name__ == "__main__":
    main()
