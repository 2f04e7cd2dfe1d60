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


def _colourbar(fig: Figure, im, ax, fraction: float = 0.03, pad: float = 0.01, cax=None) -> None:
    """Colour bar with three plain ticks (no offset text above the bar); in ``cax`` when given, else
    taken from ``ax``."""
    cb = fig.colorbar(im, cax=cax) if cax is not None else fig.colorbar(im, ax=ax, fraction=fraction, pad=pad)
    cb.locator = MaxNLocator(3)
    cb.formatter = FuncFormatter(lambda v, _: f"{v:.2g}")
    cb.update_ticks()
    cb.ax.tick_params(labelsize=7)


def overlay_grid(
    cases: Sequence[tuple[str, np.ndarray, np.ndarray | None, Mapping[str, np.ndarray]]], title: str = "Anomaly maps",
    regions: Sequence[np.ndarray | None] | None = None,
) -> Figure:
    """Paper 000 Fig. 1 style: per case (row), the input's tri-planar view, then each method's map
    over the input (same planes), side by side. Each map panel block has its own colour bar.

    Args:
        cases: ``(label, image in [0, 1], affine or None, {method: map})``; image and maps 2D
            ``(X, Y)`` or 3D ``(X, Y, Z)`` on the same grid (maps of another shape are resampled).
        regions: per case, an optional boolean region of the image's shape (the voxels a corruption
            removed), outlined on every map panel.
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
            region = regions[r] if regions is not None else None
            rviews = display_views(np.asarray(region, np.float32), affine) if region is not None else [None] * len(views)
            vmax = map_vmax(np.concatenate([v.ravel() for v in mviews]))
            im = None
            for k, (view, mview, rview) in enumerate(zip(views, mviews, rviews)):
                ax = axes[r, n_planes * (m + 1) + k]
                _show_image(ax, view, f"{method} map" if k == 0 else "")
                im = _show_map(ax, mview, vmax)
                if rview is not None and rview.any():
                    ax.contour(rview, levels=[0.5], colors=[OOD_COLOUR], linewidths=0.8)
            if im is not None:
                _colourbar(fig, im, axes[r, n_planes * (m + 1): n_planes * (m + 2)].tolist())
    outline = " (outline: the corrupted region)" if regions is not None and any(x is not None for x in regions) else ""
    _title(fig, title + " — maps shown above 20 % of their 99.5th percentile" + outline, 0.6)
    return fig


#: an anomaly map is drawn over its image where it is at least this fraction of :func:`map_vmax`
MAP_SHOWN_FROM = 0.2


def map_vmax(values: np.ndarray) -> float:
    """Top of an anomaly map's colour scale: the 99.5th percentile of its finite ``values`` (≥ 1e-6)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return max(float(np.percentile(v, 99.5)), 1e-6) if v.size else 1e-6


def _show_map(ax, mview: np.ndarray, vmax: float):
    """A map view over the image already in ``ax``: shown from :data:`MAP_SHOWN_FROM` × ``vmax`` up."""
    return ax.imshow(np.ma.masked_less(mview, MAP_SHOWN_FROM * vmax), cmap=MAP_CMAP, alpha=0.75, vmin=0, vmax=vmax,
                     interpolation="nearest")


def scan_overlay(views: Sequence[np.ndarray], map_views: Sequence[np.ndarray], planes: Sequence[str], vmax: float,
                 title: str = "", aspects: Sequence[float] | None = None) -> Figure:
    """One scan: each plane (a column) as the scan (window [0, 1]) above the scan with its anomaly map
    over it (shown from :data:`MAP_SHOWN_FROM` × ``vmax``); a single plane (a 2D image) is one row of
    the two side by side. One colour bar, in its own strip so every panel keeps its width.

    Args:
        views: display views of the scan in [0, 1] (``viz.preview.display_views``), one per plane;
        map_views: the map's views through the same planes, each the shape of its scan view;
        planes: the plane names written over the panels (``sagittal``, ``coronal``, ``axial`` / ``slice``);
        aspects: height / width of a pixel per plane (``viz.preview.view_aspects``; default square).
    """
    n = len(views)
    nrows, ncols = (1, 2) if n == 1 else (2, n)
    w, h = 2.9 * ncols + 0.9, 2.9 * nrows + 0.6
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)
    right, top = 1 - 0.9 / w, 1 - 0.6 / h
    fig.subplots_adjust(left=0.01, right=right, bottom=0.01, top=top, wspace=0.08, hspace=0.12)
    pairs = [(axes[0, 0], axes[0, 1])] if n == 1 else [(axes[0, k], axes[1, k]) for k in range(n)]
    im = None
    for k, ((scan_ax, map_ax), view, mview, plane) in enumerate(zip(pairs, views, map_views, planes)):
        _show_image(scan_ax, view, plane)
        _show_image(map_ax, view, f"{plane} + anomaly map")
        im = _show_map(map_ax, mview, vmax)
        for ax in (scan_ax, map_ax):
            ax.set_aspect(1.0 if aspects is None else aspects[k])
    if im is not None:
        row = (top - 0.01) / nrows  # the colour bar beside the maps' row
        _colourbar(fig, im, None, cax=fig.add_axes((right + 0.2 / w, 0.01 + 0.1 * row, 0.15 / w, 0.8 * row)))
    _title(fig, title, 0.6)
    return fig


