"""Preview figures: tri-planar views of volumes, 2D slices, optional overlays and mask outlines.

Used for the synthetic benchmark's ``preview.png``, the training previews (:func:`save_row_preview`) and by the report's anomaly-map overlays and
segmentation examples (:func:`display_views`, :func:`unit_intensity`). Display convention (radiological, as CT viewers): every panel has superior (sagittal,
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


def ras_index(index: Sequence[int], shape: Sequence[int], affine: np.ndarray | None) -> tuple[int, ...]:
    """The voxel ``index`` of a 3D volume of ``shape`` stored as ``affine`` says, as an index of its
    :func:`to_ras` array (the same voxel after the axes are reordered / flipped)."""
    if affine is None:
        return tuple(int(i) for i in index)
    ornt = ornt_transform(io_orientation(np.asarray(affine)), axcodes2ornt(("R", "A", "S")))
    out = [0] * len(index)
    for (target, flip), i, n in zip(ornt, index, shape):
        out[int(target)] = int(i) if flip > 0 else int(n) - 1 - int(i)
    return tuple(out)


def view_aspects(affine: np.ndarray | None) -> tuple[float, float, float]:
    """Height / width of a displayed pixel in the sagittal, coronal and axial views of :func:`triplanar`
    (``imshow``'s ``aspect``): the voxel spacings the ``affine`` gives, so thick slices look thick."""
    if affine is None:
        return (1.0, 1.0, 1.0)
    a = np.asarray(affine, dtype=np.float64)
    ornt = ornt_transform(io_orientation(a), axcodes2ornt(("R", "A", "S")))
    sx, sy, sz = (float(np.linalg.norm(a[:3, int(np.flatnonzero(ornt[:, 0] == axis)[0])])) for axis in range(3))
    return sz / sy, sz / sx, sy / sx


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


def display_views(image: np.ndarray, affine: np.ndarray | None = None,
                  index: Sequence[int] | None = None) -> list[np.ndarray]:
    """Display views of a 2D slice ``(X, Y)`` stored in RAS order (one view) or of a 3D volume
    (sagittal, coronal, axial through ``index``, a RAS voxel (:func:`ras_index`), default the centre;
    reoriented with ``affine``; see module docstring)."""
    v = np.asarray(image, dtype=np.float32)
    return [display_slice(v)] if v.ndim == 2 else list(triplanar(v, affine, index))


def unit_intensity(array: np.ndarray, modality: str = "ct", ct_window: Sequence[float] = (-15.0, 100.0)) -> np.ndarray:
    """The intensity step of the preprocessing (paper 000 §3.1) on the native grid, for display with
    a fixed [0, 1] window: CT clamped to ``ct_window`` HU and rescaled; other modalities min–max
    rescaled. A scaled or skull-stripped scan then looks like what the model sees."""
    from ..data.transforms import to_unit_range_ct

    a = np.asarray(array, dtype=np.float32)
    if modality == "ct":
        return to_unit_range_ct(a, (float(ct_window[0]), float(ct_window[1])))
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


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


def _colour(values: np.ndarray, cmap: str, vmin: float | None, vmax: float | None) -> np.ndarray:
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    norm = np.clip((np.nan_to_num(v, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    return colormaps[cmap](norm)[..., :3]


def render_panel(p: Panel, cell: int = 96) -> np.ndarray:
    """RGB float image ``(h, w, 3)`` of a panel, upsampled by an integer factor towards ``cell`` px:
    the image, the overlay alpha-blended where it is finite and above ``overlay_min``, and the
    contour's boundary pixels in ``contour_color``."""
    from matplotlib.colors import to_rgb
    from scipy import ndimage as ndi

    f = max(1, int(round(cell / max(p.image.shape))))
    up = lambda a: np.repeat(np.repeat(np.asarray(a), f, axis=0), f, axis=1)  # noqa: E731
    rgb = _colour(up(p.image), p.cmap, p.vmin, p.vmax)
    if p.overlay is not None:
        ov = up(p.overlay).astype(np.float64)
        shown = np.isfinite(ov) & (ov > p.overlay_min if p.overlay_min is not None else True)
        col = _colour(ov, p.overlay_cmap, p.overlay_min, p.overlay_max)
        rgb = np.where(shown[..., None], (1 - p.alpha) * rgb + p.alpha * col, rgb)
    if p.contour is not None:
        m = up(p.contour).astype(bool)
        edge = m & ~ndi.binary_erosion(m, border_value=0)
        rgb[edge] = to_rgb(p.contour_color)
    return rgb


def save_preview_grid(panels: Sequence[Panel], path: str | Path, ncols: int = 12, cell: int = 96,
                      dpi: int = 100) -> Path:
    """Tile ``panels`` row-major (``ncols`` per row, each rendered by :func:`render_panel`) with their
    titles above, and save a PNG at ``path``. One image, one axes: fast for many panels."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = [render_panel(p, cell) for p in panels] or [np.zeros((cell, cell, 3))]
    ch = max(t.shape[0] for t in tiles)
    cw = max(t.shape[1] for t in tiles)
    title_h, gap = 14, 2
    ncols = max(1, min(ncols, len(tiles)))
    nrows = -(-len(tiles) // ncols)
    mosaic = np.ones((nrows * (ch + title_h + gap), ncols * (cw + gap), 3))
    for n, t in enumerate(tiles):
        r, c = divmod(n, ncols)
        y0, x0 = r * (ch + title_h + gap) + title_h, c * (cw + gap)
        mosaic[y0 : y0 + ch, x0 : x0 + cw] = 0.0
        mosaic[y0 : y0 + t.shape[0], x0 : x0 + t.shape[1]] = t
    h, w = mosaic.shape[:2]
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for n, p in enumerate(panels):
        if p.title:
            r, c = divmod(n, ncols)
            ax.text(c * (cw + gap) + 1, r * (ch + title_h + gap) + title_h - 3, p.title, fontsize=7, va="bottom")
    fig.savefig(path, dpi=dpi)
    return path


def save_row_preview(rows: Sequence[tuple[str, np.ndarray]], path: str | Path, cell: int = 64) -> Path:
    """Training previews (``previews/epoch_NNNN.png``): one row per ``(title, batch)``, ``batch``
    ``(B, 1, *S)`` (array or CPU tensor) on the preprocessed grid in [0, 1] (values clipped); each case
    is its three middle planes (3D, radiological, as every other figure) or the slice (2D), the row
    title over its first panel. Every row must hold the same number and shape of cases."""
    panels: list[Panel] = []
    ncols = 0
    for title, batch in rows:
        data = batch.detach().float().cpu().numpy() if hasattr(batch, "detach") else batch
        arr = np.clip(np.asarray(data, dtype=np.float32), 0.0, 1.0)
        row: list[Panel] = []
        for b, case in enumerate(arr[:, 0]):
            label = title if b == 0 else ""
            row += volume_panels(case, label) if case.ndim == 3 else [slice_panel(case, label)]
        if ncols and len(row) != ncols:
            raise ValueError(f"preview row {title!r} has {len(row)} panels, the first row {ncols}")
        ncols = ncols or len(row)
        panels += row
    return save_preview_grid(panels, path, ncols=max(ncols, 1), cell=cell)
