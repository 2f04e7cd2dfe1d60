"""Input plausibility: is a scan of the kind the model was calibrated on, before its score is trusted?

Preprocessing pads any input into the grid, so a 3×3×3 volume, a single slice of a 3D model's
input, or a near-blank volume becomes a mostly empty grid that the first stage reconstructs
perfectly: the most "normal" score there is. An OOD detector must never call such inputs
in-distribution. Every preprocessed scan therefore carries :class:`InputStats`, and each
calibration fits an :class:`InputDomain` on the healthy validation scans; a scan outside it is
flagged OOD with the reason (``qc_reason``), whatever the model says (:mod:`ldm_ood.methods.runner`).

What is measured (on the grid the model sees, after the §3.1 intensity step):

* ``coverage``: the fraction of the grid inside the scan's field of view (the rest is padding);
* ``min_extent``: along the scan's thinnest axis, the fraction of the grid it spans (a 16×16×1
  slice fed to a 3D model spans 1 of 16 voxels);
* ``foreground``: the fraction of grid voxels above ``FOREGROUND_LEVEL`` (near-blank inputs, data
  in other units that the window maps to 0);
* ``saturated``: of the foreground voxels, the fraction at the top of the intensity window (data in
  other units that the window clips to 1).

The bounds are loose on purpose: they catch inputs that are not scans of the trained kind, not
the subtler shifts the model itself must detect. ``FACTORS`` says how far outside the validation
range a value may lie; without a fitted domain (runs calibrated by an older version) the
``DEFAULT`` bounds apply. Complex, boolean and non-finite data never get here: reading refuses them
(:func:`ldm_ood.data.io.read_image`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..artifacts.atomic import atomic_write_text

#: a grid voxel counts as foreground above this preprocessed intensity
FOREGROUND_LEVEL = 0.02
#: a foreground voxel is saturated at or above this preprocessed intensity
SATURATED_LEVEL = 0.999


@dataclass(frozen=True)
class InputStats:
    """Plausibility measures of one preprocessed scan (module docstring)."""

    coverage: float
    min_extent: float
    foreground: float
    saturated: float


def input_stats(x: torch.Tensor, fitted_shape: Sequence[int], grid: Sequence[int]) -> InputStats:
    """:class:`InputStats` of ``x (1, *grid)`` whose scan measured ``fitted_shape`` voxels before the
    final crop / pad to ``grid`` (MONAI ``ResizeWithPadOrCrop``'s ``orig_size``)."""
    spans = [min(int(s), int(g)) / int(g) for s, g in zip(fitted_shape, grid)]
    fg = x > FOREGROUND_LEVEL
    n_fg = int(fg.sum())
    return InputStats(
        coverage=float(math.prod(spans)),
        min_extent=float(min(spans)),
        foreground=n_fg / x.numel(),
        saturated=float((x >= SATURATED_LEVEL).sum()) / n_fg if n_fg else 0.0,
    )


@dataclass(frozen=True)
class InputDomain:
    """Bounds of plausible :class:`InputStats`: ``coverage``, ``min_extent`` and ``foreground`` at
    least their minimum, ``saturated`` at most its maximum; ``n``: validation scans it was fitted on
    (0 for the defaults)."""

    coverage_min: float
    min_extent_min: float
    foreground_min: float
    saturated_max: float
    n: int = 0

    @classmethod
    def fit(cls, stats: Iterable[InputStats]) -> InputDomain:
        """Bounds ``FACTORS`` outside the range of the validation scans' ``stats``."""
        s = list(stats)
        if not s:
            return DEFAULT
        sat = max(v.saturated for v in s)
        return cls(
            coverage_min=FACTORS["coverage"] * min(v.coverage for v in s),
            min_extent_min=FACTORS["min_extent"] * min(v.min_extent for v in s),
            foreground_min=FACTORS["foreground"] * min(v.foreground for v in s),
            saturated_max=sat + FACTORS["saturated"] * (1.0 - sat),
            n=len(s),
        )

    def reason(self, s: InputStats) -> str:
        """Why ``s`` is implausible ("" when it is plausible): every bound it breaks, with the values."""
        out = []
        if s.coverage < self.coverage_min:
            out.append(f"covers {s.coverage:.1%} of the grid (the rest is padding, ≥ {self.coverage_min:.1%} allowed)")
        if s.min_extent < self.min_extent_min:
            out.append(f"spans {s.min_extent:.1%} of the grid along its thinnest axis (≥ {self.min_extent_min:.1%} allowed)")
        if s.foreground < self.foreground_min:
            out.append(f"near-blank: {s.foreground:.2%} of voxels above background (≥ {self.foreground_min:.2%} allowed)")
        if s.saturated > self.saturated_max:
            out.append(f"{s.saturated:.1%} of its foreground at the top of the intensity window (≤ {self.saturated_max:.1%} "
                       "allowed: other units?)")
        return "; ".join(out)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2, allow_nan=False))

    @classmethod
    def load(cls, path: str | Path) -> InputDomain:
        """The domain saved at ``path``; :data:`DEFAULT` when there is none (older calibrations)."""
        path = Path(path)
        if not path.exists():
            return DEFAULT
        return cls(**json.loads(path.read_text()))


#: how far outside the validation range a value may lie: lower bounds are this fraction of the
#: validation minimum; the saturated bound goes this fraction of the way from the validation maximum to 1
FACTORS = {"coverage": 0.5, "min_extent": 0.5, "foreground": 0.25, "saturated": 0.9}
#: bounds without a fitted domain
DEFAULT = InputDomain(coverage_min=0.5, min_extent_min=0.5, foreground_min=0.01, saturated_max=0.98)
