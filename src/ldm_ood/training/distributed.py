"""PyTorch DDP helpers: process group from ``torchrun`` env vars, sharded epoch sampler, reductions.

``torchrun --nproc_per_node=N -m ldm_ood train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` then joins the group (``nccl`` on
CUDA, ``gloo`` on CPU). Without those variables everything runs in one process and every helper
here is a no-op. Only rank 0 writes files and prints progress (``ctx.is_main``).

``optim.batch_size`` is the batch size of one process; the effective batch is ``N`` times larger.
MONAI's ``VQVAE`` all-reduces its EMA codebook statistics across ranks itself (``ddp_sync=True``,
the default used by ``models.first_stage``), so codebooks stay identical on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device | None = None, timeout: timedelta | None = None) -> DistContext:
    """Join the process group when launched by ``torchrun`` (env vars present), else single process.

    Idempotent: a second call returns the context of the existing group. ``timeout``: how long a
    collective waits for the other ranks (default: PyTorch's).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device or _default_device(0))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = device or _default_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                **({"timeout": timeout} if timeout is not None else {}))
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def wrap_ddp(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``module`` (parameters broadcast from rank 0 on wrap)."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (for modules not wrapped in DDP)."""
    if not ctx.distributed:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over ranks (identity in one process)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's Python object on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def epoch_indices(n: int, epoch: int, seed: int, cap: int | None = None, rank: int = 0, world_size: int = 1) -> list[int]:
    """This rank's shuffled sample indices of one epoch (``DistributedSampler`` semantics + a cap).

    A permutation of ``range(n)`` from a generator seeded with ``seed + epoch`` is cut to ``cap``
    samples (``optim.samples_per_epoch``), padded by wrapping to a multiple of ``world_size`` so
    every rank gets the same count, and dealt out ``rank::world_size``. Independent of resume.
    """
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if cap is not None:
        perm = perm[: min(cap, n)]
    total = -(-len(perm) // world_size) * world_size
    perm = (perm * (total // max(len(perm), 1) + 1))[:total]
    return perm[rank::world_size]


class EpochSampler(Sampler[int]):
    """Sampler over :func:`epoch_indices`; call :meth:`set_epoch` before each epoch."""

    def __init__(self, n: int, seed: int, cap: int | None, ctx: DistContext):
        self.n, self.seed, self.cap, self.ctx = n, seed, cap, ctx
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_indices(self.n, self.epoch, self.seed, self.cap, self.ctx.rank, self.ctx.world_size))

    def __len__(self) -> int:
        m = min(self.cap, self.n) if self.cap is not None else self.n
        return -(-m // self.ctx.world_size)


def shard(n: int, ctx: DistContext) -> list[int]:
    """Validation indices of this rank: ``range(n)[rank::world_size]`` (no padding, no duplicates)."""
    return list(range(n))[ctx.rank :: ctx.world_size]
