"""Noising back-ends, one file each, registered by name (the name a recipe's `backend.name` uses)."""

from __future__ import annotations

BACKENDS: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        BACKENDS[name] = cls
        cls.name = name
        return cls
    return wrap


def get_backend(cfg, special, vocab_size):
    return BACKENDS[cfg.name](cfg, special, vocab_size)


from textdiff.noising import ar, masked  # noqa: E402,F401  (registration)
