"""How much an embedding-diffusion model gains from context: its bound's diffusion integrand over time beside that of
the best model that reads no context at all.

The context-free oracle predicts every token from its own z_t alone, exactly: its logits are the Bayes logits of z_t
(the model's own embeddings and schedule) plus the log unigram prior of the training split, so its diffusion term
is about the unigram cross-entropy of the tokens. A model whose integrand lies on the oracle's at every time has
learned the unigram distribution and nothing of the words around each token; the difference is its context gain.

    python benchmarks/context_gain.py RUN [RUN ...] --times 32 --batches 2 [--out gain.md]

Times are a midpoint grid on t in (0, 1); the diffusion term is their mean (the same integral the bound estimates
by Monte Carlo). Rounding CE is the cross-entropy of the tokens under the x0 logits at each time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from paths import shown, shown_argv
from textdiff.checkpoint import atomic_write_bytes
from textdiff.data import build_sequences, load_texts
from textdiff.errors import TextdiffError
from textdiff.evaluation.report import env_lines, environment
from textdiff.noising.embedding import gaussian_logits
from textdiff.pipeline import TextDiffusionPipeline


def unigram_log_prior(pipe, texts: list) -> torch.Tensor:
    """(V,) log frequencies of the counted tokens of `texts` (the training split; add-0.01 smoothed)."""
    train = build_sequences(pipe.recipe.data, pipe.tokenizer, texts)
    counts = torch.bincount(train.ids[train.loss_mask], minlength=pipe.model.noise.table().shape[0]).double() + 0.01
    return (counts / counts.sum()).log().float()


@torch.no_grad()
def integrands(pipe, batches: list, times: int, log_prior: torch.Tensor, seed: int) -> list[dict]:
    """Per time on the grid: the diffusion integrand and rounding CE of the model and of the oracle, summed over the
    counted tokens of `batches` (batch i draws its noise from seed + i)."""
    backend, model = pipe.backend, pipe.model.eval()
    noise = model.noise
    table = noise.table()
    gens = [torch.Generator(b.ids.device).manual_seed(seed + i) for i, b in enumerate(batches)]
    rows = []
    for k in range(times):
        row = dict.fromkeys(("model", "model_ce", "oracle", "oracle_ce"), 0.0)
        for batch, gen in zip(batches, gens):
            e, keep = table[batch.ids], batch.loss_mask
            t = torch.full((batch.ids.shape[0],), (k + 0.5) / times, device=batch.ids.device)
            gamma = noise.schedule.gamma(t)
            alpha, sigma = noise.schedule.alpha_sigma(t)
            z, _ = backend.noised(e, alpha, sigma, gen)
            pred = backend.predict(model, z, t)
            oracle = gaussian_logits(z, alpha, sigma ** 2, table) + log_prior.to(z.device)
            oracle[..., backend.special.mask] = float("-inf")
            weight = 0.5 * noise.schedule.gamma_prime(t) * torch.exp(-gamma)  # (B,)
            for name, logits, x0 in (("model", pred.logits, pred.x0),
                                     ("oracle", oracle, torch.softmax(oracle, -1) @ table)):
                row[name] += float((weight[:, None] * ((e - x0) ** 2).sum(-1))[keep].sum())
                row[f"{name}_ce"] += float(F.cross_entropy(logits.transpose(1, 2), batch.ids, reduction="none")[keep].sum())
        row.update(t=(k + 0.5) / times, log_snr=-float(gamma[0]))
        rows.append(row)
    return rows


def report(run: str, pipe, texts: dict, args) -> list[str]:
    """The markdown lines of one run (`texts`: its recipe's splits): the per-time table and the summary line."""
    val = build_sequences(pipe.recipe.data, pipe.tokenizer, texts["validation"])
    log_prior = unigram_log_prior(pipe, texts["train"])
    batches = [val.batch(idx).to(args.device) for idx in torch.arange(len(val.ids)).split(args.batch_size)[:args.batches]]
    rows = integrands(pipe, batches, args.times, log_prior, args.seed)
    n = sum(int(b.loss_mask.sum()) for b in batches)
    unigram = -sum(float(log_prior.to(b.ids.device)[b.ids][b.loss_mask].sum()) for b in batches) / n
    lines = [f"### {shown(run)}", "", "| t | log SNR | integrand: model | oracle | gain | rounding CE: model | oracle |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['t']:.3f} | {r['log_snr']:+.2f} | {r['model'] / n:.3f} | {r['oracle'] / n:.3f} | "
                     f"{(r['oracle'] - r['model']) / n:+.3f} | {r['model_ce'] / n:.3f} | {r['oracle_ce'] / n:.3f} |")
    model_term, oracle_term = (sum(r[k] for r in rows) / n / args.times for k in ("model", "oracle"))
    return lines + ["", f"Diffusion term over {n:,} validation tokens: model {model_term:.3f}, context-free oracle "
                        f"{oracle_term:.3f} nats/token; context gain {oracle_term - model_term:+.3f}. (The oracle's "
                        f"term estimates the tokens' unigram cross-entropy, {unigram:.3f}: the grid's check.)", ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="embedding run directories")
    p.add_argument("--times", type=int, default=32, help="points of the midpoint grid on t")
    p.add_argument("--batches", type=int, default=2, help="validation batches of --batch-size sequences")
    p.add_argument("--batch-size", type=int, default=32, dest="batch_size")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    if args.times < 1 or args.batches < 1 or args.batch_size < 1:
        p.error("--times, --batches and --batch-size must be positive")
    out = []
    for run in args.runs:
        try:
            pipe = TextDiffusionPipeline.from_pretrained(run, device=args.device)
        except (TextdiffError, OSError) as err:
            p.error(str(err) if str(run) in str(err) else f"{run}: {err}")
        if pipe.backend.name != "embedding":
            p.error(f"{run}: back-end {pipe.backend.name}; this comparison is for the embedding back-end")
        if pipe.model.cfg.segments:
            p.error(f"{run}: a seq2seq run (model.segments); this comparison is for language models")
        texts = load_texts(pipe.recipe.data)
        if not texts.get("validation"):
            p.error(f"{run}: its recipe has no validation split")
        lines = report(run, pipe, texts, args)
        print("\n".join(lines), flush=True)
        out += lines
    if args.out:
        head = ["# Embedding diffusion: the context gain over time", "", *env_lines(environment(args.device)), "",
                f"Command: `python benchmarks/context_gain.py {' '.join(shown_argv(sys.argv[1:] if argv is None else argv))}`. "
                f"Per counted validation token: the bound's diffusion integrand 1/2 gamma'(t) exp(-gamma) |e - x0_hat|^2 "
                f"on a {args.times}-point midpoint grid of t, for the model and for the context-free oracle (Bayes "
                f"logits of z_t plus the training split's log unigram prior); gain = oracle - model.", ""]
        atomic_write_bytes(Path(args.out), ("\n".join(head + out) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
