"""Paper 001 segmentation variants a–d and their residual maps (§3, Tables 1 and 3).

Variants (:func:`variant_spec`):

====  ==========================================  ===========  =======================
 a    reverse DDPM steps from start_t, no mask      no mask      residual only
 b    as (a)                                        no mask      residual × smoothed mask
 c    masked healing, DDPM, every t                 KL, kl_num_t residual × smoothed mask
 d    masked healing, DDIM ``ddim_steps``           KL, 50 t     residual × smoothed mask
====  ==========================================  ===========  =======================

The anomaly map is ``|x - x̂'|`` (``(B, 1, *grid)``), times the latent mask ``(B, *latent)``
upsampled to the image grid (nearest neighbour, exact factor 2**levels) and smoothed with a
Gaussian of σ = ``gaussian_sigma`` latent voxels = ``gaussian_sigma · 2**levels`` image voxels
(:func:`upsample_mask`). The binary output mask is ``map >= r``, where ``r`` is the
(1 − ``segment.fpr``) quantile of the healthy validation maps' voxels inside the
:func:`foreground` (:func:`fpr_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, get_args

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ...config import ConfigError, SegmentConfig, Variant
from .healing import healing_timesteps
from .kl import kl_t_values

VARIANTS: tuple[str, ...] = get_args(Variant)
#: paper 001 §4.3: variant (d) uses L'_{400,600} with 50 evenly spaced t (unless kl_num_t is set)
VARIANT_D_KL_NUM_T = 50
FOREGROUND_FRACTION = 0.01


@dataclass(frozen=True)
class VariantSpec:
    """How one variant computes its map: KL t-set of the mask, healing sampler and timesteps."""

    name: str
    kl_t: tuple[int, ...] | None  # None: no KL mask at all
    heal_with_mask: bool
    mask_residual: bool
    sampler: str
    timesteps: tuple[int, ...]

    @property
    def kl_key(self) -> str | None:
        return None if self.kl_t is None else kl_key(self.kl_t)


def kl_key(t_values: Sequence[int]) -> str:
    """Name of a KL t-set in the thresholds file, e.g. ``t400-600_n201``."""
    return f"t{t_values[0]}-{t_values[-1]}_n{len(t_values)}"


def variant_spec(variant: str, cfg: SegmentConfig) -> VariantSpec:
    """The :class:`VariantSpec` of paper 001 variant ``a``/``b``/``c``/``d`` under ``cfg``."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown segmentation variant {variant!r}; one of {', '.join(VARIANTS)}")
    every = tuple(healing_timesteps(cfg.start_t))
    kl_c = tuple(kl_t_values(cfg.kl_t_range, cfg.kl_num_t))
    if variant == "a":
        return VariantSpec("a", None, False, False, "ddpm", every)
    if variant == "b":
        return VariantSpec("b", kl_c, False, True, "ddpm", every)
    if variant == "c":
        return VariantSpec("c", kl_c, True, True, "ddpm", every)
    kl_d = tuple(kl_t_values(cfg.kl_t_range, cfg.kl_num_t or VARIANT_D_KL_NUM_T))
    return VariantSpec("d", kl_d, True, True, "ddim", tuple(healing_timesteps(cfg.start_t, cfg.ddim_steps)))


def upsample_mask(mask: torch.Tensor, grid: Sequence[int], sigma_latent: float) -> torch.Tensor:
    """Latent mask ``(B, *s)`` -> smoothed image-grid mask ``(B, 1, *grid)`` float32 in [0, 1].

    Nearest-neighbour upsampling to ``grid`` (an exact factor per axis), then a Gaussian filter of
    σ = ``sigma_latent × factor`` image voxels per axis (boundary mode ``nearest``); σ = 0: no smoothing.
    """
    grid = tuple(int(g) for g in grid)
    up = F.interpolate(mask[:, None].float(), size=grid, mode="nearest")
    if sigma_latent <= 0:
        return up
    sig = (0.0, 0.0) + tuple(sigma_latent * g / s for g, s in zip(grid, mask.shape[1:]))
    sm = gaussian_filter(up.cpu().double().numpy(), sigma=sig, mode="nearest", truncate=4.0)
    return torch.from_numpy(sm.astype(np.float32)).to(mask.device)


def residual_map(x: torch.Tensor, healed: torch.Tensor, smoothed_mask: torch.Tensor | None) -> torch.Tensor:
    """``|x - x̂'|`` (× the smoothed upsampled mask when given), ``(B, 1, *grid)``."""
    res = (x.float() - healed.float()).abs()
    return res if smoothed_mask is None else res * smoothed_mask.to(res.device)


def foreground(x: torch.Tensor) -> torch.Tensor:
    """Per image, voxels above ``min + 1 % of (max − min)``: the head rather than the air. Bool, x's shape."""
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    level = (lo + FOREGROUND_FRACTION * (hi - lo)).view(-1, *([1] * (x.dim() - 1)))
    return x > level


def fpr_threshold(values: np.ndarray, fpr: float) -> float:
    """The (1 − ``fpr``) quantile of healthy map voxels: a fraction ``fpr`` of them lies above."""
    if values.size == 0:
        raise ValueError("no foreground voxels in the validation maps")
    return float(np.quantile(values.astype(np.float64), 1.0 - fpr))
