"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

A process killed mid-write, or a full disk, leaves the previous file intact and never a torn one.
Files get the permissions of an ordinary ``open()`` under the process umask (``0o666 & ~umask``,
0644 under umask 022), not ``mkstemp``'s private 0600. A failed write removes its temporary file
and raises :class:`~ldm_ood.errors.OutputError` naming the target, not the temporary name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _suffix(name: str) -> str:
    """``.nii.gz`` / ``.png`` / ``.csv``: kept on the temporary file so format-by-suffix writers work."""
    suffixes = Path(name).suffixes
    return "".join(suffixes[-2:]) if len(suffixes) > 1 and suffixes[-1] == ".gz" else "".join(suffixes[-1:])


def atomic_target(path: Path) -> Path:
    """A new empty temporary file next to ``path`` (its folder created) with ``path``'s suffix and
    umask permissions, to be replaced onto it with ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{_suffix(path.name)}")
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """``with atomic_output(p) as tmp: write(tmp)``: ``tmp`` replaces ``p`` when the block succeeds;
    on any error the temporary file is removed, ``p`` is left as it was, and an ``OSError`` (disk
    full, read-only folder) becomes :class:`OutputError` naming ``p``."""
    path = Path(path)
    try:
        tmp = atomic_target(path)
    except OSError as err:
        raise OutputError(path, f"cannot write here: {err.strerror or err}") from err
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # again: a writer may have replaced the file (safetensors does)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(path, f"could not be written: {err.strerror or err}; nothing was left in its place") from err
        raise


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` then replace ``path`` atomically (:func:`atomic_output`); returns ``path``."""
    with atomic_output(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (tensors and plain containers: read back with ``weights_only``)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
