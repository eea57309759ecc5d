"""Pretrained backbones on KJV (issue 34), at a budget a 2-core CPU can do (stated in every table).

    python benchmarks/pretrained.py minilm  --steps 200 --out benchmarks/results/pretrained_minilm_cpu.md
    python benchmarks/pretrained.py smollm2 --steps 40  --ar-judge runs/pretrained/kjv-ar-200 \\
        --out benchmarks/results/pretrained_smollm2_cpu.md
    python benchmarks/pretrained.py lora    --steps 6   --out benchmarks/results/pretrained_lora_cpu.md
    python benchmarks/pretrained.py shift   --steps 0   --out benchmarks/results/pretrained_shift_cpu.md

minilm:  recipes/kjv/minilm-masked.yaml (all-MiniLM-L6-v2 initialised), the same with model.pretrained=false (the
         architecture from scratch) and recipes/kjv/ar.yaml (textdiff's AR baseline, 6 x 384), all at --steps x
         batch 32 x 128 tokens; test nats per word (the tokenizers differ), wall time, and the quickstart's infill.
smollm2: recipes/kjv/a2d-smollm2.yaml (A2D) and recipes/kjv/ar-smollm2.yaml (the same weights fine-tuned as AR)
         with the same tokens; test nats per word, and judge PPL of their samples under SmolLM2 and under the KJV AR
         run given by --ar-judge (a SmolLM2-derived model flatters the SmolLM2 judge).
shift:   the A2D output shift on or off: SmolLM2's bound before training (and after --steps when > 0).
lora:    full fine-tuning vs LoRA on recipes/kjv/a2d-smollm2.yaml, each in its own process: trainable
         parameters, peak resident memory, training tokens/s; the LoRA run directory reloads and samples.
Finished runs are reused (same recipe, same steps).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from paths import shown, shown_argv
from textdiff.config import load_recipe
from textdiff.evaluation import perplexity
from textdiff.pipeline import TextDiffusionPipeline
from textdiff.rundir import same_recipe
from textdiff.training import train_recipe

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_INFILL = "And God said, Let there be [MASK:2]: and there was [MASK:2]."


def train(recipe_path: str, out: Path, steps: int, extra: list[str]) -> tuple[Path, float]:
    """The run of `recipe_path` at `steps` (reused when already there), and its training wall time in seconds."""
    overrides = [f"out_dir={out}", f"train.steps={steps}", f"train.eval_every={steps}",
                 f"train.checkpoint_every={steps}", "train.threads=1", "sample.num_samples=0", *extra]
    recipe = load_recipe(ROOT / recipe_path, overrides)
    stamp = out / "wall_seconds.json"
    if (out / "model.safetensors").is_file() and same_recipe(out, recipe) and stamp.is_file():
        print(f"reusing {out}")
        return out, json.loads(stamp.read_text())["seconds"]
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    train_recipe(recipe, progress=False)
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"seconds": seconds}))
    return out, seconds


def tok_per_s(run: Path) -> float:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r["tok_per_s"] for r in rows if "tok_per_s" in r][-1]


def evaluate(run: Path, sequences: int, draws: int) -> dict:
    pipe = TextDiffusionPipeline.from_pretrained(run)
    res = perplexity(pipe, "test", time_draws=draws, batch_size=16, max_sequences=sequences, progress=False)
    return {"run": run, "pipe": pipe, "ppl": res, "params": pipe.model.num_params()}


def row(name: str, ev: dict, seconds: float) -> str:
    r = ev["ppl"]
    se = "exact" if r.exact else f"± {r.stderr * r.nats_per_word / r.nats_per_token:.3f}"
    return (f"| {name} | {ev['params'] / 1e6:.1f}M | {len(ev['pipe'].tokenizer):,} | {r.nats_per_token:.3f} | "
            f"**{r.nats_per_word:.3f}** ({se}) | {tok_per_s(ev['run']):,.0f} | {seconds / 60:.1f} min |")


HEADER = ["| model | parameters | vocab | test nats/token | test nats/word | train tok/s | train wall time |",
          "|---|---|---|---|---|---|---|"]


def command() -> str:
    return f"python benchmarks/pretrained.py {' '.join(shown_argv(sys.argv[1:]))}"


def machine() -> str:
    """The CPU model and core count, torch's threads and version."""
    import os

    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core {cpu}, {torch.get_num_threads()} torch thread, torch {torch.__version__}"


