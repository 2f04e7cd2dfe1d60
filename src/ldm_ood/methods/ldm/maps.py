"""Paper 000 §2.3 spatial anomaly maps: per-voxel validation statistics, z-scored MAE maps, NIfTI output.

The MAE maps ``|x − x̂_t|`` at the map t-values (default 100, 200, 300, 400) are z-scored per voxel
with the mean and standard deviation of the validation scans' MAE maps at the same t and voxel, and
averaged over t into one map per scan. The map lives on the preprocessing grid and is written on the
**input's native grid and affine** through ``Preprocessor.invert``.

**Voxel std floor**: ``σ → max(σ, VOXEL_STD_FLOOR = 0.01)``, 1 % of the [0, 1] intensity range, so
that background voxels every validation scan reconstructs perfectly (σ = 0) do not turn float noise
into huge z-scores. σ is the sample standard deviation (ddof = 1); with one validation scan σ = floor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..outputs import write_on_input_grid

VOXEL_STD_FLOOR = 1e-2


def anomaly_map(mae_maps: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """§2.3 map: per-voxel z-scores of the MAE maps, averaged over map t-values.

    Args:
        mae_maps: ``(B, n_map, *S)``; mean, std: ``(n_map, *S)`` (std already floored).
    Returns:
        ``(B, *S)`` float32.
    """
    return ((mae_maps.float() - mean.float()) / std.float()).mean(dim=1)


@dataclass
class VoxelStats:
    """Per-voxel mean and (floored) std of validation MAE maps: ``(n_map, *S)`` each."""

    t_values: tuple[int, ...]
    mean: torch.Tensor
    std: torch.Tensor

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"t_values": json.dumps(list(self.t_values)), "std_floor": repr(VOXEL_STD_FLOOR)}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"mean": self.mean.contiguous().float(), "std": self.std.contiguous().float()}, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "VoxelStats":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            t_values = tuple(json.loads(fh.metadata()["t_values"]))
        d = load_file(str(path))
        return cls(t_values, d["mean"], d["std"])


class VoxelAccumulator:
    """Streaming per-voxel mean / sample std of MAE maps (float64 sums; memory ``O(n_map · |S|)``)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None

    def add(self, maps: torch.Tensor) -> None:
        """``maps (B, n_map, *S)``."""
        m = maps.detach().to("cpu", torch.float64)
        if self.sum is None:
            self.sum, self.sumsq = torch.zeros_like(m[0]), torch.zeros_like(m[0])
        self.sum += m.sum(0)
        self.sumsq += (m * m).sum(0)
        self.n += m.shape[0]

    def finish(self, t_values: Sequence[int], floor: float = VOXEL_STD_FLOOR) -> VoxelStats:
        if self.n == 0 or self.sum is None:
            raise ValueError("no validation maps to calibrate on")
        mean = self.sum / self.n
        var = (self.sumsq - self.n * mean * mean) / max(self.n - 1, 1) if self.n > 1 else torch.zeros_like(mean)
        std = var.clamp_min(0).sqrt().clamp_min(floor)
        return VoxelStats(tuple(int(t) for t in t_values), mean.float(), std.float())



def write_anomaly_map(preprocessor: Any, amap: torch.Tensor, meta: Any, path: str | Path) -> Path:
    """Write ``amap (*grid)`` as NIfTI on the input's native grid and affine (``Preprocessor.invert``)."""
    return write_on_input_grid(preprocessor, amap.detach().cpu().numpy(), meta, path)
