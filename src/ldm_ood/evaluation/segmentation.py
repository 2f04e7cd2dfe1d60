"""Paper 001 Tables 1–3 metrics of one segmentation system on one set, with case-bootstrap CIs.

⌈DICE⌉ and pixel AUPRC pool the voxels of all scans (paper 001) or average per scan; their 95 % CI
resamples *scans* with replacement (``n_boot`` replicates, percentile interval), since voxels of one
scan are not independent. Time per 100 slices (Table 3) is the mean ``seconds`` of the score rows
(each row: the scan's load time plus its share of its batch) × 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .metrics import Pooling, best_dice, dice_at_threshold, pixel_auprc

#: bootstrap replicates of the pixel-metric CIs (each recomputes the pooled metric; kept small)
SEGMENTATION_BOOT = 200


@dataclass(frozen=True)
class PixelMetrics:
    """⌈DICE⌉ (and the threshold reaching it), Dice at the validation threshold, pixel AUPRC, and
    the 95 % case-bootstrap intervals of ⌈DICE⌉ and AUPRC (None with fewer than 2 scans)."""

    best_dice: float
    best_dice_threshold: float
    best_dice_ci: tuple[float, float] | None
    dice_at_threshold: float | None
    pixel_auprc: float
    pixel_auprc_ci: tuple[float, float] | None


def _interval(values: Sequence[float]) -> tuple[float, float] | None:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v.size else None


def pixel_metrics(maps: Sequence[np.ndarray], gts: Sequence[np.ndarray], threshold: float | None,
                  pooling: Pooling = "pooled", n_boot: int = SEGMENTATION_BOOT, seed: int = 0) -> PixelMetrics:
    """:class:`PixelMetrics` of anomaly ``maps`` against boolean masks ``gts`` (same shapes, per scan)."""
    bd = best_dice(maps, gts, pooling=pooling)
    dice_ci = auprc_ci = None
    if len(maps) > 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = [rng.integers(0, len(maps), len(maps)) for _ in range(n_boot)]
        dice_ci = _interval([best_dice([maps[i] for i in d], [gts[i] for i in d], pooling=pooling).dice for d in draws])
        auprc_ci = _interval([pixel_auprc([maps[i] for i in d], [gts[i] for i in d], pooling) for d in draws])
    return PixelMetrics(
        best_dice=bd.dice, best_dice_threshold=bd.threshold, best_dice_ci=dice_ci,
        dice_at_threshold=dice_at_threshold(maps, gts, threshold, pooling) if threshold is not None else None,
        pixel_auprc=pixel_auprc(maps, gts, pooling), pixel_auprc_ci=auprc_ci,
    )


def seconds_per_100(rows: Sequence[Mapping[str, str]], column: str = "seconds", less: str | None = None) -> float | None:
    """Mean ``column`` of the score rows (minus their ``less`` column, where they have one) × 100; None
    without timed rows. ``less="score_seconds"``: the segmentation's time without its image-level score."""
    secs = []
    for r in rows:
        try:
            secs.append(float(r.get(column) or "nan") - (float(r.get(less) or 0.0) if less else 0.0))
        except ValueError:
            continue
    secs = [s for s in secs if math.isfinite(s)]
    return 100.0 * float(np.mean(secs)) if secs else None
