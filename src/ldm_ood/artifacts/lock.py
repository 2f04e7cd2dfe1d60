"""One writer per run directory: ``<run>/.lock``, held with ``flock`` while a command writes there.

A second ``train``, ``calibrate``, ``score`` or ``segment`` on the same run directory fails at once
with :class:`~ldm_ood.errors.RunLockedError` naming the process that holds it, instead of both
scoring every case or interleaving rows. The lock is the kernel's: it goes away with the process
(a ``kill -9`` never leaves a stale lock). Re-entrant within a process (``segment`` calibrating a
missing variant first takes it once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path
from typing import Iterator

from ..errors import RunLockedError

_held: dict[Path, list] = {}  # lock path -> [open file, depth]


@contextlib.contextmanager
def run_lock(root: str | Path, command: str) -> Iterator[None]:
    """Hold ``<root>/.lock`` for ``command`` (created with its folder); :class:`RunLockedError` when
    another process holds it."""
    path = (Path(root) / ".lock").resolve()
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RunLockedError(f"{path.parent}: {holder} is writing to this run directory; wait for it to finish "
                             "(one train / calibrate / score / segment per run at a time)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} ({command}: {' '.join(sys.argv[:3])})\n")
    fh.flush()
    _held[path] = [fh, 1]
    try:
        yield
    finally:
        del _held[path]
        fh.close()  # releases the flock
