"""Report figures (matplotlib, Agg backend): ROC curves, score histograms, anomaly-map overlays.

Every function returns a ``matplotlib.figure.Figure``; :func:`to_png` turns it into PNG bytes
(and closes it). Colours are fixed across figures: in-distribution is always blue, OOD orange,
and each method keeps its colour (LDM blue-green family, LTM red).
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ..evaluation.metrics import auroc, roc_curve  # noqa: E402
from ..viz.preview import display_slice, display_views, to_ras  # noqa: E402

ID_COLOUR = "#1f77b4"
OOD_COLOUR = "#ff7f0e"
METHOD_COLOURS = {"LDM": "#2ca02c", "LTM": "#d62728", "LDM (MSE)": "#17becf", "LDM (LPIPS)": "#9467bd"}
MAP_CMAP = "inferno"


def to_png(fig: Figure, dpi: int = 90) -> bytes:
    """PNG bytes of ``fig`` (closed afterwards)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # layouts are fixed: one draw, no tight bbox pass
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, ncols: int, panel: tuple[float, float], top_in: float = 0.9) -> tuple[Figure, np.ndarray]:
    """``n`` panels of ``panel`` inches in rows of ``ncols``, margins fixed in inches (no tight_layout:
    it re-draws the figure, which dominates the cost of many small panels)."""
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    w, h = panel[0] * ncols, panel[1] * nrows + top_in
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)
    fig.subplots_adjust(left=0.6 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - top_in / h,
                        wspace=0.35, hspace=0.55)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax in axes.ravel():
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
    return fig, axes.ravel()


def _title(fig: Figure, title: str, top_in: float = 0.9) -> None:
    """Figure title placed in the fixed top margin (``top_in`` inches), never over the panels."""
    h = fig.get_size_inches()[1]
    fig.suptitle(title, fontsize=12, y=1 - 0.3 * top_in / h, va="center")


def roc_grid(
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], title: str = "ROC curves", ncols: int = 5
) -> Figure:
    """Small multiples: one panel per OOD set, one ROC line per method.

    Args:
        curves: ``{set: {method label: (labels 0/1, scores)}}`` (1 = OOD).
    """
    fig, axes = _grid(len(curves), ncols, (2.9, 2.7))
    for ax, (set_name, methods) in zip(axes, curves.items()):
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls=":")
        for k, (label, (y, s)) in enumerate(methods.items()):
            fpr, tpr, _ = roc_curve(y, s)
            if fpr.size == 0:
                continue
            colour = METHOD_COLOURS.get(label, f"C{k}")
            # straight segments between operating points: tied scores give a diagonal run, as the AUROC counts them
            # first methods drawn widest, so a later identical curve leaves them visible at the edges
            ax.plot(fpr, tpr, lw=max(2.6 - 0.5 * k, 1.0), color=colour, label=f"{label} {auroc(y, s):.3f}")
        ax.set_title(set_name, fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="lower right", title="AUROC", title_fontsize=6.5, framealpha=0.7)
    for ax in axes[:: min(ncols, len(curves)) or 1]:
        ax.set_ylabel("TPR (OOD detected)", fontsize=8)
    for ax in axes[-min(ncols, len(curves)):]:
        ax.set_xlabel("FPR (ID flagged)", fontsize=8)
    _title(fig, title)
    return fig


