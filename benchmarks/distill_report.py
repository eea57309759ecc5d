"""The distillation frontier as a results file: judge perplexity and entropy of a teacher and of each of its
students (`textdiff distill`, stage k samples in steps_start / 2**k steps) at every step count, and the fewest
steps at which a student stays within the target of the teacher at its full steps (issue: >= 4x fewer steps at
<= 10 % worse judge perplexity, entropy within 2 %).

    python benchmarks/distill_report.py RUNS/distill/masked-frontier/frontier.json \
        RUNS/distill/embedding-frontier/frontier.json --out benchmarks/results/kjv_distill.md

Each frontier.json is `textdiff bench frontier TEACHER STAGE1 ... --samplers S` (judged; `benchmarks/device_suite.sh`
draws them and `textdiff bench judge` scores them); the student directories' config.json hold their lineage.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from paths import shown
from textdiff.checkpoint import atomic_write_bytes
from textdiff.evaluation.report import env_lines

PPL_SLACK, ENTROPY_SLACK = 1.10, 0.02


def label(run: str) -> str:
    """'teacher' or 'stage k'."""
    name = Path(run).name
    return f"stage {name[5:]}" if name.startswith("stage") and name[5:].isdigit() else "teacher"


def grid(res: dict) -> dict[str, dict[int, dict]]:
    """{model label: {steps: point}}, teacher first, then the stages in order."""
    out: dict[str, dict[int, dict]] = {}
    for p in res["points"]:
        out.setdefault(label(p["run"]), {})[p["steps"]] = p
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "teacher", kv[0])))


def within(p: dict, ref: dict) -> bool:
    return p["genppl"] <= PPL_SLACK * ref["genppl"] and abs(p["entropy"] - ref["entropy"]) <= ENTROPY_SLACK * ref["entropy"]


def section(res: dict, steps_start: int, name: str) -> list[str]:
    g = grid(res)
    steps = sorted({s for pts in g.values() for s in pts})
    ref = g["teacher"].get(steps_start)
    head = ["steps", *g]
    lines = [f"## {name}: teacher at {steps_start} steps and its students", "",
             "judge perplexity / unigram entropy (nats); **bold**: within the target of the teacher at "
             f"{steps_start} steps (genppl ≤ {PPL_SLACK:.2f} ×, entropy within {ENTROPY_SLACK:.0%}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in steps:
        cells = []
        for pts in g.values():
            p = pts.get(s)
            cell = f"{p['genppl']:.1f} / {p['entropy']:.2f}" if p else ""
            cells.append(f"**{cell}**" if p and ref and within(p, ref) else cell)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if ref:
        ok = [(s, m) for m, pts in g.items() if m != "teacher" for s, p in pts.items() if within(p, ref)]
        teacher_ok = [s for s, p in g["teacher"].items() if within(p, ref)]
        if ok:
            s, m = min(ok)
            lines += ["", f"Fewest steps within the target: {m} at {s} steps, {steps_start / s:g}× fewer than the "
                          f"teacher's {steps_start} (the teacher alone stays within it down to {min(teacher_ok)} steps)."]
        else:
            lines += ["", f"No student stays within the target of the teacher at {steps_start} steps."]
    return lines


def settings(lineage: dict) -> dict:
    """The knobs of a stage's lineage record, without its per-stage outcome."""
    per_stage = {"stage", "steps", "teacher_steps", "teacher", "held_out_loss_before", "held_out_loss_after"}
    return {k: v for k, v in lineage.items() if k not in per_stage}


def stages(res: dict) -> list[str]:
    """One line per student: the held-out loss it was trained on (teacher as student -> student) and its judge
    perplexity beside the teacher's at the same step count, the distillation's own gain."""
    g, lines = grid(res), []
    for run in res["runs"]:
        if label(run) == "teacher":
            continue
        rec = json.loads((Path(run) / "config.json").read_text()).get("distillation", {})
        line = f"- {label(run)}"
        if "held_out_loss_before" in rec:
            line += (f" ({rec['teacher_steps']} -> {rec['steps']} steps): held-out distillation loss "
                     f"{rec['held_out_loss_before']:.4g} (teacher as student) -> {rec['held_out_loss_after']:.4g}")
        for s, p in sorted(g[label(run)].items(), reverse=True):
            t = g["teacher"].get(s)
            if t:
                line += (f"; at {s} steps judge perplexity {p['genppl']:.1f} vs the teacher's {t['genppl']:.1f} "
                         f"({p['genppl'] / t['genppl'] - 1:+.1%})")
        lines.append(line)
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("frontiers", nargs="+", help="judged frontier.json files, one per teacher")
    p.add_argument("--out", default="benchmarks/results/kjv_distill.md")
    args = p.parse_args()
    out = Path(args.out)
    lines = ["# Fewer sampling steps by distillation (KJV)", ""]
    for path in map(Path, args.frontiers):
        res = json.loads(path.read_text())
        if res.get("judge") == "none":
            raise SystemExit(f"distill_report: {path} is not judged yet; run `textdiff bench judge {path}` first")
        stage1 = json.loads((Path(next(r for r in res["runs"] if label(r) == "stage 1")) / "config.json").read_text())
        lineage = stage1.get("distillation", {})
        steps_start = 2 * stage1["recipe"]["sample"]["steps"]
        teacher = next(r for r in res["runs"] if label(r) == "teacher")
        plot = out.with_name(f"{out.stem}_{Path(teacher).name}.png")
        if path.with_suffix(".png").is_file():
            shutil.copyfile(path.with_suffix(".png"), plot)
        lines += [*section(res, steps_start, f"{res['points'][0]['backend']} ({res['points'][0]['sampler']})"), "",
                  *stages(res), "",
                  f"Teacher `{shown(teacher)}`; distillation settings: `{json.dumps(settings(lineage))}`. "
                  f"{res['num_samples']} samples per point, seed {res['seed']}, judge {shown(res['judge'])}.",
                  *env_lines(res), "", f"![frontier]({plot.name})", ""]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    print("\n".join(lines) + f"\nwrote {out}")


if __name__ == "__main__":
    main()
