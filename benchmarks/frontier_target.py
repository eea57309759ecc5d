"""Block diffusion's sampling target (issue 33) read off a judged frontier.json: every diffusion point's wall time
and judge perplexity as multiples of the AR point's, its entropy against real text's, and the cheapest point inside
the window (judge PPL at most `--ppl-factor` x AR's, unigram entropy within `--entropy-tolerance` of real text's).

    python benchmarks/frontier_target.py benchmarks/results/block_frontier_cpu/frontier.json

Several frontiers of the same points at other seeds (`textdiff bench frontier --seed S`) are pooled, since 16
judged samples are noisy: each point's ratios are taken per frontier against that frontier's own AR point and real
text, then combined (wall time: the median ratio; judge PPL: the geometric mean ratio, i.e. the mean log-PPL;
entropy: the mean ratio), the window is applied to the pooled ratios, and the table says in how many seeds the
point alone lay inside. Points not drawn in every frontier are left out and named.

Prints a markdown table (cheapest first) and one line naming the cheapest point in the window, or saying there is
none; --out writes both to a file too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(res: dict, ppl_factor: float, tolerance: float) -> tuple[list[dict], dict, float]:
    """(diffusion points with their ratios and window flag, cheapest first; the AR point; real text's entropy)."""
    ar = [p for p in res["points"] if p["causal"]]
    if len(ar) != 1:
        raise ValueError(f"expected one AR point, found {len(ar)}")
    if any(p.get("genppl") is None for p in res["points"]):
        raise ValueError("this frontier is not judged yet (textdiff bench judge FRONTIER.json)")
    ar, = ar
    real = next(iter(res["references"].values()))["entropy"]
    out = []
    for p in res["points"]:
        if p["causal"]:
            continue
        ok = p["genppl"] <= ppl_factor * ar["genppl"] and abs(p["entropy"] / real - 1.0) <= tolerance
        out.append({**p, "wall_x": p["wall_s"] / ar["wall_s"], "ppl_x": p["genppl"] / ar["genppl"],
                    "entropy_x": p["entropy"] / real, "in_window": ok})
    return sorted(out, key=lambda p: p["wall_s"]), ar, real


def _key(p: dict) -> tuple:
    return p.get("run"), p["sampler"], p["steps"], p.get("options") or ""


def pooled(frontiers: list[dict], ppl_factor: float, tolerance: float) -> tuple[list[dict], list[dict], list[tuple]]:
    """(each point's pooled ratios and window flags, cheapest first; each frontier's AR point; points left out)."""
    import math
    import statistics

    per = [rows(res, ppl_factor, tolerance) for res in frontiers]
    keys = [{_key(p): p for p in points} for points, _, _ in per]
    common = [k for k in keys[0] if all(k in other for other in keys[1:])]
    out = []
    for k in common:
        seen = [other[k] for other in keys]
        wall_x = statistics.median(p["wall_x"] for p in seen)
        ppl_x = math.exp(statistics.fmean(math.log(p["ppl_x"]) for p in seen))
        entropy_x = statistics.fmean(p["entropy_x"] for p in seen)
        out.append({**seen[0], "wall_x": wall_x, "ppl_x": ppl_x, "entropy_x": entropy_x,
                    "genppl": math.exp(statistics.fmean(math.log(p["genppl"]) for p in seen)),
                    "entropy": statistics.fmean(p["entropy"] for p in seen),
                    "wall_s": statistics.median(p["wall_s"] for p in seen),
                    "in_window": ppl_x <= ppl_factor and abs(entropy_x - 1.0) <= tolerance,
                    "seeds_in": sum(p["in_window"] for p in seen)})
    left = sorted({k for other in keys for k in other} - set(common), key=str)
    return sorted(out, key=lambda p: p["wall_x"]), [ar for _, ar, _ in per], left


def report(frontiers: dict | list[dict], ppl_factor: float = 2.0, tolerance: float = 0.02) -> list[str]:
    frontiers = [frontiers] if isinstance(frontiers, dict) else list(frontiers)
    n = len(frontiers)
    points, ars, left = pooled(frontiers, ppl_factor, tolerance)
    real = [next(iter(res["references"].values()))["entropy"] for res in frontiers]
    if n == 1:
        ar, = ars
        lines = [f"AR: {ar['wall_s']:.2f} s, judge PPL {ar['genppl']:.1f}, entropy {ar['entropy']:.3f}; real text "
                 f"entropy {real[0]:.3f}. Window: judge PPL <= {ppl_factor:g} x AR's ({ppl_factor * ar['genppl']:.1f}), "
                 f"entropy {real[0] * (1 - tolerance):.3f}-{real[0] * (1 + tolerance):.3f}.", ""]
    else:
        seeds = ", ".join(str(res.get("seed", "?")) for res in frontiers)
        ppls = ", ".join(f"{ar['genppl']:.1f}" for ar in ars)
        walls = ", ".join(f"{ar['wall_s']:.2f}" for ar in ars)
        reals = ", ".join(f"{r:.3f}" for r in real)
        lines = [f"{n} frontiers pooled (seeds {seeds}). AR per seed: judge PPL {ppls}, wall s {walls}; real text "
                 f"entropy {reals}. Window on the pooled ratios: judge PPL "
                 f"<= {ppl_factor:g} x AR's, entropy within {tolerance:.0%} of real text's. Judge PPL and entropy "
                 "below are the geometric / arithmetic means over the seeds, wall s the median.", ""]
    seeds_col = n > 1
    lines += ["| sampler | steps / block | options | NFE | wall s | / AR wall | judge PPL | / AR PPL | entropy | "
              "/ real | in window |" + (" seeds in window |" if seeds_col else ""),
              "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if seeds_col else "")]
    for p in points:
        lines.append(f"| {p['sampler']} | {p['steps']} | {p.get('options') or '-'} | {p.get('nfe', '')} | "
                     f"{p['wall_s']:.2f} | {p['wall_x']:.2f} | {p['genppl']:,.1f} | {p['ppl_x']:.2f} | "
                     f"{p['entropy']:.3f} | {p['entropy_x']:.3f} | {'yes' if p['in_window'] else 'no'} |"
                     + (f" {p['seeds_in']}/{n} |" if seeds_col else ""))
    best = next((p for p in points if p["in_window"]), None)
    lines.append("")
    lines.append(f"Cheapest in the window: {best['sampler']} at {best['steps']} steps per block "
                 f"({best.get('options') or 'defaults'}), {best['wall_x']:.2f} x AR's wall time."
                 if best else "No point lies in the window.")
    if left:
        lines.append("")
        lines.append("Not in every frontier, left out: " + "; ".join(
            f"{sampler} {steps} {options or '-'}" for _, sampler, steps, options in left) + ".")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("frontier", nargs="+", help="judged frontier.json files (textdiff bench frontier), one per seed")
    p.add_argument("--ppl-factor", type=float, default=2.0, dest="ppl_factor")
    p.add_argument("--entropy-tolerance", type=float, default=0.02, dest="tolerance")
    p.add_argument("--out", help="also write the report here")
    args = p.parse_args(argv)
    frontiers = []
    for path in args.frontier:
        try:
            frontiers.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            print(f"frontier_target: cannot read {path}: {e}", file=sys.stderr)
            return 2
    try:
        text = "\n".join(report(frontiers, args.ppl_factor, args.tolerance)) + "\n"
    except (ValueError, KeyError, TypeError) as e:
        print(f"frontier_target: {', '.join(args.frontier)}: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        command = " ".join(["python benchmarks/frontier_target.py", *(argv if argv is not None else sys.argv[1:])])
        Path(args.out).write_text(f"# Block diffusion's sampling target on {', '.join(args.frontier)}\n\n"
                                  f"Command: `{command}`\n\n"
                                  + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