def histogram_grid(
    id_scores: np.ndarray,
    ood_scores: Mapping[str, np.ndarray],
    threshold: float | None = None,
    title: str = "Score histograms",
    xlabel: str = "OOD score",
    ncols: int = 5,
) -> Figure:
    """One panel per OOD set: ID (blue) vs OOD (orange) score histograms on common bins, with the
    operating ``threshold`` as a dashed line when known."""
    fig, axes = _grid(len(ood_scores), ncols, (2.9, 2.3))
    id_all = np.asarray(id_scores, dtype=float)
    id_scores = id_all[np.isfinite(id_all)]  # +inf: flagged by the input check, noted in the title
    for ax, (set_name, ood_all) in zip(axes, ood_scores.items()):
        ood_all = np.asarray(ood_all, dtype=float)
        ood = ood_all[np.isfinite(ood_all)]
        flagged = int((~np.isfinite(ood_all)).sum()) + int((~np.isfinite(id_all)).sum())
        both = np.r_[id_scores, ood, [] if threshold is None else [threshold]]
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        ax.hist(id_scores, bins=bins, color=ID_COLOUR, alpha=0.6, label=f"ID (n={id_scores.size})")
        ax.hist(ood, bins=bins, color=OOD_COLOUR, alpha=0.6, label=f"OOD (n={ood.size})")
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=1.0, label="threshold")
        qc = f", {flagged} flagged by input check" if flagged else ""
        ax.set_title(f"{set_name} (n={ood_all.size}{qc})", fontsize=10 if not qc else 8)  # never over the bars
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
        ax.set_xlabel(xlabel, fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    labels = [lab.split(" (n=")[0] if lab.startswith("OOD") else lab for lab in labels]
    fig.legend(handles, labels, loc="center left", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(0.01, 1 - 0.3 * 0.9 / fig.get_size_inches()[1]))
    _title(fig, title)
    return fig


# ----------------------------------------------------------------------------- spatial views
#
# Inputs are shown with a fixed [0, 1] grey window: callers pass them through the run's intensity
# preprocessing (``viz.preview.unit_intensity``), so a scaled or skull-stripped scan looks like what
# the model sees. Views are radiological, reoriented from the affine (``viz.preview``).


def _match(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resample ``arr`` to ``shape`` (linear) when a map is on another grid than its image."""
    if arr.shape == shape:
        return arr
    from scipy.ndimage import zoom

    if arr.ndim != len(shape):
        arr = np.squeeze(arr)
    return zoom(arr, [t / s for t, s in zip(shape, arr.shape)], order=1)


def _show_image(ax, img: np.ndarray, title: str = "") -> None:
    """A display view in [0, 1] (fixed window: grey 0 = air / below the CT window, 1 = its top)."""
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _colourbar(fig: Figure, im, ax, fraction: float = 0.03, pad: float = 0.01) -> None:
    """Colour bar with three plain ticks (no offset text above the bar)."""
    cb = fig.colorbar(im, ax=ax, fraction=fraction, pad=pad)
    cb.locator = MaxNLocator(3)
    cb.formatter = FuncFormatter(lambda v, _: f"{v:.2g}")
    cb.update_ticks()
    cb.ax.tick_params(labelsize=7)


def overlay_grid(
    cases: Sequence[tuple[str, np.ndarray, np.ndarray | None, Mapping[str, np.ndarray]]], title: str = "Anomaly maps"
) -> Figure:
    """Paper 000 Fig. 1 style: per case (row), the input's tri-planar view, then each method's map
    over the input (same planes), side by side. Each map panel block has its own colour bar.

    Args:
        cases: ``(label, image in [0, 1], affine or None, {method: map})``; image and maps 2D
            ``(X, Y)`` or 3D ``(X, Y, Z)`` on the same grid (maps of another shape are resampled).
    """
    n_planes = 3 if cases and np.asarray(cases[0][1]).ndim == 3 else 1
    n_methods = max((len(m) for *_, m in cases), default=0)
    ncols = n_planes * (1 + n_methods)
    w, h = 1.9 * ncols + 0.6 * n_methods, 2.0 * len(cases) + 0.6
    fig, axes = plt.subplots(len(cases), ncols, figsize=(w, h), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.97, bottom=0.01, top=1 - 0.6 / h, wspace=0.12, hspace=0.25)
    for r, (label, image, affine, maps) in enumerate(cases):
        image = np.asarray(image, dtype=np.float32)
        views = display_views(image, affine)
        for k, view in enumerate(views):
            _show_image(axes[r, k], view, "input, window [0, 1]" if k == 1 else "")
        axes[r, 0].set_title(label, fontsize=9, loc="left")
        for m, (method, amap) in enumerate(maps.items()):
            mviews = display_views(_match(np.asarray(amap, dtype=np.float32), image.shape), affine)
            vmax = max(float(np.percentile(np.concatenate([v.ravel() for v in mviews]), 99.5)), 1e-6)
            im = None
            for k, (view, mview) in enumerate(zip(views, mviews)):
                ax = axes[r, n_planes * (m + 1) + k]
                _show_image(ax, view, f"{method} map" if k == 0 else "")
                im = ax.imshow(np.ma.masked_less(mview, 0.2 * vmax), cmap=MAP_CMAP, alpha=0.75, vmin=0, vmax=vmax,
                               interpolation="nearest")
            if im is not None:
                _colourbar(fig, im, axes[r, n_planes * (m + 1): n_planes * (m + 2)].tolist())
    _title(fig, title + " — maps shown above 20 % of their 99.5th percentile", 0.6)
    return fig


def _lesion_slice(gt: np.ndarray) -> int:
    """Axial index with the most ground-truth voxels (mid slice if the mask is empty)."""
    counts = gt.reshape(-1, gt.shape[-1]).sum(axis=0)
    return int(np.argmax(counts)) if counts.any() else gt.shape[-1] // 2


def _lesion_view(arr: np.ndarray, affine: np.ndarray | None, z: int | None) -> np.ndarray:
    """A 2D slice as displayed, or the axial slice ``z`` (RAS index) of a volume."""
    return display_slice(arr) if arr.ndim == 2 else display_slice(to_ras(arr, affine)[..., z])


def segmentation_grid(
    cases: Sequence[tuple[str, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]],
    title: str = "Segmentation examples",
) -> Figure:
    """Per case (row): image, image + GT outline, anomaly map (colour bar), predicted mask + GT outline.

    Args:
        cases: ``(label, image in [0, 1], affine or None, gt_mask, anomaly_map, predicted_mask or None)``;
            2D slices ``(X, Y)`` in RAS order; 3D volumes are shown at the axial slice with the most
            lesion voxels.
    """
    h = 2.6 * len(cases) + 0.6
    fig, axes = plt.subplots(len(cases), 4, figsize=(10.5, h), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.6 / h, wspace=0.15, hspace=0.35)
    for r, (label, image, affine, gt, amap, pred) in enumerate(cases):
        image = np.asarray(image, dtype=np.float32)
        amap = _match(np.asarray(amap, dtype=np.float32), image.shape)
        gt = np.asarray(gt, dtype=np.float32) > 0.5
        pred = None if pred is None else _match(np.asarray(pred, dtype=np.float32), image.shape) > 0.5
        z = _lesion_slice(to_ras(gt, affine)) if image.ndim == 3 else None
        image, amap = _lesion_view(image, affine, z), _lesion_view(amap, affine, z)
        gt = _lesion_view(gt.astype(np.float32), affine, z)
        pred = None if pred is None else _lesion_view(pred.astype(np.float32), affine, z)
        _show_image(axes[r, 0], image, f"{label}\nimage")
        _show_image(axes[r, 1], image, "ground truth")
        if gt.any():
            axes[r, 1].contour(gt, levels=[0.5], colors=[OOD_COLOUR], linewidths=1.2)
        im = axes[r, 2].imshow(amap, cmap=MAP_CMAP, interpolation="nearest")
        axes[r, 2].set_title("anomaly map", fontsize=8)
        axes[r, 2].axis("off")
        _colourbar(fig, im, axes[r, 2], fraction=0.046, pad=0.02)
        if pred is not None:
            axes[r, 3].imshow(pred, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if gt.any():
                axes[r, 3].contour(gt, levels=[0.5], colors=[OOD_COLOUR], linewidths=1.2)
            axes[r, 3].set_title("predicted mask (GT outline)", fontsize=8)
        else:
            axes[r, 3].text(0.5, 0.5, "no threshold", ha="center", va="center", fontsize=8)
        axes[r, 3].axis("off")
    _title(fig, title, 0.6)
    return fig
