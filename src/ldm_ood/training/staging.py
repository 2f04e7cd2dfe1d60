"""Retraining a finished stage never destroys it: the new training is staged and swapped in at the end.

::

    <run>/<stage>/          the finished model (DONE): scoring reads it; a retrain never writes into it
    <run>/<stage>.staging/  a fresh training of a finished stage writes here (model, state, metrics, DONE)
    <run>/<stage>.old/      the previous stage folder, only for the moment of the swap

Where one training writes (:func:`choose_target`, rank 0 decides, every rank follows):

* ``resume`` and a staging folder exists: continue the staged training (after its last completed epoch);
* ``resume`` and the stage is finished: nothing to do (``already_done``);
* ``resume`` otherwise: the stage folder itself, as an unfinished stage always resumed;
* fresh and the stage is finished: the staging folder, emptied first; the old model stays in place
  and usable until the new one finishes (no flag needed: asking to train is asking to retrain);
* fresh otherwise: the stage folder (nothing finished there to protect; the loop empties it).

When a staged training has written its ``DONE``, :func:`swap_in` renames ``<stage>`` to
``<stage>.old``, the staging folder to ``<stage>``, then deletes ``<stage>.old``. A crash between
those steps is repaired by :func:`recover` at the start of the next training of the stage: the swap is
finished when the staging folder holds a finished training, otherwise rolled back. Only rank 0 touches
files.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from ..runs import RunDir
from .distributed import DistContext, barrier, broadcast_object


@dataclass(frozen=True)
class Target:
    """Where one training of ``stage`` writes: ``out`` (the run itself, or its staged view) and why."""

    run: RunDir
    stage: str
    staged: bool = False
    already_done: bool = False
    notes: tuple[str, ...] = ()  # terminal lines for rank 0: what was recovered, what stays in place

    @property
    def out(self) -> RunDir:
        """The run whose ``stage_dir(stage)`` this training writes into."""
        return self.run.staged() if self.staged else self.run


def _move(src: Path, dst: Path) -> None:
    """One rename of a folder (never onto an existing one); its own function so tests can interrupt it."""
    os.rename(src, dst)


def swap_in(run: RunDir, stage: str) -> None:
    """Replace ``<stage>/`` by the finished ``<stage>.staging/``: aside, into place, delete the old one."""
    live, new, old = run.stage_dir(stage), run.staging_dir(stage), run.retired_dir(stage)
    if old.exists():  # a leftover of an earlier, completed swap (recover runs before every training)
        shutil.rmtree(old)
    if live.exists():
        _move(live, old)
    _move(new, live)
    shutil.rmtree(old, ignore_errors=True)


def recover(run: RunDir, stage: str) -> str | None:
    """Finish or roll back a swap of ``stage`` that a crash interrupted; a line saying which, else None."""
    live, new, old = run.stage_dir(stage), run.staging_dir(stage), run.retired_dir(stage)
    new_finished = run.staged().done_path(stage).exists()
    if old.exists() and live.exists():  # both renames happened; only the deletion was left
        shutil.rmtree(old)
        return f"{stage}: removed {old}, left over from swapping in the retrained model"
    if old.exists() and new_finished:
        _move(new, live)
        shutil.rmtree(old)
        return f"{stage}: finished swapping in the retrained model {new} -> {live} (interrupted before)"
    if old.exists():
        _move(old, live)
        return f"{stage}: restored {live} from {old} (an interrupted swap)"
    if new_finished:  # DONE written, the process stopped before the first rename
        swap_in(run, stage)
        return f"{stage}: swapped in the retrained model that had finished in {new} -> {live}"
    return None


def _decide(run: RunDir, stage: str, resume: bool) -> Target:
    """Rank 0: pick the target (module docstring) and prepare its folder."""
    staging, finished = run.staging_dir(stage), run.done_path(stage).exists()
    if resume and staging.exists():
        line = (f"{stage}: resuming the retraining in {staging}; the finished model in {run.stage_dir(stage)} "
                "stays in place until it finishes")
        return Target(run, stage, staged=True, notes=(line,))
    if resume:
        return Target(run, stage, already_done=finished)
    shutil.rmtree(staging, ignore_errors=True)
    if not finished:
        return Target(run, stage)
    staging.mkdir(parents=True)
    line = (f"{stage}: training anew in {staging}; the finished model in {run.stage_dir(stage)} stays in place "
            "(and usable) until the new one finishes, then replaces it")
    return Target(run, stage, staged=True, notes=(line,))


def choose_target(run: RunDir, stage: str, resume: bool, ctx: DistContext) -> Target:
    """Where this training of ``stage`` writes, the same on every rank; its folder exists on return.

    Rank 0 first repairs a swap a crash interrupted (:func:`recover`), then decides."""
    target = None
    if ctx.is_main:
        recovered = recover(run, stage)
        target = _decide(run, stage, resume)
        if recovered:
            target = replace(target, notes=(recovered, *target.notes))
        target.out.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    target = broadcast_object(target, ctx)
    barrier(ctx)
    return target
