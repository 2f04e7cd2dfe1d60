"""Anomaly map and image score of the AE / VAE baselines (paper 001 Table 1, after Baur et al. 2021).

For a batch ``x (B, 1, *grid)`` and its reconstruction ``x̂`` (:func:`.model.reconstruct`):

* map: ``|x − x̂|``, median-filtered over the spatial axes with a ``median_size``-wide window
  (Baur et al. median-filter their residuals, with a 5-voxel window; 1 = no filter). The map is not
  multiplied by a foreground mask: the sprites of the built-in benchmark may be darker than the
  foreground level, and the residual of the air is close to 0 anyway; the foreground is used where
  the threshold is calibrated (:mod:`.pipeline`);
* image score: the mean of the ``k = max(1, ⌈top_k_fraction · N⌉)`` largest values of the map
  (``N`` voxels per image), e.g. the largest 1 %;
* healed image: ``x̂``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import median_filter

from ...config.schema import AutoencoderConfig
from .model import reconstruct


def residual_map(x: torch.Tensor, x_hat: torch.Tensor, median_size: int = 1) -> torch.Tensor:
    """``|x − x̂|`` ``(B, 1, *grid)`` float32, median-filtered over the spatial axes with a window of
    ``median_size`` voxels per axis (scipy, boundary ``reflect``; 1 = unfiltered)."""
    res = (x.float() - x_hat.float()).abs()
    if median_size <= 1:
        return res
    size = (1, 1) + (median_size,) * (res.dim() - 2)
    filtered = median_filter(res.detach().cpu().numpy(), size=size, mode="reflect")
    return torch.from_numpy(np.ascontiguousarray(filtered, dtype=np.float32)).to(x.device)


def top_k_count(n: int, fraction: float) -> int:
    """``k = max(1, ⌈fraction · n⌉)``: how many of ``n`` voxels the image score averages."""
    return max(1, min(n, math.ceil(fraction * n - 1e-9)))


def top_k_score(anomaly_map: torch.Tensor, fraction: float) -> torch.Tensor:
    """Image score ``(B,)``: mean of the :func:`top_k_count` largest values of each map ``(B, ...)``."""
    flat = anomaly_map.flatten(1).float()
    k = top_k_count(flat.shape[1], fraction)
    return flat.topk(k, dim=1).values.mean(dim=1)


@dataclass
class AnomalyBatch:
    """One batch's outputs: ``healed`` (= x̂) and ``anomaly_map`` ``(B, 1, *grid)``, ``score`` ``(B,)``."""

    healed: torch.Tensor
    anomaly_map: torch.Tensor
    score: torch.Tensor


def anomaly_batch(model: torch.nn.Module, x: torch.Tensor, cfg: AutoencoderConfig, bf16: bool = False) -> AnomalyBatch:
    """Reconstruct ``x (B, 1, *grid)`` with the AE / VAE ``model`` (eval) and compute the map and score of ``cfg``."""
    x_hat = reconstruct(model, x, bf16)
    amap = residual_map(x, x_hat, cfg.median_size)
    return AnomalyBatch(x_hat, amap, top_k_score(amap, cfg.top_k_fraction))
