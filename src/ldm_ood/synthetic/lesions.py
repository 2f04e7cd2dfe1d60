"""Haemorrhage-like lesions in head-CT slices: the built-in analogue of paper 001 Table 3's CT data.

Paper 001 (§4.3, Table 3) segments intracerebral haemorrhages in head CT. :func:`add_haemorrhage`
paints one acute intraparenchymal haematoma into an axial slice in Hounsfield units:

* **where** — centred in the brain parenchyma, at least the lesion's radius (in pixels) inside the brain
  mask (its distance transform), so the lesion lies in the parenchyma, not on the skull;
* **shape and size** — an ellipse of equivalent diameter U(10, 40) mm (small to lobar haematomas; clipped to
  what fits inside the brain of that slice), aspect ratio U(1, 1.8), random orientation, its boundary
  made irregular by a smooth random radial profile (a few lobes, ±15 % of the radius);
* **density** — acute blood, U(50, 90) HU (brain parenchyma is 25–40 HU here), with a smooth ±4 HU
  texture and the slice's own noise level (``noise_hu``); one pixel of partial volume at the edge;
* **mass effect** — the tissue around it is pushed outward before the lesion is painted: a radial
  displacement of ``mass_effect`` × radius at the lesion's edge, decaying as a Gaussian of width 1.5 radii and
  fading out at the brain's edge (the skull stays), applied by resampling the slice (linear interpolation),
  so ventricles and sulci nearby are compressed;
* **oedema** — a thin perihaematomal rim (1–2 pixels) 5–10 HU below the surrounding tissue.

The ground-truth mask is the haematoma (pixels whose lesion fraction is ≥ 0.5), not its rim nor the
displaced tissue: those are changes too, as in real scans, so a perfect detector of "what differs" does not
reach Dice 1. Everything derives from ``rng``: the same generator state gives the same lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .anatomy import smooth_field

#: equivalent diameter range of the haematoma in mm, and its density range in HU
DIAMETER_MM = (10.0, 40.0)
BLOOD_HU = (50.0, 90.0)


@dataclass(frozen=True)
class Haemorrhage:
    """The lesion drawn: centre (pixels), radius (pixels), density (HU), and the boolean mask ``(H, W)``."""

    centre: tuple[float, float]
    radius_px: float
    hu: float
    mask: np.ndarray


def _push_outward(hu: np.ndarray, depth: np.ndarray, centre: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """Resample ``hu (H, W)`` so tissue near ``centre`` moves outward by ``strength·radius`` at the edge; the
    displacement fades to 0 over the last 3 pixels inside the brain (``depth``: distance to its edge), so the
    skull does not move."""
    ii, jj = np.meshgrid(np.arange(hu.shape[0], dtype=np.float64), np.arange(hu.shape[1], dtype=np.float64),
                         indexing="ij")
    di, dj = ii - centre[0], jj - centre[1]
    d = np.hypot(di, dj)
    shift = strength * radius * np.exp(-0.5 * ((d - radius).clip(min=0) / (1.5 * radius)) ** 2) * np.clip(depth / 3, 0, 1)
    # a pixel at distance d shows what was at distance d - shift (pulled from closer to the centre)
    scale = np.where(d > 1e-6, np.clip(d - shift, 0, None) / np.maximum(d, 1e-6), 0.0)
    coords = np.stack([centre[0] + di * scale, centre[1] + dj * scale])
    return ndi.map_coordinates(hu, coords, order=1, mode="nearest").astype(np.float32)


def add_haemorrhage(
    hu: np.ndarray,
    brain: np.ndarray,
    spacing_mm: float,
    rng: np.random.Generator,
    noise_hu: float = 3.0,
    mass_effect: float = 0.25,
) -> tuple[np.ndarray, Haemorrhage]:
    """One haematoma in an axial slice (module docstring).

    Args:
        hu: ``(H, W)`` slice in HU.
        brain: ``(H, W)`` bool brain mask of the slice.
        spacing_mm: in-plane pixel size.
        rng: the lesion's generator.
        noise_hu: standard deviation of the white noise inside the lesion (the scan's noise).
        mass_effect: outward displacement at the lesion's edge, as a fraction of its radius.

    Returns:
        ``(slice (H, W) float32 HU, Haemorrhage)``. Raises ValueError when the slice holds no brain.
    """
    x = np.asarray(hu, dtype=np.float32)
    brain = np.asarray(brain, dtype=bool)
    if x.ndim != 2 or brain.shape != x.shape:
        raise ValueError(f"add_haemorrhage needs a 2D slice and a brain mask of its shape, got {x.shape}, {brain.shape}")
    depth = ndi.distance_transform_edt(brain)
    if depth.max() < 1.5:
        raise ValueError("add_haemorrhage: the slice holds no brain to put a haemorrhage in")
    radius = 0.5 * rng.uniform(*DIAMETER_MM) / spacing_mm
    radius = float(np.clip(radius, 1.0, 0.8 * (depth.max() - 0.5)))  # what fits inside this slice's brain
    candidates = np.argwhere(depth >= radius + 0.5)
    centre = candidates[int(rng.integers(len(candidates)))].astype(np.float64)
    aspect, theta = rng.uniform(1.0, 1.8), rng.uniform(0, np.pi)
    lobes = rng.normal(0, 1, size=(3, 2)) * np.array([[0.08], [0.05], [0.03]])
    value = rng.uniform(*BLOOD_HU)
    oedema = rng.uniform(5.0, 10.0)

    out = _push_outward(x, depth, centre, radius, mass_effect)
    ii, jj = np.meshgrid(np.arange(x.shape[0]), np.arange(x.shape[1]), indexing="ij")
    u = (ii - centre[0]) * np.cos(theta) + (jj - centre[1]) * np.sin(theta)
    v = -(ii - centre[0]) * np.sin(theta) + (jj - centre[1]) * np.cos(theta)
    a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)  # same area as the circle of ``radius``
    angle = np.arctan2(v, u)
    edge = 1.0 + sum(c * np.cos((k + 2) * angle) + s * np.sin((k + 2) * angle) for k, (c, s) in enumerate(lobes))
    r = np.hypot(u / a, v / b) / edge  # 1 on the irregular boundary
    scale = max(min(a, b), 1.0)
    fraction = np.clip(0.5 - (r - 1.0) * scale, 0.0, 1.0) * brain  # one pixel of partial volume
    rim = np.clip(1.0 - np.abs(r - 1.0 - 1.5 / scale) * scale / 1.5, 0.0, 1.0) * brain * (fraction < 0.5)
    texture = 4.0 * smooth_field(rng, x.shape, 4)[0]
    blood = value + texture + rng.normal(0.0, noise_hu, size=x.shape)
    out = (out - oedema * rim).astype(np.float32)
    out = ((1.0 - fraction) * out + fraction * blood).astype(np.float32)
    mask = fraction >= 0.5
    return out, Haemorrhage((float(centre[0]), float(centre[1])), radius, float(value), mask)
