"""Process group and device plumbing for ``torchrun`` (PyTorch DDP), and the collectives the loop uses.

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment), a run
initialises the process group itself (NCCL on CUDA, Gloo on CPU); inside an already initialised
group it uses that one. Every helper here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

__all__ = [
    "DistContext",
    "resolve_device",
    "setup_distributed",
    "all_reduce_sum",
    "all_gather_objects",
    "broadcast_object",
    "agree",
    "shard",
]


@dataclass
class DistContext:
    """Where this process stands in the job.

    Attributes:
        rank: This process's rank.
        world_size: Number of processes.
        local_rank: Rank on this node (picks the CUDA device).
        device: This process's device.
        owns_group: Whether this run initialised the process group (and must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 (writes files, shows progress)."""
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if this run created it."""
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """The device for ``auto``/``cpu``/``cuda`` (``auto``: CUDA when available).

    Raises:
        ValueError: If ``cuda`` is requested and no CUDA device is available.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available; use --device cpu or auto")
    if torch.cuda.is_available() and requested in ("cuda", "auto"):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed(device_request: str) -> DistContext:
    """Initialise the process group when launched by torchrun; resolve this process's device.

    Args:
        device_request: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        The context; call :meth:`DistContext.close` when done.
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        device = resolve_device(device_request, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=False)
    if env_world > 1:
        device = resolve_device(device_request, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=True)
    return DistContext(0, 1, 0, resolve_device(device_request, 0), owns_group=False)


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op for one process); returns ``t``."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, ctx: DistContext) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not ctx.distributed:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is True on any rank."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    all_reduce_sum(t, ctx)
    return bool(t.item() > 0)


def shard(ds: Dataset, ctx: DistContext) -> Dataset:
    """Rank ``r`` of ``w`` gets items ``r, r + w, ...``: disjoint, no padding duplicates."""
    if not ctx.distributed:
        return ds
    return Subset(ds, range(ctx.rank, len(ds), ctx.world_size))  # type: ignore[arg-type]
