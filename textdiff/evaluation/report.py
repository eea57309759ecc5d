"""What every result file records beside its numbers: package versions, the machine, and markdown tables."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

PACKAGES = ("textdiff", "torch", "transformers", "tokenizers", "sacrebleu", "gguf")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """One line naming the hardware that produced a number."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def environment(device: str = "cpu") -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(device),
            "python": platform.python_version(), "packages": {p: _version(p) for p in PACKAGES}}


def env_lines(env: dict) -> list[str]:
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    return [f"Date: {env['date']}. Machine: {env['machine']}.", f"Python {env['python']}; {pkgs}."]


def _cell(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return "n/a" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> list[str]:
    """Rows of dicts -> markdown lines, one column per key (missing keys and NaN print as n/a)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return lines
