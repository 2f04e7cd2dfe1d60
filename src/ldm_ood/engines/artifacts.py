"""Exported engine files (ONNX, OpenVINO IR) cached in a folder, keyed by what they were made from.

A file is named by :func:`artifact_key`: the sha256 of the network's weights (every state-dict
tensor's name, dtype, shape and bytes), its probe input shapes without the batch axis, the
precision, the engine and its package version. Retraining a network (new weights), another grid
(new shapes) or another precision gives another key, so a stale file is never picked up: the new
one is built beside it.

Each artifact is ``<stem><suffix>`` files plus ``<stem>.json``, its manifest, holding the sha256 of
every file. The files are built in a temporary folder and moved into place one by one, the manifest
written last (``artifacts.atomic``): a file without a manifest, or whose bytes differ from the
manifest's sha256 (a torn write, an edited or replaced file), is reported with a loud warning and
rebuilt. A file that passes is still checked against PyTorch on a probe input by its engine's
first use (``engines.select``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..artifacts.atomic import atomic_write_text
from ..errors import OutputError


def weights_sha256(module: nn.Module) -> str:
    """sha256 over every state-dict entry of ``module``: name, dtype, shape and bytes (any memory layout)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        shape = t.shape
        t = t.detach().cpu().reshape(-1).contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def artifact_key(module: nn.Module, shapes: Sequence[Sequence[int]], precision: str, engine: str, version: str) -> str:
    """24 hex digits of sha256(weights, input shapes without batch, precision, engine, engine version)."""
    src = json.dumps([weights_sha256(module), [list(s[1:]) for s in shapes], precision, engine, version])
    return hashlib.sha256(src.encode()).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    """An exported engine file set: ``paths`` (in ``suffixes`` order), its ``manifest``; ``reused``: it was
    already there and intact; ``problem``: why an existing one was rebuilt (None otherwise)."""

    paths: list[Path]
    manifest: Path
    reused: bool
    problem: str | None = None


def check_artifact(paths: Sequence[Path], manifest: Path) -> str | None:
    """None when every file is present with the sha256 its manifest records; else what is wrong."""
    try:
        recorded = json.loads(manifest.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{manifest}: unreadable manifest ({err})"
    for p in paths:
        if not p.exists():
            return f"{p}: missing"
        if recorded.get(p.name) != file_sha256(p):
            return f"{p}: sha256 differs from the one recorded in {manifest.name} (changed after it was written)"
    return None


def cached_artifact(directory: Path, stem: str, suffixes: Sequence[str], build: Callable[[Path], None],
                    meta: dict, rebuild: bool = False) -> Artifact:
    """The artifact ``directory/<stem><suffix>…``: reused when intact, else built by ``build(tmp_stem)``
    (which writes ``tmp_stem + suffix`` for each suffix) and moved into place, manifest last.

    ``rebuild``: build anew even if intact (a file that failed its probe check). Raises
    :class:`OutputError` when ``directory`` cannot be written.
    """
    paths = [directory / f"{stem}{s}" for s in suffixes]
    manifest = directory / f"{stem}.json"
    problem = None
    if manifest.exists() or any(p.exists() for p in paths):
        problem = "rebuilt on request" if rebuild else check_artifact(paths, manifest)
        if problem is None:
            return Artifact(paths, manifest, True)
        warnings.warn(f"exported engine file rejected, rebuilding it: {problem}", stacklevel=2)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{stem}."))
    except OSError as err:
        raise OutputError(directory, f"cannot write exported engine files here: {err.strerror or err}") from err
    try:
        manifest.unlink(missing_ok=True)  # no manifest while the files change: a crash leaves a rejected set
        build(tmp / stem)
        for p in paths:
            os.replace(tmp / p.name, p)
        sums = {p.name: file_sha256(p) for p in paths}
        atomic_write_text(manifest, json.dumps({**meta, "sha256": sums}, indent=1, sort_keys=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Artifact(paths, manifest, False, problem)
