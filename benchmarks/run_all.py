"""Every KJV number of the README in one command: trains recipes/kjv/<name>.yaml of every back-end (and the AR
twin) at one budget, then runs `textdiff eval` and `textdiff bench` on them and writes benchmarks/results/kjv.md
with the frontier plot. Resumable: finished runs are reused (benchmarks/kjv_ratio.py's runs, same names and
settings) and every finished evaluation is a JSON file under RUNS/results/ that is not recomputed.

    TEXTDIFF_DATA_DIR=../shared/data python benchmarks/run_all.py                  # 800 steps, CPU
    python benchmarks/run_all.py --device cuda --steps 3200 --out benchmarks/results/kjv_gpu.md
    python benchmarks/run_all.py --only masked ar --skip frontier                  # a subset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kjv_ratio import RECIPES, tok_per_s, train_one  # noqa: E402  (same runs as kjv_ratio.py)

from textdiff.cli import main as textdiff  # noqa: E402
from textdiff.config import load_recipe  # noqa: E402
from textdiff.evaluation.report import env_lines, environment  # noqa: E402
from textdiff.noising import BACKENDS  # noqa: E402

GENPPL_STEPS = (16, 64, 256)
ANCHORS = """Reference implementations in the same setting (from ../shared/anchors.md: MDLM's and GPT-2's own code,
800 steps, 2-core CPU; judge SmolLM2-135M on 16 x 128 samples, fp32):

