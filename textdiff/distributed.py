"""Many processes: torch.distributed under `torchrun` or `accelerate launch` (both set WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT), with DDP or FSDP (FSDP2, `fully_shard`) wrapping the model.

One process (no WORLD_SIZE, or WORLD_SIZE=1) is the plain path: nothing is initialised or wrapped, and every
helper here is a no-op. Checkpoints always hold unsharded (full) tensors, so a run written by N processes
resumes in M.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from textdiff.errors import TextdiffError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over every process (identity in one process)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (prepares data, trains and saves the tokenizer); the others follow."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def _collective_device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def check_launch(env=os.environ) -> None:
    """`accelerate launch --num_processes N` without --multi_gpu on a machine without several GPUs starts ONE
    process: its simple launcher sets MASTER_ADDR (asked for more than one process) but no WORLD_SIZE. Refused in
    one line rather than silently training on one process."""
    asked_many = "MASTER_ADDR" in env and any(k.startswith("ACCELERATE_") for k in env)
    if asked_many and int(env.get("WORLD_SIZE", "1") or 1) <= 1:
        raise TextdiffError("accelerate launch started a single process although more were asked (WORLD_SIZE is not "
                            "set): add --multi_gpu, which starts --num_processes processes on CPUs too (gloo), or "
                            "use torchrun --nproc_per_node N")


def init_world(device: str | None = None) -> World:
    """The World from the launcher's environment; initialises the process group (nccl on cuda, else gloo) once."""
    check_launch()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if cuda:
            torch.cuda.set_device(world.local_rank)
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return world


def close_world(world: World) -> None:
    if world.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def device_for(world: World, device: str | None) -> torch.device:
    """The requested device, or cuda when available; under many processes each takes cuda:LOCAL_RANK."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return torch.device(device)


class DDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that lets back-ends read the model's attributes (`model.cfg`, `model.embed_probs`)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_model(model: torch.nn.Module, strategy: str, world: World, device: torch.device) -> torch.nn.Module:
    """DDP (replicated weights, all-reduced gradients) or FSDP (each block's weights sharded over processes)."""
    if not world.distributed:
        return model
    self_cond = bool(getattr(getattr(model, "cfg", None), "self_conditioning", False))
    if strategy == "ddp":  # self-conditioning leaves its input layer unused in the steps that skip it
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
                   find_unused_parameters=self_cond)
    if strategy == "fsdp" and self_cond:
        raise TextdiffError("train.strategy=fsdp does not support model.self_conditioning yet (the back-end embeds "
                            "its x0 estimate outside the model's forward); use train.strategy=ddp")
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    raise TextdiffError(f"train.strategy={strategy!r} is not allowed; choose one of {', '.join(STRATEGIES)}")


def sync_gradients(model: torch.nn.Module, sync: bool):
    """Context for one micro-batch's backward: gradients are reduced over processes only on the last one."""
    if isinstance(model, DDP) and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def is_sharded(model: torch.nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor shard gathered to the whole tensor (collective); a plain tensor unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor cut to the same sharding as `like` (a DTensor), or moved to its device."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full.to(like.device, like.dtype)
