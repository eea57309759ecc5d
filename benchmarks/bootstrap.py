"""Paired bootstrap of corpus BLEU between two cached seq2seq evaluations (`textdiff eval --metrics bleu --out X.json`,
which keeps every output), or between one of them and copying the source.

    python benchmarks/bootstrap.py --recipe recipes/kjv-asv/edit.yaml \\
        RUNS/results/kjv-asv-edit-greedy-joint-edits.json RUNS/results/kjv-asv-edit-greedy.json copy

Each system is FILE.json (its first row) or FILE.json:N (row N, e.g. one guidance scale of a sweep) or `copy`; the
first is set against each of the others. The recipe names the data, whose split (the evaluation's own) gives the
references in the order `textdiff eval` generated for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textdiff.config import load_recipe  # noqa: E402
from textdiff.data import load_texts  # noqa: E402
from textdiff.evaluation.seq2seq import grouped_references  # noqa: E402
from textdiff.errors import TextdiffError  # noqa: E402
from textdiff.evaluation.significance import describe, paired_bootstrap  # noqa: E402


def fail(message: str):
    print(f"bootstrap: {message}", file=sys.stderr)
    raise SystemExit(2)


def system(spec: str) -> tuple[str, dict, list[str]]:
    """(name, the evaluation's seq2seq section, its outputs) of FILE.json[:ROW]."""
    path, _, row = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
    try:
        s = json.loads(Path(path).read_text())["seq2seq"]
        outputs = s["rows"][int(row or 0)]["predictions"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        fail(f"{spec}: not a seq2seq evaluation with outputs ({type(e).__name__}: {e})")
    return Path(path).stem + (f":{row}" if row else ""), s, outputs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("systems", nargs="+", help="FILE.json[:ROW] or copy; the first against each of the others")
    p.add_argument("--recipe", required=True, help="the runs' recipe (its data and split give the references)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if len(args.systems) < 2 or args.systems[0] == "copy":
        fail("name an evaluation first and at least one more system (an evaluation or copy)")
    name, first, a = system(args.systems[0])
    try:
        groups = grouped_references(load_texts(load_recipe(args.recipe).data)[first["split"]])
        sources = list(groups)[:len(a)]
        references = [groups[s] for s in sources]
        if (len(sources), sum(map(len, references))) != (first["n_sources"], first["n_references"]):
            fail(f"{args.recipe}: its {first['split']} split does not match {args.systems[0]} ({len(sources)} sources, "
                 f"{sum(map(len, references))} references against {first['n_sources']} and {first['n_references']})")
        for spec in args.systems[1:]:
            other, b = ("copy", sources) if spec == "copy" else system(spec)[::2]
            print(describe(paired_bootstrap(a, b, references, args.resamples, args.seed), name, other))
    except TextdiffError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
