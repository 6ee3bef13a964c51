"""Running the same training entry points on several processes (``torchrun``) with DDP.

``torchrun --nproc-per-node N -m napari_brats_kd.cli train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them and joins the process group (NCCL on GPUs, gloo
on CPUs). Each process then trains on its own share of the patches (``DistributedSampler``),
gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, and only rank 0
validates, logs and writes checkpoints. With ``batch_size`` cases per process the global batch is
``N * batch_size`` cases, so one process with ``N * batch_size`` cases takes the same steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if preference == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    from ..device import select_device

    device = select_device(preference)  # refuses, in words, a device this machine lacks
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment variables, if any.

    A process group that is already initialised (by a caller or a test) is reused and left for its
    owner to destroy.

    Parameters
    ----------
    device
        Device preference (``"auto"``, ``"cpu"``, ``"cuda"``).

    Returns
    -------
    DistContext
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local, resolve_device(device, local), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device, 0))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local, dev, owns_group=True)


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Wrap ``model`` in DDP when several processes train; otherwise return it unchanged."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def any_true(flag: bool, ctx: DistContext) -> bool:
    """Whether ``flag`` is true on any process (so that all stop together)."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_processes(value: float, ctx: DistContext) -> float:
    """Average of a scalar over processes (for logging)."""
    if not ctx.distributed:
        return float(value)
    t = torch.tensor([float(value)], device=_comm_device(ctx), dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item() / ctx.world_size)


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's value of a scalar on every process."""
    if not ctx.distributed:
        return float(value)
    t = torch.tensor([float(value)], device=_comm_device(ctx), dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())


def barrier(ctx: DistContext) -> None:
    """Wait for every process."""
    if ctx.distributed:
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Leave the process group if this run created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(ctx: DistContext) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


__all__ = [
    "DistContext",
    "any_true",
    "barrier",
    "broadcast_float",
    "cleanup",
    "init_distributed",
    "mean_over_processes",
    "resolve_device",
    "wrap_model",
]
