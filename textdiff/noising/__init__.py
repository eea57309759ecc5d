"""Noising back-ends, one file each, registered by name (the name a recipe's `backend.name` uses)."""

from __future__ import annotations

from textdiff.registry import BACKENDS

register = BACKENDS.register


def get_backend(cfg, special, vocab_size):
    """The back-end its options `cfg` (a `backend:` section) name, for a vocabulary with these special tokens."""
    return BACKENDS[cfg.name](cfg, special, vocab_size)


def options_for(name: str, **keys):
    """The Options of back-end `name` with `keys` (e.g. `options_for("masked", mask_sampling="time")`)."""
    return BACKENDS[name].Options(name=name, **keys)


from textdiff.noising import ar, edit, embedding, masked, simplex, uniform  # noqa: E402,F401  (registration)
