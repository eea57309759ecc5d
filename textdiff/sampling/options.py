"""Sampler options, declared once: an `Option` is the default of a sampler's keyword-only parameter, so the
sampler's signature is the declaration. cli.py builds its sampling flags from these declarations (type from the
annotation, help from the Option), recipes accept them as `sample:` keys, and pipeline.py refuses an option the
chosen sampler does not declare, in one line naming the samplers it belongs to.

    CLAMP = Option(False, "snap every x0 estimate to its nearest token embedding")

    @step_rule("ddim")
    def ddim(backend, pred, probs, state, step, *, eta: float = ETA, clamp: bool = CLAMP): ...

Options several samplers share are here; one sampler's own options live beside it.
"""

from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

from textdiff.options import check_unit


def at_least_zero(name: str, value) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")


def nucleus(name: str, value) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={value!r} must lie in (0, 1]")


def temperature_range(name: str, value) -> None:
    at_least_zero(name, value)
    if 0 < value < 1e-4 or value > 1e4:  # 1/T under- or overflows the logits: say so instead of sampling NaN
        raise ValueError(f"{name}={value!r} must be 0 (greedy) or lie in [1e-4, 1e4]")


@dataclass(frozen=True)
class Option:
    """One keyword option of a sampler: its default, a help line and a value check `check(name, value)` raising
    ValueError. Its type is the parameter's annotation (bool, int or float)."""

    default: Any
    help: str
    check: Optional[Callable[[str, Any], None]] = None

    def validate(self, name: str, value: Any) -> None:
        if self.check is not None:
            self.check(name, value)


def choices_message(option: Option, kind: type, key: str, value: Any) -> Optional[str]:
    """The check's own message (it names the allowed values) for a value of the wrong type given to a str option
    with a fixed set of values, say `remasking: 3`; None where that does not apply."""
    if kind is not str:
        return None
    try:
        option.validate(key, value)
    except ValueError as e:
        return str(e)
    return None


TEMPERATURE = Option(1.0, "softmax temperature of the x0 distribution the step draws from (0: greedy)", temperature_range)
TOP_K = Option(0, "keep the k most likely tokens of the x0 distribution (0: off)", at_least_zero)
TOP_P = Option(1.0, "nucleus sampling: keep the most likely tokens up to this mass (1: off)", nucleus)
BLOCK_SIZE = Option(0, "semi-autoregressive blocks of this many tokens, left to right, from the first hole on "
                       "(0: one block)", at_least_zero)
def cache_mode(name: str, value) -> None:
    if value not in CACHE_MODES:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(CACHE_MODES)}")


CACHE_MODES = ("auto", "none", "prefix", "dual")
CACHE = Option("auto", "KV cache: auto (a block model's exact cache of its finished blocks, none for other models), "
                       "none (recompute everything every step), prefix or dual (Fast-dLLM's approximate caches for a "
                       "bidirectional model under --block-size)", cache_mode)
EOS_STOP = Option(False, "block models: a row whose block draws [EOS] ends there, the rest [PAD] (lengths vary per row)")
ETA = Option(0.0, "DDIM stochasticity in [0, 1]: 0 deterministic, 1 the DDPM posterior", check_unit)


def declared(fn: Callable) -> dict[str, tuple[type, Option]]:
    """{name: (type, Option)} of a sampler's keyword-only parameters whose default is an Option."""
    hints = typing.get_type_hints(fn)
    return {p.name: (hints.get(p.name, type(p.default.default)), p.default)
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and isinstance(p.default, Option)}


def with_defaults(options: dict[str, tuple[type, Option]], given: dict) -> dict:
    """`given` keyword options completed with the declared defaults of the others."""
    return {**{k: opt.default for k, (_, opt) in options.items()}, **given}
