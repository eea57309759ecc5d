"""Noising back-ends, one file each, registered by name (the name a recipe's `backend.name` uses)."""

from __future__ import annotations

from textdiff.registry import Registry

BACKENDS = Registry("back-end")
register = BACKENDS.register


def get_backend(cfg, special, vocab_size):
    return BACKENDS[cfg.name](cfg, special, vocab_size)


from textdiff.noising import ar, edit, embedding, masked, simplex, uniform  # noqa: E402,F401  (registration)
