"""Samplers: short functions with one signature, registered by name.

    sampler(model, backend, x, generator, *, steps, callback=None, guidance=None, **options) -> tokens (B, L)

`x` holds the starting sequence: [MASK] wherever text is to be generated, real tokens where it is given
(infilling keeps those fixed at every step). `options` are the sampler's own keyword options, declared as its
keyword-only parameters (textdiff/sampling/options.py): `sampler.options` lists them, and cli.py, recipes and the
pipeline take them from there. `callback(step, x, x0_probs)` is called after every step, with x as token ids
([MASK] where nothing is decided yet) and the x0 distribution the step drew from.

Most samplers are a step rule run by the generic loop (`step_rule`, textdiff/sampling/loop.py): the loop owns
semi-autoregressive blocks, self-conditioning, guidance, the callback and MDLM's cache, and the rule only turns a
prediction into the next state. A sampler that is a different loop altogether (the AR baseline's KV cache, the
edit back-end's two passes per step) registers the whole function with `register_sampler`.

`guidance(out, x_t, t) -> out` (optional, for the samplers that take it) sees every model evaluation before the
step uses it and may change it: `out` is the back-end's Prediction, `x_t` the current state and `t` (B,) the time.
Classifier guidance adds a gradient there, classifier-free guidance mixes in an unconditional evaluation.
"""

from __future__ import annotations

import functools
import inspect

import torch

from textdiff.registry import SAMPLERS
from textdiff.sampling.options import declared, with_defaults


def filter_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits (..., V) -> probabilities after temperature, top-k and nucleus (top-p) filtering.
    Temperature 0 is greedy (a one-hot on the argmax)."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(torch.float32)
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cum - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the first token always
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def blocks(length: int, block_size: int) -> list[tuple[int, int]]:
    """[lo, hi) spans for semi-autoregressive decoding, left to right (one span when block_size is 0)."""
    size = block_size or length
    return [(lo, min(lo + size, length)) for lo in range(0, length, size)]


def hole_blocks(x: torch.Tensor, mask_id: int, block_size: int) -> list[torch.Tensor]:
    """Semi-autoregressive blocks over each row's generated region: (B, L) masks, left to right, each covering
    block_size positions counted from the row's first [MASK] (one block when block_size is 0). A given prefix (a
    seq2seq source, an infill template's opening text) takes no block and no steps, however long it is in each row."""
    L = x.shape[1]
    hole = x == mask_id
    start = torch.where(hole.any(dim=1), hole.long().argmax(dim=1), 0)  # (B,)
    rel = torch.arange(L, device=x.device) - start[:, None]  # (B, L) position within the row's region
    return [(rel >= lo) & (rel < hi) for lo, hi in blocks(L - int(start.min()), block_size)]


def split_steps(steps: int, n_blocks: int) -> list[int]:
    base, extra = divmod(steps, n_blocks)
    return [base + (i < extra) for i in range(n_blocks)]


def _known(name: str, options: dict, given: dict) -> None:
    unknown = [k for k in given if k not in options]
    if unknown:
        raise ValueError(f"the {name} sampler takes no option {unknown[0]}; its options: {', '.join(options) or 'none'}")


def _declare(sampler, options: dict, attrs: dict):
    sampler.options = options
    """{name: (type, Option)}: the sampler's keyword options."""
    sampler.takes_guidance = attrs.pop("takes_guidance", True)
    sampler.reveals_per_step = attrs.pop("reveals_per_step", False)
    """Every step decides at least one token, so it takes at most as many steps as there are tokens to write."""
    if attrs:
        raise TypeError(f"unknown sampler attributes: {', '.join(attrs)}")
    return sampler


def register_sampler(name: str, **attrs):
    """Register a whole sampler function `fn(model, backend, x, generator, *, [steps,] callback, guidance,
    **options)`; its options are its keyword-only parameters whose defaults are `Option`s. `takes_guidance=False`
    marks a sampler that refuses a guidance hook."""
    def wrap(fn):
        options = declared(fn)

        @functools.wraps(fn)
        def sampler(model, backend, x, generator, **kwargs):
            _known(name, {**options, "steps": 0, "callback": 0, "guidance": 0}, kwargs)
            if kwargs.get("guidance") is not None and not sampler.takes_guidance:
                raise ValueError(f"the {name} sampler takes no guidance")
            return fn(model, backend, x, generator, **with_defaults(options, kwargs))

        sampler.takes_steps = "steps" in inspect.signature(fn).parameters
        return SAMPLERS.register(name)(_declare(sampler, options, dict(attrs)))
    return wrap


def step_rule(name: str, **attrs):
    """Register a step rule `rule(backend, pred, probs, state, step, **options) -> StepOutput` as the sampler
    `name`: the generic loop (`textdiff.sampling.loop.denoise`) with the rule at every step. Its options are the
    loop's (block_size, temperature, top_k, top_p) and the rule's own keyword-only parameters."""
    def wrap(rule):
        from textdiff.sampling.loop import denoise

        loop_options, own = declared(denoise), declared(rule)

        @functools.wraps(rule)
        def sampler(model, backend, x, generator, *, steps: int, callback=None, guidance=None, **options):
            _known(name, sampler.options, options)
            if guidance is not None and not sampler.takes_guidance:
                raise ValueError(f"the {name} sampler takes no guidance")
            loop = with_defaults(loop_options, {k: options.pop(k) for k in list(options) if k in loop_options})
            step = functools.partial(rule, **with_defaults(own, options))
            return denoise(model, backend, x, generator, step, steps=steps, callback=callback, guidance=guidance,
                           **loop)

        sampler.takes_steps, sampler.rule = True, rule
        del sampler.__wrapped__  # its signature is the loop's, not the rule's
        return SAMPLERS.register(name)(_declare(sampler, {**loop_options, **own}, dict(attrs)))
    return wrap


def options_of(name: str) -> dict:
    """{option: (type, Option)} of the sampler `name`."""
    return SAMPLERS[name].options


def all_options() -> dict[str, tuple[type, object, list[str]]]:
    """Every declared sampler option: {name: (type, Option, [samplers that take it])}, in declaration order."""
    out: dict = {}
    for sampler_name, sampler in SAMPLERS.items():
        for key, (kind, opt) in sampler.options.items():
            out.setdefault(key, (kind, opt, []))[2].append(sampler_name)
    return out


from textdiff.sampling import ar, edit, embedding, masked, simplex, uniform  # noqa: E402,F401  (registration)
