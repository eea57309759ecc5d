"""Training tokens/s and model-FLOPs utilisation (MFU), and sampling speed, on whatever CUDA GPU is here: the
masked denoiser beside the AR baseline of the same size, bf16 autocast, fused AdamW.

    python benchmarks/gpu.py                                   # 12 x 768 x 12, sequence 1024, batch 16
    python benchmarks/gpu.py --layers 24 --width 1024 --heads 16 --batch 8 --compile
    python benchmarks/gpu.py --peak-tflops 400                 # a card missing from PEAK_TFLOPS

MFU = achieved model FLOPs / peak dense bf16 FLOPs, with model FLOPs per trained token (PaLM, Chowdhery et al.
2022, appendix B; nanoGPT's estimate_mfu):

    6 * N  +  12 * n_layer * n_embd * seq_len

N counts every parameter once (a tied embedding is the vocab head's matmul; learned position tables are left out:
they are lookups). The second term is attention's QK^T and AV, forward and backward. Recomputation (activation
checkpointing) is not counted. The masked loss computes the vocab head only at masked positions (about half),
so its true FLOPs are a little lower than the formula's; the formula is the convention, so numbers compare.
Sampling: a diffusion step is one forward over the whole (batch, length); the AR baseline decodes token by token
with a KV cache; a block model (block diffusion, `--block-size K`) takes `--block-steps` forwards over each block of
K positions reading the cache of the finished blocks, plus one forward writing the block. All are reported as
generated tokens per second. A block model trains over the noisy and the clean sequence side by side (two streams
of `length` tokens), so its model FLOPs per trained token count both streams: 2 x (6 N + 12 n_layer n_embd 2 length).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

# dense bf16 peak TFLOP/s (no sparsity), from the vendors' data sheets; the first name that occurs wins
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,   # SXM
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "V100": 125.0,   # fp16 tensor cores; V100 has no bf16
}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a card named by torch.cuda.get_device_name, or None when unknown."""
    for key, value in PEAK_TFLOPS.items():  # ordered: "H100 PCIe" before "H100", "A10G" before "A10"
        if key.lower() in device_name.lower():
            return value
    return None


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (matmuls, forward + backward) + 12 n_layer n_embd seq_len (attention)."""
    return 6.0 * n_params + 12.0 * n_layer * n_embd * seq_len


def mfu(tokens_per_s: float, flops_token: float, peak: float | None) -> float | None:
    """Model-FLOPs utilisation in [0, 1] (None without a peak)."""
    return None if not peak else tokens_per_s * flops_token / (peak * 1e12)


def matmul_params(model) -> int:
    """Parameters that take part in matmuls: all (shared ones once) but learned position tables."""
    pos = model.pos.weight.numel() if model.pos is not None else 0
    return sum(p.numel() for p in model.parameters()) - pos


def build(backend_name: str, args, device, block_size: int = 0):
    from textdiff.config import DataConfig, ModelConfig, Recipe
    from textdiff.noising import options_for
    from textdiff.models import build_model
    from textdiff.noising import get_backend
    from textdiff.noising.base import SpecialTokens

    recipe = Recipe(data=DataConfig(path="x", max_length=args.length),
                    model=ModelConfig(n_layer=args.layers, n_embd=args.width, n_head=args.heads, dropout=0.0,
                                      block_size=block_size),
                    backend=options_for(backend_name))
    special = SpecialTokens(pad=0, mask=1, bos=2, eos=3, unk=4, sep=5)
    model = build_model(recipe, args.vocab, args.length).to(device)
    model.checkpoint_blocks = args.activation_checkpointing
    if args.compile:
        for block in model.blocks:
            block.compile()
    return model, get_backend(recipe.backend, special, args.vocab)


def timed(fn, warmup: int, iters: int) -> float:
    """Seconds per call (CUDA synchronised), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def train_rate(model, backend, args, device) -> float:
    """Training tokens/s: loss, backward, clipping, fused AdamW step."""
    from textdiff.noising.base import Batch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator(device).manual_seed(0)
    ids = torch.randint(6, args.vocab, (args.batch, args.length), device=device, generator=gen)
    batch = Batch(ids, torch.ones_like(ids, dtype=torch.bool))
    model.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = backend.loss(model, batch, gen).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return args.batch * args.length / timed(step, args.warmup, args.iters)


@torch.no_grad()
def diffusion_sample_rate(model, args, device) -> float:
    """Generated tokens/s of `--sample-steps` denoiser forwards over (batch, length)."""
    model.eval()
    x = torch.randint(6, args.vocab, (args.batch, args.length), device=device)

    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)

    return args.batch * args.length / (args.sample_steps * timed(forward, 2, args.iters))


