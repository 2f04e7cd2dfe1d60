"""Scoring sharded over the processes of a ``torchrun`` launch, on one node or several.

``torchrun --nproc_per_node=N [--nnodes=M ...] -m ldm_ood score --run-dir RUN ...`` (or ``segment``)
starts N·M copies of the command; together they write exactly the files one process writes:

* **one lock** — rank 0 holds the run's lock (:mod:`ldm_ood.artifacts.lock`) for the whole launch;
  when it cannot take it, every rank stops with its error. Other commands on the run fail at once.
* **one plan** — rank 0 repairs the score files and works out what is left to do (resume, the
  calibration id check); every rank receives that plan (:func:`on_main`).
* **a deterministic split** — a set's cases are cut into batches of the method's ``batch_size`` in
  case order, as one process cuts them (finished cases taken out: ``runner.pending_batches``), and
  pending batch ``k`` (counted over all the sets of the command) goes to rank ``k mod world size``
  (:func:`my_batches`). Every scan is scored in
  the batch one process would have put it in, and its noise is seeded by its case id
  (:func:`ldm_ood.samplers.noise.case_seed`), never by its rank, so rows and maps are the same bit
  for bit (at equal thread counts and precision), also after a kill and a rerun.
* **own rows** — rank ``r`` appends its rows to ``<set>.csv.parts/rank-<r>.csv``
  (:func:`ldm_ood.methods.records.part_path`); once every rank is done, rank 0 appends them to
  ``<set>.csv`` in case order and deletes the parts. A killed rank leaves its part behind: the next
  launch (or a single process) counts those rows as done and merges them with the new ones.
* **rank 0 decides for all** — the measured precision (``auto``), a calibration that a segmentation
  method makes first, ``precision.json`` and the progress bar.

Outside ``torchrun`` every helper here is the single-process identity.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch.distributed as dist

from ..artifacts.lock import run_lock
from ..data.manifest import Case
from ..training.distributed import DistContext, init_distributed

T = TypeVar("T")

#: how long a rank waits for the others at a collective: a scan can take many minutes on CPU at the
#: paper preset, and a rank that dies ends the launch through ``torchrun`` long before this
COLLECTIVE_TIMEOUT = timedelta(days=1)

_joined: DistContext | None = None  # the group this process joined for a sharded command
_solo_depth = 0  # > 0 while rank 0 runs something alone for every rank (on_main)


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with other ranks (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def joined() -> bool:
    """Whether this process is inside a sharded command's process group (:func:`sharded_launch`)."""
    return _joined is not None


def world() -> DistContext:
    """This process's rank, world size and device in the sharded command it runs; one process
    (rank 0 of 1) outside such a command, or while :func:`on_main` runs something on rank 0 alone."""
    if _joined is None or _solo_depth:
        return DistContext()
    return _joined


@contextlib.contextmanager
def sharded_launch(root: str | Path, command: str) -> Iterator[DistContext]:
    """Join the process group of this ``torchrun`` launch; rank 0 holds ``<root>/.lock`` until the
    end (a :class:`~ldm_ood.errors.RunLockedError` there stops every rank). The group is left
    without a barrier: a rank that raises must not wait for the others."""
    global _joined
    ctx = init_distributed(timeout=COLLECTIVE_TIMEOUT)
    with contextlib.ExitStack() as stack:
        try:
            _joined = ctx
            on_main(lambda: stack.enter_context(run_lock(root, f"{command} (torchrun, {ctx.world_size} ranks)")))
            yield ctx
        finally:
            _joined = None
            if dist.is_initialized():
                dist.destroy_process_group()


def _portable(err: BaseException) -> BaseException:
    """``err`` itself when it survives pickling, else a ``RuntimeError`` with its type and message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run by rank 0 alone (with no collectives inside: :func:`world` is one
    process meanwhile); every rank returns its result or raises its exception."""
    global _solo_depth
    ctx = world()
    if not ctx.distributed:
        return fn(*args, **kwargs)
    outcome: list[Any] = [None, None]  # [result, error]
    if ctx.is_main:
        _solo_depth += 1
        try:
            outcome[0] = fn(*args, **kwargs)
        except Exception as err:  # every rank raises it below
            outcome[1] = err
        finally:
            _solo_depth -= 1
        dist.broadcast_object_list([outcome[0], None if outcome[1] is None else _portable(outcome[1])], src=0)
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if world().distributed:
        dist.barrier()


def sum_over_ranks(values: Sequence[int]) -> list[int]:
    """Element-wise sum of integer counts over the ranks (``values`` in one process)."""
    if not world().distributed:
        return list(values)
    out: list[Any] = [None] * world().world_size
    dist.all_gather_object(out, list(values))
    return [sum(col) for col in zip(*out)]


def gather(items: list[T]) -> list[T]:
    """Every rank's ``items``, concatenated in rank order, on every rank."""
    if not world().distributed:
        return list(items)
    out: list[Any] = [None] * world().world_size
    dist.all_gather_object(out, list(items))
    return [item for part in out for item in part]


def my_batches(batches: Sequence[list[Case]], ctx: DistContext | None = None, start: int = 0) -> list[list[Case]]:
    """This rank's batches: batch ``k`` of ``batches`` (a job's pending batches, in order) goes to rank
    ``(start + k) mod world size``; every batch in one process. ``start``: the batches dealt before
    (earlier jobs), so that sets smaller than a batch per rank still spread over the ranks."""
    ctx = ctx or world()
    return [batch for k, batch in enumerate(batches, start) if k % ctx.world_size == ctx.rank]
