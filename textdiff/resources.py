"""What the machine has: memory for a model about to be built, and the cores free for torch's threads.

Both are asked before the expensive part starts, so that a model too large for the machine is refused in one line
(instead of an allocator error or the OOM killer) and a training beside a busy process does not oversubscribe
the cores (torch's OpenMP threads spin on a shared core: 25x slower steps were measured, docs/performance.md)."""

from __future__ import annotations

import os
from pathlib import Path

from textdiff.errors import TextdiffError

TRAIN_BYTES_PER_PARAM = 16
"""fp32 weights, gradients and AdamW's two moments (the EMA adds 4 more when on); activations come on top."""


def available_memory(device: str = "cpu") -> int | None:
    """Bytes the device can still give (MemAvailable on Linux, free memory of a cuda device); None when unknown."""
    if str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def count_params(recipe, vocab_size: int, max_len: int) -> int:
    """The parameters of the model `recipe` describes, counted on the meta device (nothing is allocated)."""
    import torch

    from textdiff.models import build_model

    with torch.device("meta"):
        model = build_model(recipe, vocab_size, max_len)
    return sum(p.numel() for p in model.parameters())


def check_training_fits(recipe, vocab_size: int, device: str | None) -> None:
    """Refuse, before anything is allocated or written, a model whose training state cannot fit the device's
    memory. Backbones are sized by their own checkpoint and skipped here."""
    if recipe.model.backbone is not None:
        return
    params = count_params(recipe, vocab_size, recipe.data.max_length)
    need = params * (TRAIN_BYTES_PER_PARAM + (4 if recipe.train.ema > 0 else 0))
    have = available_memory(device or "cpu")
    if have is not None and need > have:
        raise TextdiffError(f"the model has {params:,} parameters and needs about {need / 2 ** 30:,.1f} GiB to train "
                            f"(weights, gradients, AdamW moments), more than the {have / 2 ** 30:,.1f} GiB available "
                            f"on {device or 'cpu'}; make model.n_embd, model.n_layer or tokenizer.vocab_size smaller")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores() -> int:
    """Cores other processes keep busy: the larger of the 1-minute load average (rounded) and the processes
    running right now besides this one (/proc/loadavg's fourth field; the average lags a new competitor by a
    minute)."""
    try:
        load = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        load = 0
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        running = 0
    return max(load, running, 0)


def free_cores() -> int:
    """Usable cores minus the busy ones, at least 1."""
    cores = usable_cores()
    return max(1, min(cores, cores - busy_cores()))


def threads_beside_others() -> tuple[int, str] | None:
    """For train.threads: 0: None when every usable core is free (torch keeps its default), else the free cores and
    a line saying why (a thread on a busy core makes every step wait for it)."""
    cores, free = usable_cores(), free_cores()
    if free >= cores:
        return None
    return free, (f"{cores - free} of {cores} cores are busy with other processes; training on {free} "
                  f"thread{'s' * (free > 1)} (set train.threads to choose)")


class Pace:
    """Watches the seconds per training step and says, once, when steps run far slower than the run's own early
    steps: the usual cause is another process competing for the cores (torch's threads then wait on each other)."""

    def __init__(self, early: int = 5, window: int = 10, factor: float = 4.0):
        self.early_n, self.window, self.factor = early, window, factor
        self.early: list[float] = []
        self.recent: list[float] = []
        self.warned = False

    def add(self, seconds: float) -> str | None:
        """Record one step; the warning line the first time the last `window` steps' median exceeds `factor` times
        the early steps' median (the very first step, which warms caches up, is not counted)."""
        if len(self.early) <= self.early_n:
            self.early.append(seconds)
            return None
        self.recent = (self.recent + [seconds])[-self.window:]
        base = sorted(self.early[1:])[len(self.early[1:]) // 2]
        now = sorted(self.recent)[len(self.recent) // 2]
        if self.warned or len(self.recent) < self.window or now <= self.factor * base:
            return None
        self.warned = True
        return (f"steps now take {now:.2f} s, {now / base:.0f}x this run's first steps ({base:.2f} s): another "
                f"process is probably competing for the cores; set train.threads to the free cores (see "
                f"docs/performance.md)")
