"""Frozen option dataclasses: the value checks their `__post_init__` use, and building one from a YAML / JSON
mapping with errors that name the key, the file and what is allowed.

Every recipe section (config.py) and every component's own options (a back-end's `Options`) are built here, so
a key of any section is checked the same way.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from textdiff.errors import TextdiffError


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not (value > 0 or (allow_zero and value == 0)):  # also refuses NaN
        raise ValueError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")
    if value == float("inf"):
        raise ValueError(f"{name}={value!r} must be a finite number")


def check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must lie in [0, 1]")


def check_at_most(name: str, value: float, limit: float, why: str) -> None:
    if value > limit:
        raise ValueError(f"{name}={value!r} is more than the limit of {limit:,} ({why})")


LIMITS = {"layers": 1024, "width": 65_536, "heads": 1024, "vocab": 2 ** 24, "length": 1_048_576,
          "batch": 1_000_000, "train_steps": 10 ** 9, "sample_steps": 100_000, "samples": 100_000,
          "draws": 10_000, "mbr": 10_000, "threads": 4096}
"""Upper bounds of sizes and counts, far above any sensible value and below what makes torch or Python overflow
or allocate without end; memory is checked separately (textdiff.resources) once a model's size is known."""


def check_limit(name: str, value: int, kind: str) -> None:
    """`value` (a size or count) at most LIMITS[kind]; a ValueError naming the limit otherwise."""
    check_at_most(name, value, LIMITS[kind], "a sanity bound on sizes and counts")


def convert(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check a YAML value against a dataclass field's type; ints are accepted for floats, nothing else coerces."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else convert(value, args[0], key, source)
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TextdiffError(f"{source}: {key} must be a list, got {_short(value)}")
        item = (typing.get_args(hint) or (float,))[0]
        return tuple(convert(v, item, key, source) for v in value)
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          dict: lambda v: isinstance(v, dict)}[hint]
    if not ok(value):
        raise TextdiffError(f"{source}: {key} must be {hint.__name__}, got {_short(value)} ({type(value).__name__})")
    if hint is float:
        try:
            return float(value)
        except OverflowError:
            raise TextdiffError(f"{source}: {key} is too large for a float (a {value.bit_length()}-bit integer)") from None
    return value


def _short(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters: an error message never prints a whole (possibly huge) structure."""
    text = repr(value) if not isinstance(value, (dict, list, tuple)) else f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build(cls: type, raw: Any, prefix: str, source: str, owner: str = "", **fixed):
    """An instance of the frozen dataclass `cls` from the mapping `raw` (the section `prefix` of `source`), with
    `fixed` keyword arguments added; unknown keys and bad values are TextdiffErrors naming the key (and `owner`,
    the component whose keys these are)."""
    if not isinstance(raw, dict):
        raise TextdiffError(f"{source}: section '{prefix}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [n for n in field_names(cls) if n not in fixed]
    kwargs = dict(fixed)
    for key, value in raw.items():
        if key not in names:
            raise TextdiffError(f"{source}: unknown key '{prefix}.{key}'{f' for {owner}' if owner else ''}; allowed keys: {', '.join(names)}")
        kwargs[key] = convert(value, hints[key], f"{prefix}.{key}", source)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise TextdiffError(f"{source}: {e}") from None