CONTENDED = ("Trainings ran under the shared CPU lock, but other jobs outside it shared the 2 cores: tok/s and wall "
             "times are contended, comparable only within one table.")


def cmd_minilm(args) -> list[str]:
    runs = Path(args.runs).resolve()
    trained = {
        "all-MiniLM-L6-v2 initialised, masked": train("recipes/kjv/minilm-masked.yaml", runs / f"kjv-minilm-{args.steps}",
                                                      args.steps, args.set),
        "same BERT 6 x 384 from scratch, masked": train("recipes/kjv/minilm-masked.yaml",
                                                        runs / f"kjv-minilm-scratch-{args.steps}", args.steps,
                                                        ["model.pretrained=false", *args.set]),
        "textdiff AR baseline (6 x 384, BPE 8192)": train("recipes/kjv/ar.yaml", runs / f"kjv-ar-{args.steps}",
                                                          args.steps, args.set),
    }
    lines = [f"# Pretrained encoder vs scratch vs AR on KJV (masked back-end), {args.steps} steps", "",
             f"Command: `{command()}`. Machine: {machine()}. {CONTENDED}", "",
             f"Budget: {args.steps} steps x batch 32 x 128 tokens = {args.steps * 32 * 128 / 1e6:.2f}M tokens each "
             f"({args.steps / 800:.2f} of the anchors' 800-step budget), overrides {args.set or 'none'}. Test split: "
             f"the first {args.sequences} sequences, {args.draws} time draws per sequence for the bounds, nats per "
             "word over the whole split's words (the tokenizers differ).", "", *HEADER]
    evals = {}
    for name, (run, seconds) in trained.items():
        evals[name] = evaluate(run, args.sequences, args.draws)
        lines.append(row(name, evals[name], seconds))
    lines += ["", f"Infill of the quickstart template `{QUICKSTART_INFILL}` (ancestral, seed 0, 3 fillings):", ""]
    for name in list(trained)[:2]:
        texts = evals[name]["pipe"].infill(QUICKSTART_INFILL, num_samples=3, seed=0).texts
        lines += [f"- {name}: " + " / ".join(f"\"{t}\"" for t in texts)]
    return lines


def cmd_smollm2(args) -> list[str]:
    from textdiff.evaluation.genppl import text_stats
    from textdiff.evaluation.judge import load_judge

    runs = Path(args.runs).resolve()
    trained = {"SmolLM2-135M A2D (masked diffusion)": train("recipes/kjv/a2d-smollm2.yaml",
                                                            runs / f"kjv-a2d-smollm2-{args.steps}", args.steps, args.set),
               "SmolLM2-135M AR fine-tune": train("recipes/kjv/ar-smollm2.yaml", runs / f"kjv-ar-smollm2-{args.steps}",
                                                  args.steps, args.set)}
    judges = {"SmolLM2": load_judge(None)}
    if args.ar_judge:
        judges["KJV AR run"] = load_judge(args.ar_judge)
    lines = [f"# SmolLM2-135M adapted to masked diffusion (A2D) vs its own AR fine-tune on KJV, {args.steps} steps", "",
             f"Command: `{command()}`. Machine: {machine()}. {CONTENDED}", "",
             f"Budget: {args.steps} steps x batch 8 x 128 tokens = {args.steps * 8 * 128 / 1e3:.0f}k tokens each, the "
             f"same tokens for both, overrides {args.set or 'none'}. Test split: the first {args.sequences} "
             f"sequences, {args.draws} time draws for the bound. Samples: {args.samples} x 128 tokens, seed 0 "
             f"(A2D: ancestral, {args.sample_steps} steps; AR: KV cache).", "", *HEADER]
    evals = {}
    for name, (run, seconds) in trained.items():
        evals[name] = evaluate(run, args.sequences, args.draws)
        lines.append(row(name, evals[name], seconds))
    a2d, ar = (evals[n]["ppl"].nats_per_word for n in trained)
    lines += ["", f"Ratio A2D / AR fine-tune in nats per word: **{a2d / ar:.3f}**.", "",
              "| samples of | " + " | ".join(f"judge PPL ({j})" for j in judges) + " | sample wall time |",
              "|---|" + "---|" * len(judges) + "---|"]
    for name, ev in evals.items():
        opts = {} if ev["pipe"].backend.causal else {"steps": args.sample_steps}
        t0 = time.perf_counter()
        gen = ev["pipe"].generate(args.samples, seed=0, length=128, **opts)
        seconds = time.perf_counter() - t0
        ids = [[i for i in r if i != ev["pipe"].backend.special.pad] for r in gen.ids.tolist()]
        ppls = [text_stats(gen.texts, ids, j).ppl for j in judges.values()]
        lines.append(f"| {name} | " + " | ".join(f"{p:.1f}" for p in ppls) + f" | {seconds:.1f} s |")
        lines.append(f"|   first sample | \"{gen.texts[0][:160]}\" |" + " |" * len(judges))
    return lines


