"""BLEU and ROUGE-L as local `evaluate` modules (`evaluate.load("bleu")` needs the hub; these load by path)."""

from __future__ import annotations

from pathlib import Path

NAMES = ("bleu", "rouge")


def path(name: str) -> str:
    """The module file of metric `name`, for `evaluate.load`."""
    return str(Path(__file__).with_name(f"{name}.py"))


def load(name: str):
    import evaluate

    return evaluate.load(path(name))
