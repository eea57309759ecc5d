"""Block diffusion's sampling target (issue 33) read off a judged frontier.json: every diffusion point's wall time
and judge perplexity as multiples of the AR point's, its entropy against real text's, and the cheapest point inside
the window (judge PPL at most `--ppl-factor` x AR's, unigram entropy within `--entropy-tolerance` of real text's).

    python benchmarks/frontier_target.py benchmarks/results/block_frontier_cpu/frontier.json

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


def report(res: dict, ppl_factor: float = 2.0, tolerance: float = 0.02) -> list[str]:
    points, ar, real = rows(res, ppl_factor, tolerance)
    lines = [f"AR: {ar['wall_s']:.2f} s, judge PPL {ar['genppl']:.1f}, entropy {ar['entropy']:.3f}; real text entropy "
             f"{real:.3f}. Window: judge PPL <= {ppl_factor:g} x AR's ({ppl_factor * ar['genppl']:.1f}), entropy "
             f"{real * (1 - tolerance):.3f}-{real * (1 + tolerance):.3f}.", "",
             "| sampler | steps / block | options | NFE | wall s | / AR wall | judge PPL | / AR PPL | entropy | "
             "/ real | in window |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['sampler']} | {p['steps']} | {p.get('options') or '-'} | {p.get('nfe', '')} | "
                     f"{p['wall_s']:.2f} | {p['wall_x']:.2f} | {p['genppl']:,.1f} | {p['ppl_x']:.2f} | "
                     f"{p['entropy']:.3f} | {p['entropy_x']:.3f} | {'yes' if p['in_window'] else 'no'} |")
    best = next((p for p in points if p["in_window"]), None)
    lines.append("")
    lines.append(f"Cheapest in the window: {best['sampler']} at {best['steps']} steps per block "
                 f"({best.get('options') or 'defaults'}), {best['wall_x']:.2f} x AR's wall time."
                 if best else "No point lies in the window.")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("frontier", help="a judged frontier.json (textdiff bench frontier)")
    p.add_argument("--ppl-factor", type=float, default=2.0, dest="ppl_factor")
    p.add_argument("--entropy-tolerance", type=float, default=0.02, dest="tolerance")
    p.add_argument("--out", help="also write the report here")
    args = p.parse_args(argv)
    try:
        res = json.loads(Path(args.frontier).read_text())
    except (OSError, ValueError) as e:
        print(f"frontier_target: cannot read {args.frontier}: {e}", file=sys.stderr)
        return 2
    try:
        text = "\n".join(report(res, args.ppl_factor, args.tolerance)) + "\n"
    except (ValueError, KeyError, TypeError) as e:
        print(f"frontier_target: {args.frontier}: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        command = " ".join(["python benchmarks/frontier_target.py", *(argv if argv is not None else sys.argv[1:])])
        Path(args.out).write_text(f"# Block diffusion's sampling target on {args.frontier}\n\nCommand: `{command}`\n\n"
                                  + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