def measure_one(recipe_path: str, out: str, steps: int, extra: list[str]) -> dict:
    """In this process: train `steps` steps and report trainable parameters, peak RSS and tok/s."""
    recipe = load_recipe(ROOT / recipe_path, [f"out_dir={out}", f"train.steps={steps}", f"train.eval_every={steps}",
                                              f"train.checkpoint_every={steps}", "train.threads=1",
                                              "sample.num_samples=0", "train.warmup_steps=1", *extra])
    run = train_recipe(recipe, progress=False)
    pipe = TextDiffusionPipeline.from_pretrained(run)  # the run directory reloads (adapter runs too) and samples
    trainable = sum(p.numel() for p in pipe.model.parameters() if p.requires_grad)
    text = pipe.infill(QUICKSTART_INFILL, steps=4, seed=0).texts[0]
    return {"trainable": trainable, "total": pipe.model.num_params(), "tok_per_s": tok_per_s(run),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "infill": text}


def cmd_lora(args) -> list[str]:
    runs = Path(args.runs).resolve()
    settings = {"full fine-tuning": [], "LoRA r=16 (q,k,v,o), alpha 32": ["model.lora={r: 16, alpha: 32}"]}
    lines = [f"# LoRA vs full fine-tuning: SmolLM2-135M A2D on KJV, {args.steps} steps each", "",
             f"Command: `{command()}`. Machine: {machine()}; each setting in a fresh process, one after the other, "
             "beside other jobs on the 2 cores (tok/s is contended).", "",
             f"Recipe recipes/kjv/a2d-smollm2.yaml, batch 8 x 128, bf16 autocast, {args.steps} steps. Peak memory is "
             "the process's maximum resident set (weights loaded from the GGUF, training, reload and one infill).", "",
             "| setting | trainable parameters | of all | peak RSS | train tok/s | reloaded run infills |",
             "|---|---|---|---|---|---|"]
    for name, extra in settings.items():
        out = runs / f"lora-probe-{len(extra)}"
        code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from pretrained import measure_one; "
                f"print('RESULT', json.dumps(measure_one('recipes/kjv/a2d-smollm2.yaml', {str(out)!r}, {args.steps}, "
                f"{extra!r})))")
        if out.exists():
            import shutil

            shutil.rmtree(out)
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not found:
            raise SystemExit(f"{name}: the measuring process failed:\n{proc.stderr[-2000:]}")
        r = json.loads(found[0][7:])
        lines.append(f"| {name} | {r['trainable'] / 1e6:.2f}M | {100 * r['trainable'] / r['total']:.1f} % | "
                     f"{r['peak_rss_gib']:.2f} GiB | {r['tok_per_s']:,.0f} | \"{r['infill']}\" |")
    return lines


