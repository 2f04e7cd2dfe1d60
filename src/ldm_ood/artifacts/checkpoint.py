"""Checkpoints: weights as ``model.safetensors`` + ``config.json``; resume state as ``state.pt``.

Every file is written atomically (temporary file + ``os.replace``), so a process killed mid-write
leaves the previous checkpoint intact. Weights are never unpickled; the resume state (optimizer
tensors, epoch counters, RNG states) is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_target, atomic_torch_save, atomic_write_text


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save_model(directory: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (contiguous CPU tensors) and ``config.json`` into ``directory``."""
    directory = Path(directory)
    state = {k: v.detach().to("cpu").contiguous() for k, v in _unwrap(model).state_dict().items()}
    tmp = atomic_target(directory / "model.safetensors")
    save_file(state, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2, default=str))


def load_model_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model here (train it first)")
    return json.loads(path.read_text())


def load_weights(model: torch.nn.Module, directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load ``model.safetensors`` from ``directory`` into ``model`` (strict)."""
    path = Path(directory) / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model here (train it first)")
    _unwrap(model).load_state_dict(load_file(str(path), device=str(device)))
    return model


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Resume state: optimizer/scheduler state dicts, epoch, best val loss, RNG states."""
    atomic_torch_save(state, path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
