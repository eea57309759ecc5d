"""Training tokens/s of every registered back-end's step (its loss, forward + backward, AdamW) on the shared
transformer, beside transformers' GPT2LMHeadModel of equal size, fp32 and bf16 autocast, in one process:
interleaved rounds, median of rounds, printed as ratios to the AR baseline and to GPT-2."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from textdiff.noising.base import Batch, SpecialTokens

SPECIAL = SpecialTokens(pad=0, mask=1, bos=2, eos=3, unk=4, sep=5)
GPT2 = "GPT2LMHeadModel"


@dataclass(frozen=True)
class Size:
    layers: int = 6
    width: int = 512
    heads: int = 8
    vocab: int = 8192
    batch: int = 32
    length: int = 128


def _sections(name: str, recipes: Optional[Path]) -> tuple[dict, dict, str]:
    """The model and backend sections of recipes/<...>/<name>.yaml when it exists (so a back-end is timed with
    its own settings, e.g. time conditioning), else the defaults."""
    path = recipes / f"{name}.yaml" if recipes else None
    if path is None or not path.is_file():
        return {}, {"name": name}, "defaults"
    from textdiff.config import read_yaml

    raw = read_yaml(path)
    return dict(raw.get("model") or {}), dict(raw.get("backend") or {}), str(path)


def ours(name: str, size: Size, recipes: Optional[Path]) -> tuple[torch.nn.Module, Callable, str]:
    from textdiff.config import recipe_from_dict
    from textdiff.models import build_model
    from textdiff.noising import get_backend

    model_raw, backend_raw, source = _sections(name, recipes)
    model_raw.update(n_layer=size.layers, n_embd=size.width, n_head=size.heads, dropout=0.0)
    recipe = recipe_from_dict({"data": {"path": "x", "max_length": size.length}, "model": model_raw,
                               "backend": backend_raw}, source)
    model = build_model(recipe, size.vocab, size.length)
    backend = get_backend(recipe.backend, SPECIAL, size.vocab)
    gen = torch.Generator().manual_seed(0)
    return model, lambda batch: backend.loss(model, batch, gen).loss, source


def gpt2(size: Size) -> tuple[torch.nn.Module, Callable, str]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=size.vocab, n_positions=size.length, n_embd=size.width, n_layer=size.layers,
                     n_head=size.heads, bos_token_id=2, eos_token_id=3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    return model, lambda batch: model(input_ids=batch.ids, labels=batch.ids).loss, "transformers"


def time_steps(model, loss_fn, batch: Batch, steps: int, bf16: bool, device: torch.device) -> float:
    """Tokens/s of `steps` optimizer steps after one untimed warm-up step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    for i in range(steps + 1):
        if i == 1:
            sync()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss = loss_fn(batch)
        loss.backward()
        opt.step()
    sync()
    return batch.ids.numel() * steps / (time.perf_counter() - t0)


def throughput(size: Size = Size(), steps: int = 5, rounds: int = 3, device: str = "cpu",
               backends: Optional[list[str]] = None, recipes: Optional[Path] = None,
               precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """{precision: {model: {"tok_per_s", "vs_ar", "vs_gpt2", "params", "settings"}}} plus the size."""
    from textdiff.noising import BACKENDS

    dev = torch.device(device)
    torch.manual_seed(0)
    names = backends or list(BACKENDS)
    models = {f"textdiff {n}": ours(n, size, recipes) for n in names}
    models[GPT2] = gpt2(size)
    models = {k: (m.to(dev), f, src) for k, (m, f, src) in models.items()}
    ids = torch.randint(6, size.vocab, (size.batch, size.length), device=dev)
    batch = Batch(ids, torch.ones_like(ids, dtype=torch.bool))
    ar = next((f"textdiff {n}" for n in names if BACKENDS[n].causal), None)
    from tqdm.auto import tqdm

    out, bar = {}, tqdm(total=len(precisions) * rounds * len(models), desc="throughput", unit="model", leave=False)
    for precision in precisions:
        rates = {name: [] for name in models}
        for _ in range(rounds):
            for name, (model, loss_fn, _) in models.items():
                rates[name].append(time_steps(model, loss_fn, batch, steps, precision == "bf16", dev))
                bar.update(1)
        med = {k: statistics.median(v) for k, v in rates.items()}
        out[precision] = {k: {"tok_per_s": r, "vs_gpt2": r / med[GPT2], "vs_ar": r / med[ar] if ar else float("nan"),
                              "params": sum(p.numel() for p in models[k][0].parameters()), "settings": models[k][2]}
                          for k, r in med.items()}
    bar.close()
    return {"size": size.__dict__, "steps": steps, "rounds": rounds, "device": device, "results": out}


def markdown(res: dict) -> list[str]:
    s = res["size"]
    lines = [f"Training step (loss forward + backward + AdamW), {s['layers']} x {s['width']} x {s['heads']} heads, "
             f"vocab {s['vocab']}, batch {s['batch']} x {s['length']}; median of {res['rounds']} interleaved rounds "
             f"x {res['steps']} steps on {res['device']}."]
    for precision, rows in res["results"].items():
        lines += ["", f"| {precision} | parameters | tokens/s | vs AR | vs GPT-2 | back-end settings |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {r['params'] / 1e6:.1f}M | {r['tok_per_s']:,.0f} | {r['vs_ar']:.2f}x | "
                  f"{r['vs_gpt2']:.2f}x | {r['settings']} |" for k, r in rows.items()]
    return lines