@torch.no_grad()
def ar_sample_rate(model, args, device) -> float:
    """Generated tokens/s of the AR baseline decoding `length` tokens with a KV cache (batch rows at once)."""
    model.eval()
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32  # what autocast's k, v are

    def decode():
        cache = model.new_cache(args.batch, args.length, dtype=dtype)
        tok = torch.full((args.batch, 1), 2, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(args.length):
                tok = model(tok, cache=cache)[:, -1:].argmax(-1)

    return args.batch * args.length / timed(decode, 1, max(1, args.iters // 5))


@torch.no_grad()
def block_sample_rate(model, args, device) -> float:
    """Generated tokens/s of a block model over its KV cache: `block_steps` forwards of each block of K (reading
    the cache), then one forward writing it (batch rows at once)."""
    model.eval()
    K = model.cfg.block_size
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    x = torch.randint(6, args.vocab, (args.batch, K), device=device)

    def decode():
        cache = model.new_cache(args.batch, args.length, dtype=dtype)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for lo in range(0, args.length, K):
                cache.store = False
                for _ in range(args.block_steps):
                    model(x, cache=cache, start=lo)
                cache.store = True
                model.hidden(x, cache=cache, start=lo)

    return args.batch * args.length / timed(decode, 1, max(1, args.iters // 5))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--length", type=int, default=1024, help="sequence length")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--iters", type=int, default=20, help="timed steps")
    p.add_argument("--sample-steps", type=int, default=128, dest="sample_steps", help="diffusion sampling steps")
    p.add_argument("--block-size", type=int, default=16, dest="block_size",
                   help="the block model's K (0: leave block diffusion out)")
    p.add_argument("--block-steps", type=int, default=2, dest="block_steps", help="sampling steps per block")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--activation-checkpointing", action="store_true", dest="activation_checkpointing")
    p.add_argument("--peak-tflops", type=float, dest="peak_tflops", help="the card's dense bf16 peak (TFLOP/s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU found; run it on a machine with one (nothing was measured)")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = args.peak_tflops or peak_tflops(name)
    rows = []
    for label, backend_name, K in models(args):
        model, backend = build(backend_name, args, device, K)
        flops = (2 * flops_per_token(matmul_params(model), args.layers, args.width, 2 * args.length) if K else
                 flops_per_token(matmul_params(model), args.layers, args.width, args.length))
        tok_s = train_rate(model, backend, args, device)
        util = mfu(tok_s, flops, peak)
        sample, how = sampling(model, backend_name, K, args, device)
        rows.append((label, matmul_params(model), tok_s, tok_s * flops / 1e12, util, sample, how))
        del model, backend
        torch.cuda.empty_cache()
    print(table(name, peak, args, rows))
    return 0


def models(args) -> list[tuple[str, str, int]]:
    """(row label, back-end, block size) of every model timed."""
    out = [("masked", "masked", 0), ("ar", "ar", 0)]
    return out + ([(f"block-masked (K={args.block_size})", "masked", args.block_size)] if args.block_size else [])


def sampling(model, backend_name: str, K: int, args, device) -> tuple[float, str]:
    if K:
        return block_sample_rate(model, args, device), f"{args.block_steps} steps per block, KV cache"
    if backend_name == "ar":
        return ar_sample_rate(model, args, device), "KV cache"
    return diffusion_sample_rate(model, args, device), f"{args.sample_steps} steps"


def table(name: str, peak: float | None, args, rows) -> str:
    peak_text = f"{peak:.0f} TFLOP/s dense bf16" if peak else "unknown (pass --peak-tflops)"
    lines = [f"GPU: {name} (peak {peak_text}); torch {torch.__version__}",
             f"model {args.layers} x {args.width} x {args.heads} heads, vocab {args.vocab}, sequence {args.length}, "
             f"batch {args.batch}, bf16 autocast{', torch.compile' if args.compile else ''}"
             f"{', activation checkpointing' if args.activation_checkpointing else ''}",
             "",
             "| model | params (M) | train tokens/s | model TFLOP/s | MFU | sampling tokens/s | sampling |",
             "|---|---|---|---|---|---|---|"]
    for backend_name, n, tok_s, tflops, util, sample, how in rows:
        util_text = f"{100 * util:.1f}%" if util is not None else "n/a"
        lines.append(f"| {backend_name} | {n / 1e6:.1f} | {tok_s:,.0f} | {tflops:.1f} | {util_text} | {sample:,.0f} | {how} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