def untrained_pipe(recipe_path: str, extra: list[str]) -> TextDiffusionPipeline:
    """The recipe's model as built for training step 0 (pretrained backbone, nothing trained), as a pipeline."""
    from textdiff.models import backbones, build_model
    from textdiff.noising import get_backend
    from textdiff.tokenization import special_tokens

    recipe = load_recipe(ROOT / recipe_path, extra)
    tok = backbones.load_tokenizer(recipe.model.backbone)
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe, len(tok), recipe.data.max_length)
    return TextDiffusionPipeline(recipe, model, get_backend(recipe.backend, special_tokens(tok), len(tok)), tok)


def cmd_shift(args) -> list[str]:
    """A2D with and without the output shift: the bound of the adapted SmolLM2 before training, and after --steps."""
    runs = Path(args.runs).resolve()
    lines = ["# The A2D output shift on SmolLM2-135M: position i read from hidden state i - 1, or from i", "",
             f"Command: `{command()}`. Machine: {machine()}.", "",
             f"recipes/kjv/a2d-smollm2.yaml with model.shift=true / false; test split: the first {args.sequences} "
             f"sequences, {args.draws} time draws per sequence (masked ELBO bound).", "",
             "| model.shift | untrained: test nats/word | " + (f"after {args.steps} steps (batch 8 x 128): test nats/word |"
                                                          if args.steps else ""),
             "|---|---|" + ("---|" if args.steps else "")]
    for shift in ("true", "false"):
        pipe = untrained_pipe("recipes/kjv/a2d-smollm2.yaml", [f"model.shift={shift}"])
        zero = perplexity(pipe, "test", time_draws=args.draws, batch_size=8, max_sequences=args.sequences,
                          progress=False)
        cells = [f"{zero.nats_per_word:.3f} (± {zero.stderr * zero.nats_per_word / zero.nats_per_token:.3f})"]
        if args.steps:
            run, _ = train("recipes/kjv/a2d-smollm2.yaml", runs / f"kjv-a2d-shift-{shift}-{args.steps}", args.steps,
                           [f"model.shift={shift}", *args.set])
            r = evaluate(run, args.sequences, args.draws)["ppl"]
            cells.append(f"{r.nats_per_word:.3f} (± {r.stderr * r.nats_per_word / r.nats_per_token:.3f})")
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    ar = perplexity(untrained_pipe("recipes/kjv/ar-smollm2.yaml", []), "test", batch_size=8,
                    max_sequences=args.sequences, progress=False)
    lines += ["", f"For reference, SmolLM2-135M as the causal LM it is (recipes/kjv/ar-smollm2.yaml, untrained, exact): "
                  f"{ar.nats_per_word:.3f} nats/word on the same sequences."]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["minilm", "smollm2", "lora", "shift"])
    p.add_argument("--steps", type=int, required=True, help="training steps of every run")
    p.add_argument("--runs", default="runs/pretrained", help="where the runs go (default runs/pretrained)")
    p.add_argument("--set", action="append", default=[], help="recipe override for every run")
    p.add_argument("--sequences", type=int, default=128, help="test sequences evaluated (default 128)")
    p.add_argument("--draws", type=int, default=8, help="time draws per sequence for the bounds (default 8)")
    p.add_argument("--samples", type=int, default=8, help="smollm2: samples per model for the judges (default 8)")
    p.add_argument("--sample-steps", type=int, default=64, dest="sample_steps", help="smollm2: A2D sampling steps")
    p.add_argument("--ar-judge", dest="ar_judge", help="smollm2: a KJV AR run directory as the second judge")
    p.add_argument("--out", help="write the markdown table here")
    args = p.parse_args()
    torch.set_num_threads(1)
    lines = {"minilm": cmd_minilm, "smollm2": cmd_smollm2, "lora": cmd_lora, "shift": cmd_shift}[args.what](args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {shown(Path(args.out))}")


if __name__ == "__main__":
    main()