| model | test PPL | ÷ AR | judge PPL / entropy | sampling wall time |
|---|---|---|---|---|
| MDLM (ELBO bound) | 174.2 | 2.75 | 500 / 5.26 @128 steps; 608 / 5.28 @32 steps | 81.5 s @128; 19.5 s @32 |
| GPT-2 (exact, KV cache) | 63.3 | 1 | 155 / 5.23 | 1.56 s |
| real test text | | | 32.6 / 5.37 | |"""


def cached(path: Path, argv: list[str]) -> dict:
    """Run `textdiff ARGV` (which writes `path`) unless `path` exists; return its JSON."""
    if not path.is_file():
        print(f"\n$ textdiff {' '.join(argv)}", flush=True)
        if textdiff(argv) != 0:
            raise SystemExit(f"run_all: `textdiff {' '.join(argv)}` failed")
    return json.loads(path.read_text())


def evaluate(name: str, run: Path, res: Path, args) -> dict:
    backend = BACKENDS[load_recipe(RECIPES[name]).backend.name]
    common = ["--device", args.device, "--seed", "0"]
    out = {"backend": backend.name, "causal": backend.causal, "tok_per_s": tok_per_s(run), "genppl": {}}
    if backend.has_bound:
        out["ppl"] = cached(res / f"{name}-ppl.json", ["eval", str(run), "--metrics", "ppl", "--draws",
                            str(args.draws), "--out", str(res / f"{name}-ppl.json"), *common])["ppl"]
    for steps in ([None] if backend.causal else args.genppl_steps):
        tag = "kv" if steps is None else steps
        path = res / f"{name}-genppl-{tag}.json"
        argv = ["eval", str(run), "--metrics", "genppl", "--num-samples", str(args.num_samples), "--out", str(path),
                *common, *(["--steps", str(steps)] if steps else []), *(["--judge", args.judge] if args.judge else [])]
        out["genppl"][tag] = cached(path, argv)["genppl"]
    return out


def headline(results: dict[str, dict], steps_list) -> list[str]:
    ar = next((r for r in results.values() if r["causal"]), None)
    head = ["model", "test PPL", "÷ AR", *[f"genppl / entropy (wall) @{s} steps" for s in steps_list], "train tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        p = r.get("ppl")
        ppl = "no bound" if p is None else f"{p['ppl']:.1f}" + ("" if p["exact"] else f" (± {p['stderr']:.4f} nats/token)")
        ratio = f"{p['ppl'] / ar['ppl']['ppl']:.2f}" if p and ar and not r["causal"] else ""
        gen = [r["genppl"].get("kv") or r["genppl"].get(s) for s in steps_list]
        cells = [f"{g['samples']['ppl']:.1f} / {g['samples']['entropy']:.2f} ({g['sample_seconds']:.1f} s)" if g else ""
                 for g in gen]
        lines.append(f"| {name} ({r['backend']}) | {ppl} | {ratio} | " + " | ".join(cells) + f" | {r['tok_per_s']:,.0f} |")
    ref = next(iter(next(iter(results.values()))["genppl"].values()))["reference"]
    if ref:
        lines.append(f"| real test text | | | " + " | ".join([f"{ref['ppl']:.1f} / {ref['entropy']:.2f}"] * len(steps_list))
                     + " | |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=800, help="training steps of every recipe (the budget)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", default="runs/bench-kjv", help="where the runs and their evaluations go")
    p.add_argument("--recipes", default=None, help="a folder of <name>.yaml recipes instead of recipes/kjv (smoke runs: "
                   "recipes/tiny)")
    p.add_argument("--only", nargs="+", help="recipe names to include (default: every one)")
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "frontier"])
    p.add_argument("--judge", help="judge for genppl (default: SmolLM2-135M)")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--draws", type=int, default=32, help="time draws per test sequence for ELBO bounds")
    p.add_argument("--genppl-steps", type=int, nargs="+", default=list(GENPPL_STEPS))
    p.add_argument("--frontier-steps", default="4,8,16,32,64,128,256")
    p.add_argument("--out", default="benchmarks/results/kjv.md")
    args = p.parse_args()
    if args.recipes:  # kjv_ratio.train_one reads this dict
        RECIPES.clear()
        RECIPES.update({p.stem: p for p in sorted(Path(args.recipes).glob("*.yaml"))})
    unknown = set(args.only or []) - set(RECIPES)
    if unknown:
        raise SystemExit(f"run_all: no recipe {', '.join(sorted(unknown))}; have {', '.join(RECIPES)}")
    runs, out = Path(args.runs), Path(args.out)
    res = runs / "results" / f"{args.steps}"
    res.mkdir(parents=True, exist_ok=True)
    trained = {name: train_one(name, args.steps, runs, args.device, []) for name in args.only or RECIPES}
    results = {name: evaluate(name, run, res, args) for name, run in trained.items()}
    first = load_recipe(RECIPES[next(iter(trained))])
    batch, length = first.train.batch_size, first.data.max_length
    lines = [f"# KJV: every back-end beside the AR baseline ({time.strftime('%Y-%m-%d')})", "",
             *env_lines(environment(args.device)), "",
             f"Budget: {args.steps} steps of batch {batch} x {length} tokens ({args.steps * batch * length / 1e6:.2f}M "
             f"tokens) per recipe in {Path(next(iter(RECIPES.values()))).parent}/. Test PPL: ELBO bound ({args.draws} time draws) or exact for AR. genppl: "
             f"{args.num_samples} samples x {length} tokens scored by the judge (default sampler of each back-end; AR "
             f"with its KV cache), token-weighted, in the judge's tokens; entropy: unigram, nats, over the run's BPE "
             f"ids of all samples. Command: `python benchmarks/run_all.py {' '.join(sys.argv[1:])}`", "",
             *headline(results, args.genppl_steps), "", ANCHORS]
    if "throughput" not in args.skip:
        cached(res / "throughput.json", ["bench", "throughput", "--device", args.device, "--out", str(res / "throughput.json")])
        lines += ["", "## Training throughput", "", (res / "throughput.md").read_text().split("\n\n", 2)[-1].strip()]
    if "frontier" not in args.skip:
        fdir = out.parent / f"{out.stem}_frontier"
        cached(fdir / "frontier.json", ["bench", "frontier", *map(str, trained.values()), "--steps", args.frontier_steps,
                                        "--num-samples", str(args.num_samples), "--device", args.device,
                                        "--out-dir", str(fdir), *(["--judge", args.judge] if args.judge else [])])
        lines += ["", "## Sampling frontier", "", f"![frontier]({fdir.name}/frontier.png)", "",
                  f"Every point: [{fdir.name}/frontier.md]({fdir.name}/frontier.md)."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
