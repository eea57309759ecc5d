"""Control success of classifier guidance on E2E: trains recipes/e2e/lm-masked.yaml (an unconditional masked model
of E2E sentences), a noisy-state classifier of one slot of the meaning representation (default food: Chinese /
English / none), then samples steered toward each class at several guidance scales and counts the samples that
name their class. Scale 0 is unguided sampling, the base rate. Resumable: the run and the classifier are reused.

    python benchmarks/e2e_control.py --out benchmarks/results/e2e_control_cpu.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paths import shown, shown_argv
from textdiff.cli import main as textdiff

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str]) -> None:
    print(f"\n$ textdiff {' '.join(argv)}", flush=True)
    if textdiff(argv) != 0:
        raise SystemExit(f"e2e_control: `textdiff {' '.join(argv)}` failed")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(ROOT / "recipes/e2e/lm-masked.yaml"))
    p.add_argument("--runs", default="runs/e2e-control")
    p.add_argument("--label", default="mr:food")
    p.add_argument("--classifier-steps", default="600")
    p.add_argument("--scales", default="0,1,3,10,30")
    p.add_argument("--num-samples", default="64", help="samples per class and scale")
    p.add_argument("--steps", default="64", help="sampling steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/e2e_control_cpu.md")
    args = p.parse_args()
    runs = Path(args.runs)
    lm = runs / "lm"
    if not (lm / "model.safetensors").is_file():
        run(["train", args.recipe, "--set", f"out_dir={lm}", "--no-samples", "--device", args.device])
    clf = runs / f"classifier-{args.label.replace(':', '-')}"
    if not (clf / "classifier.json").is_file():
        run(["classifier", str(lm), "--label", args.label, "--steps", args.classifier_steps, "--out", str(clf),
             "--device", args.device])
    result = runs / "control.json"
    run(["eval", str(lm), "--metrics", "control", "--classifier", str(clf), "--classifier-scale", args.scales,
         "--num-samples", args.num_samples, "--steps", args.steps, "--device", args.device, "--out", str(result)])
    report = result.with_suffix(".md").read_text()
    rows = json.loads(result.read_text())["control"]["rows"]
    examples = [f"- scale {r['scale']:g}, toward {t}: \"{x}\"" for r in rows for t, x in r["examples"].items()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# E2E: control success of classifier guidance\n\nCommand: `python benchmarks/e2e_control.py "
                   f"{' '.join(shown_argv(sys.argv[1:]))}`; recipe {shown(Path(args.recipe).resolve())}, classifier "
                   f"{args.classifier_steps} steps on `{args.label}`, {args.steps} sampling steps (the recipe's "
                   f"sampler).\n\n" + report.split("\n", 2)[2] + "\nFirst sample per class and scale:\n\n"
                   + "\n".join(examples) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
