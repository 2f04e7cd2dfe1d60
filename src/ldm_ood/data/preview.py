"""Preview figures: tri-planar views of volumes, 2D slices, optional overlays and mask outlines.

Used for the synthetic benchmark's ``preview.png`` and reused by the report for anomaly-map
overlays. Display convention (radiological, as CT viewers): every panel has superior (sagittal,
coronal) or anterior (axial) at the top, and the patient's right on the left of axial / coronal
panels (anterior on the left of sagittal panels). Volumes are reoriented to RAS from their affine
first, so any array axis order is displayed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform


@dataclass
class Panel:
    """One image panel: ``image`` (H, W) as displayed (row 0 at the top), with an optional
    ``overlay`` (H, W) drawn with ``overlay_cmap`` at ``alpha`` (NaN / values ≤ ``overlay_min`` are
    transparent) and an optional boolean ``contour`` (H, W) outlined in ``contour_color``."""

    image: np.ndarray
    title: str = ""
    overlay: np.ndarray | None = None
    contour: np.ndarray | None = None
    cmap: str = "gray"
    vmin: float = 0.0
    vmax: float = 1.0
    overlay_cmap: str = "hot"
    alpha: float = 0.5
    overlay_min: float | None = None
    overlay_max: float | None = None
    contour_color: str = "lime"


def to_ras(volume: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """Reorder / flip the axes of a 3D ``volume`` so that index increases towards R, A, S."""
    if affine is None:
        return np.asarray(volume)
    ornt = ornt_transform(io_orientation(np.asarray(affine)), axcodes2ornt(("R", "A", "S")))
    return apply_orientation(np.asarray(volume), ornt)


def display_slice(slice_xy: np.ndarray) -> np.ndarray:
    """A RAS-ordered 2D slice ``(first axis, second axis)`` as displayed: transposed, both flipped."""
    return np.ascontiguousarray(np.asarray(slice_xy).T[::-1, ::-1])


def triplanar(
    volume: np.ndarray, affine: np.ndarray | None = None, index: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sagittal, coronal and axial slices through ``index`` (RAS voxel, default: the centre) of a
    3D ``volume`` (X, Y, Z), each ready for ``imshow`` (see module docstring)."""
    v = to_ras(volume, affine)
    i, j, k = (np.array(v.shape) // 2) if index is None else index
    return display_slice(v[i, :, :]), display_slice(v[:, j, :]), display_slice(v[:, :, k])


def volume_panels(
    volume: np.ndarray, title: str = "", affine: np.ndarray | None = None,
    overlay: np.ndarray | None = None, contour: np.ndarray | None = None,
    index: Sequence[int] | None = None, **kwargs,
) -> list[Panel]:
    """Three :class:`Panel` (sagittal, coronal, axial) of a volume and its optional overlay / mask."""
    views = triplanar(volume, affine, index)
    ov = triplanar(overlay, affine, index) if overlay is not None else (None,) * 3
    ct = triplanar(contour, affine, index) if contour is not None else (None,) * 3
    return [
        Panel(views[n], title if n == 0 else "", None if ov[n] is None else ov[n],
              None if ct[n] is None else ct[n] > 0.5, **kwargs)
        for n in range(3)
    ]


def slice_panel(slice_xy: np.ndarray, title: str = "", overlay: np.ndarray | None = None,
                contour: np.ndarray | None = None, **kwargs) -> Panel:
    """A :class:`Panel` of an axial 2D slice stored (X, Y) in RAS order."""
    return Panel(display_slice(slice_xy), title, None if overlay is None else display_slice(overlay),
                 None if contour is None else display_slice(contour) > 0.5, **kwargs)


def save_preview_grid(panels: Sequence[Panel], path: str | Path, ncols: int = 12,
                      panel_size: float = 1.6, dpi: int = 80) -> Path:
    """Draw ``panels`` row-major in a grid with ``ncols`` columns and save a PNG at ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(ncols * panel_size, nrows * (panel_size + 0.25)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, p in zip(axes.ravel(), panels):
        ax.imshow(p.image, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, interpolation="nearest")
        if p.overlay is not None:
            ov = np.ma.masked_invalid(np.asarray(p.overlay, dtype=np.float64))
            if p.overlay_min is not None:
                ov = np.ma.masked_less_equal(ov, p.overlay_min)
            ax.imshow(ov, cmap=p.overlay_cmap, alpha=p.alpha, vmin=p.overlay_min, vmax=p.overlay_max,
                      interpolation="nearest")
        if p.contour is not None and p.contour.any():
            ax.contour(p.contour.astype(float), levels=[0.5], colors=[p.contour_color], linewidths=0.8)
        if p.title:
            ax.set_title(p.title, fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=dpi)
    return path