def score_distribution(val_scores: Sequence[float], score: float | None, threshold: float | None = None,
                       fpr: float | None = None, xlabel: str = "OOD score") -> Figure:
    """The validation (in-distribution) scores as a histogram with a tick per score, the operating
    ``threshold`` (dashed, with its ``fpr``) and this scan's ``score`` (a red line). A score far beyond
    the validation range (+inf from the input check among them) is drawn in a hatched band past the
    axis' end, the legend giving its value."""
    vals = np.asarray([v for v in val_scores if np.isfinite(v)], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 3.1))
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.18, top=0.8)
    known = np.r_[vals, [] if threshold is None else [threshold]]
    lo, hi = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    finite = score is not None and bool(np.isfinite(score))
    inside = finite and lo - 3 * span <= score <= hi + 3 * span
    if inside:
        lo, hi = min(lo, score), max(hi, score)
    pad = 0.08 * ((hi - lo) if hi > lo else span)
    left, right = lo - pad, hi + pad
    bins = np.linspace(lo, hi if hi > lo else lo + span, 21)
    ax.hist(vals, bins=bins, color=ID_COLOUR, alpha=0.55, label=f"validation scans (n={vals.size})")
    ax.plot(vals, np.zeros_like(vals), "|", color=ID_COLOUR, markersize=14, markeredgewidth=1.5, clip_on=False)
    if threshold is not None:
        rate = "" if fpr is None else f" ({100 * fpr:.3g} % of validation flagged)"
        ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold {threshold:.3g}{rate}")
    ax.set_xlim(left, right)
    ticks = [t for t in ax.get_xticks() if left <= t <= right]
    if score is not None and inside:
        ax.axvline(score, color="#d62728", lw=2.6, label=f"this scan {score:.3g}")
    elif score is not None and not np.isnan(score):  # off scale: a band past the end of the axis
        band = 0.22 * (right - left)
        zone = (right, right + band) if score > hi else (left - band, left)
        ax.axvspan(*zone, facecolor="0.93", edgecolor="0.6", hatch="//", lw=0)
        value = "+inf (input check)" if np.isposinf(score) else f"{score:.3g}"
        ax.axvline(sum(zone) / 2, color="#d62728", lw=2.6, label=f"this scan {value}, off scale")
        ax.set_xlim(min(left, zone[0]), max(right, zone[1]))
    ax.set_xticks(ticks)
    ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("validation scans", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False, borderaxespad=0.2)
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


def training_curves(curves: Mapping[str, tuple[Sequence[Mapping[str, float]], int | None]],
                    title: str = "Training curves", ncols: int = 4) -> Figure:
    """Train and validation loss per epoch, one panel per run, the selected (best validation) epoch marked.

    Args:
        curves: ``{run: (metrics.csv rows, best epoch or None)}``; each row has ``epoch``, ``loss``
            (the mean training loss of the epoch) and ``val_loss`` (NaN on epochs without validation).
    """
    fig, axes = _grid(len(curves), ncols, (3.4, 2.7))
    for ax, (name, (rows, best)) in zip(axes, curves.items()):
        epoch = np.array([r.get("epoch", np.nan) for r in rows], dtype=float)
        for key, label, colour in (("loss", "train", ID_COLOUR), ("val_loss", "validation", OOD_COLOUR)):
            y = np.array([r.get(key, np.nan) for r in rows], dtype=float)
            ok = np.isfinite(y) & np.isfinite(epoch)
            if ok.any():
                ax.plot(epoch[ok], y[ok], marker="." if ok.sum() < 30 else None, color=colour, lw=1.2, label=label)
        if best:
            ax.axvline(best, color="0.4", ls="--", lw=0.8, label=f"best epoch {best}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    _title(fig, title)
    return fig


SAMPLER_MARKERS = {"plms": "o", "ddim": "s", "dpmpp_2m": "D", "one_step": "^"}


def frontier_figure(rows: Sequence[Mapping], reference: str | None = None, selected: str | None = None,
                    min_ratio: float | None = None, title: str = "Scoring cost vs AUROC") -> Figure:
    """AUROC against UNet evaluations per scan (log scale), one point per setting: the mean over the test
    sets (left) and the worst set (right). ``rows``: ``{"name", "sampler", "unet_evaluations", "mean_auroc",
    "worst_auroc"}`` (``evaluation.frontier``); ``reference`` and ``selected`` are ringed; ``min_ratio`` draws
    the budget line at the reference's evaluations / ``min_ratio``."""
    fig, axes = _grid(2, 2, (4.6, 3.6))
    w = fig.get_size_inches()[0]
    fig.subplots_adjust(left=0.85 / w, wspace=0.4)  # room for AUROC tick labels of three decimals
    ref = next((r for r in rows if r["name"] == reference), None)
    for ax, key, label in zip(axes, ("mean_auroc", "worst_auroc"), ("mean AUROC over sets", "worst set AUROC")):
        for sampler, marker in SAMPLER_MARKERS.items():
            pts = [r for r in rows if r["sampler"] == sampler and r.get(key) is not None]
            if pts:
                ax.scatter([r["unet_evaluations"] for r in pts], [r[key] for r in pts], marker=marker, s=28,
                           label=sampler, alpha=0.8)
        for name, colour, side in ((reference, "black", "right"), (selected, "red", "left")):
            r = next((r for r in rows if r["name"] == name and r.get(key) is not None), None)
            if r is not None:
                ax.scatter([r["unet_evaluations"]], [r[key]], s=120, facecolors="none", edgecolors=colour)
                ax.annotate(r["name"], (r["unet_evaluations"], r[key]), fontsize=7, xytext=(-6 if side == "right" else 6, -10),
                            textcoords="offset points", color=colour, ha=side)
        if ref is not None and min_ratio:
            ax.axvline(ref["unet_evaluations"] / min_ratio, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("UNet evaluations per scan")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, loc="lower right")
    _title(fig, title)
    return fig
