"""Does a seq2seq back-end learn to use its source, and how fast? A synthetic word cipher, small enough for a laptop
CPU: the target is the source with each word w_i replaced by its partner v_i (40 words, 4-10 per pair, 4,000
training pairs, no third-party text). A model that reads its source reaches BLEU 100; one that ignores it guesses
words uniformly (validation near ln 40 nats per word). Each variant trains a 2 x 128 x 2 model (aligned rotary
positions, segments, condition dropout 0.1) for each step count, then greedy BLEU on the 100 test pairs at ω 0.

    python benchmarks/source_use.py --out benchmarks/results/source_use_cpu.md
    python benchmarks/source_use.py --variants masked embedding embedding-no-prior --steps 400 --runs /tmp/su

Variants: a back-end name, or `embedding-no-prior` (the embedding back-end with backend.output_prior false; the
embedding variants use recipes/e2e/embedding.yaml's back-end settings).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kjv_ratio import same_recipe, tok_per_s  # noqa: E402

from textdiff.checkpoint import atomic_write_bytes  # noqa: E402
from textdiff.cli import main as textdiff  # noqa: E402
from textdiff.config import recipe_from_dict  # noqa: E402
from textdiff.evaluation.report import env_lines, environment  # noqa: E402
from textdiff.noising import BACKENDS  # noqa: E402
from textdiff.training import train_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = 40


def write_pairs(path: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = []
    for split, n in (("train", 4000), ("validation", 100), ("test", 100)):
        for _ in range(n):
            ids = [rng.randrange(WORDS) for _ in range(rng.randint(4, 10))]
            rows.append({"src": " ".join(f"w{i}" for i in ids), "tgt": " ".join(f"v{i}" for i in ids), "split": split})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def backend_settings(variant: str) -> dict:
    if not variant.startswith("embedding"):
        return {"name": variant}
    settings = yaml.safe_load((ROOT / "recipes/e2e/embedding.yaml").read_text())["backend"]
    return {**settings, "output_prior": variant != "embedding-no-prior"}


def recipe(variant: str, pairs: Path, out: Path, steps: int, device: str) -> dict:
    causal = variant == "ar"
    return {
        "name": f"source-use-{variant}", "out_dir": str(out),
        "data": {"path": str(pairs), "text_field": "tgt", "source_field": "src", "split_field": "split",
                 "mode": "pad", "pad_in_loss": True, "max_length": 24},
        "tokenizer": {"kind": "wordlevel", "vocab_size": 128, "min_frequency": 1},
        "model": {"n_layer": 2, "n_embd": 128, "n_head": 2, "segments": not causal, "aligned_positions": not causal},
        "backend": backend_settings(variant),
        "train": {"steps": steps, "batch_size": 64, "lr": 1e-3, "warmup_steps": 20,
                  "precision": "bf16" if device == "cpu" else "fp32", "eval_every": steps, "eval_batches": 2,
                  "checkpoint_every": steps, "log_every": 100, "seed": 0, "cond_dropout": 0.0 if causal else 0.1},
        "sample": {"steps": 16, "num_samples": 1},
    }


def last_validation(run: Path) -> float:
    """The last validation number: the bound in nats per target token, or the training loss where a back-end has
    no bound."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vals = [r.get("val_nll", r.get("val_loss")) for r in rows if "val_nll" in r or "val_loss" in r]
    return vals[-1] if vals else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["masked", "embedding", "embedding-no-prior", "simplex"],
                   choices=[*sorted(BACKENDS), "embedding-no-prior"])
    p.add_argument("--steps", nargs="+", type=int, default=[400, 800])
    p.add_argument("--runs", default="runs/source_use")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="write the markdown table here")
    args = p.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    pairs = runs / "pairs.jsonl"
    write_pairs(pairs)
    lines = ["| variant | steps | validation | BLEU (test, greedy, ω 0) | train tok/s |", "|---|---|---|---|---|"]
    for variant in args.variants:
        for steps in args.steps:
            run = runs / f"{variant}-{steps}"
            r = recipe_from_dict(recipe(variant, pairs, run, steps, args.device))
            if not ((run / "model.safetensors").is_file() and same_recipe(run, r)):  # else a finished run is reused
                shutil.rmtree(run, ignore_errors=True)
                train_recipe(r, progress=False, device=args.device)
            out = run / "bleu.json"
            argv = ["eval", str(run), "--metrics", "bleu", "--split", "test", "--temperature", "0", "--device",
                    args.device, "--out", str(out), *([] if variant == "ar" else ["--guidance-scale", "0"])]
            if textdiff(argv) != 0:
                raise SystemExit(f"source_use: `textdiff {' '.join(argv)}` failed")
            bleu = json.loads(out.read_text())["seq2seq"]["rows"][0]["bleu"]["score"]
            lines.append(f"| {variant} | {steps} | {last_validation(run):.3f} | {bleu:.2f} | {tok_per_s(run):,.0f} |")
            print(lines[-1], flush=True)
    report = ["# Source use on a synthetic word cipher", "", *env_lines(environment(args.device)), "",
              f"Command: `python benchmarks/source_use.py --variants {' '.join(args.variants)} --steps "
              f"{' '.join(map(str, args.steps))}`. Validation: the bound in nats per target "
              "token (the AR model's exact NLL; the loss, for a back-end without a bound).", "", *lines]
    print("\n".join(report))
    if args.out:
        atomic_write_bytes(Path(args.out), ("\n".join(report) + "\n").encode())


if __name__ == "__main__":
    main()
