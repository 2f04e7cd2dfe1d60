"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

A process killed mid-write, or a full disk, leaves the previous file intact and never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_target(path: Path) -> Path:
    """A new empty temporary file next to ``path`` (its folder created), replaced onto it with ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    tmp = atomic_target(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (tensors and plain containers: read back with ``weights_only``)."""
    path = Path(path)
    tmp = atomic_target(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
