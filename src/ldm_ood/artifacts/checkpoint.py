"""Checkpoints: weights as ``model.safetensors`` + ``config.json``; resume state as ``state.pt``.

Every file is written atomically (temporary file + ``os.replace``), so a process killed mid-write
leaves the previous checkpoint intact. Weights are never unpickled; the resume state (optimizer
tensors, epoch counters, RNG states) is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import IntegrityError
from .atomic import atomic_torch_save, atomic_write, atomic_write_text
from .integrity import file_sha256, verify_sha256


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save_model(directory: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (contiguous CPU tensors) and ``config.json`` (``config`` plus the
    weights' ``weights_sha256``, checked on load) into ``directory``."""
    directory = Path(directory)
    state = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    weights = atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    record = {**config, "weights_sha256": file_sha256(weights)}
    atomic_write_text(directory / "config.json", json.dumps(record, indent=2, default=str))


def load_model_config(directory: str | Path) -> dict[str, Any]:
    """``<directory>/config.json``; ``FileNotFoundError`` when missing, :class:`IntegrityError` when unparsable."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model here (train it first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(path, f"not a readable model record ({err}); retrain the stage") from None


def load_weights(model: torch.nn.Module, directory: str | Path, device: str | torch.device = "cpu",
                 sha256: str | None = None, redo: str = "retrain the stage") -> torch.nn.Module:
    """Load ``model.safetensors`` from ``directory`` into ``model`` (strict), after checking its
    ``sha256`` (recorded in ``config.json``; None: not checked). A changed, truncated or mismatching
    file is an :class:`IntegrityError` naming it (``redo``: what to do about it)."""
    path = Path(directory) / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model here (train it first)")
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error types for a torn header / body
        raise IntegrityError(path, f"not a readable safetensors file ({err}); {redo}") from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    nonfinite = f"; {len(bad)} of its {len(state)} tensors hold NaN/Inf (non-finite) values" if bad else ""
    verify_sha256(path, sha256, Path(directory) / "config.json", redo + nonfinite)
    try:
        _unwrap(model).load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise IntegrityError(path, f"does not fit the network described in config.json ({first}); {redo}") from None
    return model


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Resume state: optimizer/scheduler state dicts, epoch, best val loss, RNG states."""
    atomic_torch_save(state, path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    """The resume state (None when there is none), read with ``weights_only=True``: a file holding
    anything but tensors and plain containers (a crafted pickle) or a torn one is an
    :class:`IntegrityError` naming it, and is never executed."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise IntegrityError(path, f"refused: not plain tensors, or torn (torch.load weights_only=True: {first}); "
                                   "a pickle that could run code is never executed; start the stage afresh "
                                   "(without --resume)") from None
