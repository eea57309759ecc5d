"""Training tokens/s: textdiff's masked denoiser and AR baseline vs transformers' GPT2LMHeadModel of equal size,
fp32 and bf16 autocast, side by side in one run (interleaved rounds, median of rounds), printed as ratios.

    python benchmarks/throughput.py                       # 6 x 512 x 8, vocab 8192, batch 32 x 128
    python benchmarks/throughput.py --steps 3 --rounds 2  # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch

from textdiff.config import BackendConfig, ModelConfig, Recipe, DataConfig
from textdiff.models import build_model
from textdiff.noising import get_backend
from textdiff.noising.base import Batch, SpecialTokens

SPECIAL = SpecialTokens(pad=0, mask=1, bos=2, eos=3, unk=4, sep=5)


def ours(backend_name: str, args):
    recipe = Recipe(data=DataConfig(path="x", max_length=args.length),
                    model=ModelConfig(n_layer=args.layers, n_embd=args.width, n_head=args.heads, dropout=0.0),
                    backend=BackendConfig(name=backend_name))
    model = build_model(recipe, args.vocab, args.length)
    backend = get_backend(recipe.backend, SPECIAL, args.vocab)
    gen = torch.Generator().manual_seed(0)
    return model, lambda batch: backend.loss(model, batch, gen).loss


def gpt2(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=args.vocab, n_positions=args.length, n_embd=args.width, n_layer=args.layers,
                     n_head=args.heads, bos_token_id=2, eos_token_id=3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    return model, lambda batch: model(input_ids=batch.ids, labels=batch.ids).loss


def time_steps(model, loss_fn, batch, steps: int, bf16: bool) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.train()
    for i in range(steps + 1):  # the first step warms up and is not timed
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss = loss_fn(batch)
        loss.backward()
        opt.step()
    return batch.ids.numel() * steps / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(6, args.vocab, (args.batch, args.length))
    batch = Batch(ids, torch.ones_like(ids, dtype=torch.bool))
    models = {"textdiff masked": ours("masked", args), "textdiff AR": ours("ar", args), "GPT2LMHeadModel": gpt2(args)}
    print(f"# training throughput, {args.layers} x {args.width} x {args.heads}, vocab {args.vocab}, batch "
          f"{args.batch} x {args.length}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; median of {args.rounds} rounds x {args.steps} steps")
    for precision in ("fp32", "bf16"):
        rates = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, (model, loss_fn) in models.items():
                rates[name].append(time_steps(model, loss_fn, batch, args.steps, precision == "bf16"))
        ref = statistics.median(rates["GPT2LMHeadModel"])
        print(f"\n| {precision} | tokens/s | vs GPT-2 |\n|---|---|---|")
        for name, r in rates.items():
            print(f"| {name} ({sum(p.numel() for p in models[name][0].parameters()) / 1e6:.1f}M) | "
                  f"{statistics.median(r):,.0f} | {statistics.median(r) / ref:.2f}x |")


if __name__ == "__main__":
    main()
