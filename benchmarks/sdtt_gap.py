"""How much of the masked back-end's SDTT loss a student can remove: its split into the irreducible part (the spread
of the teacher's two-step target over the draws of its first step) and the learnable part (how far the teacher's
own one-step prediction is from that target's mean).

For fixed x_t and t, SDTT's loss averaged over K draws of the teacher's first ancestral step splits exactly into
    mean_k KL(p_k || q) = mean_k KL(p_k || p_bar) + KL(p_bar || q),      p_bar = mean_k p_k,
and no per-position (factorised) student can go below the first term: KL(p_bar || q) is all it can learn. With
finite K the learnable term is biased up by about the first term / (K - 1), which is subtracted ("corrected").
A teacher whose two-step marginals equal its one-step ones (a self-consistent model, e.g. the exact posterior)
leaves nothing to learn, however long the distillation runs.

    python benchmarks/sdtt_gap.py RUN [RUN ...] --steps 32 16 --draws 32 --batches 2 [--out gap.md]

Each RUN is scored as teacher-and-student of itself (the loss `textdiff distill` reports as "teacher as student").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from paths import shown, shown_argv
from textdiff.checkpoint import atomic_write_bytes
from textdiff.distill import (DISTILLERS, held_out, kl_div, stage_data, student_times, x0_logits,
                              teacher_two_step_probs)
from textdiff.evaluation.report import env_lines, environment
from textdiff.pipeline import TextDiffusionPipeline


@torch.no_grad()
def gap(pipe, batch, steps: int, draws: int, seed: int) -> dict:
    """Per-masked-token loss split for one batch at the student's `steps` (teacher 2 * steps)."""
    backend, model = pipe.backend, pipe.model
    gen = torch.Generator(batch.ids.device).manual_seed(seed)
    t, t_mid, _ = student_times(batch.ids.shape[0], steps, gen, batch.ids.device)
    x_t = backend.corrupt(batch.ids, t, gen, noise_mask=batch.loss_mask)
    masked = x_t == backend.mask_id
    log_q = torch.log_softmax(x0_logits(backend, model, x_t, t).double(), dim=-1)[masked]  # (N, V)
    targets = [teacher_two_step_probs(backend, model, x_t, t, t_mid, gen)[masked].double() for _ in range(draws)]
    p_bar = torch.stack(targets).mean(0)
    loss = torch.stack([kl_div(p, log_q) for p in targets]).mean(0)  # (N,)
    log_p_bar = torch.log(p_bar.clamp_min(1e-30))
    spread = torch.stack([kl_div(p, log_p_bar) for p in targets]).mean(0)
    learn = kl_div(p_bar, log_q)
    n = int(masked.sum())
    return {"n": n, "loss": float(loss.sum()), "irreducible": float(spread.sum()), "learnable": float(learn.sum())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="masked run directories (teachers or distilled students)")
    p.add_argument("--steps", type=int, nargs="+", default=[32, 16], help="student step counts (teacher: twice)")
    p.add_argument("--draws", type=int, default=32, help="draws of the teacher's first step per x_t (K >= 2)")
    p.add_argument("--batches", type=int, default=2, help="validation batches of --batch-size sequences")
    p.add_argument("--batch-size", type=int, default=32, dest="batch_size")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error("--draws must be >= 2")
    lines = ["| run | student steps | masked tokens | SDTT loss | irreducible | learnable | learnable, corrected | "
             "learnable share |", "|---|---|---|---|---|---|---|---|"]
    for run in args.runs:
        pipe = TextDiffusionPipeline.from_pretrained(run, device=args.device)
        if getattr(DISTILLERS.get(pipe.backend.name), "method", None) != "sdtt":
            p.error(f"{run}: back-end {pipe.backend.name}; this split is for back-ends distilled by SDTT (masked)")
        _, val = stage_data(pipe.recipe, pipe.tokenizer)
        held = held_out(val, args.batch_size, args.device, args.batches)
        if not held:
            p.error(f"{run}: its recipe has no validation split")
        for steps in args.steps:
            parts = [gap(pipe, b, steps, args.draws, args.seed + i) for i, b in enumerate(held)]
            n = sum(x["n"] for x in parts)
            loss, irr, learn = (sum(x[k] for x in parts) / n for k in ("loss", "irreducible", "learnable"))
            corrected = max(learn - irr / (args.draws - 1), 0.0)
            lines.append(f"| {shown(run)} | {steps} | {n:,} | {loss:.4g} | {irr:.4g} | {learn:.4g} | {corrected:.3g} | "
                         f"{corrected / loss:.1%} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        head = ["# Masked SDTT: how much of the distillation loss a student can learn", "",
                *env_lines(environment(args.device)), "",
                f"Command: `python benchmarks/sdtt_gap.py {' '.join(shown_argv(sys.argv[1:] if argv is None else argv))}`. "
                f"{args.batches} validation batches of {args.batch_size} sequences, {args.draws} draws of the teacher's "
                f"first step per x_t; the run is its own teacher (the loss `textdiff distill` prints as \"teacher as "
                f"student\"). Per masked token, in nats: SDTT loss = irreducible + learnable; the corrected learnable "
                f"part subtracts its finite-draw bias, irreducible / (draws - 1).", ""]
        text = "\n".join(head) + "\n" + text
        atomic_write_bytes(Path(args.out), text.encode())
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
