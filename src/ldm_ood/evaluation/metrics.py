"""Detection and segmentation metrics as pure numpy functions.

Conventions: ``labels`` are 0/1 (1 = positive = OOD / anomalous voxel); ``scores`` are "higher =
more anomalous". A metric that is undefined for the input (only one class present) returns
``nan`` instead of raising, so one degenerate set never stops an evaluation.

Detection (paper 000 Table 1):
- :func:`auroc` — area under the ROC curve = P(score_pos > score_neg) + ½ P(tie) (Mann–Whitney,
  computed with midranks, exact with ties).
- :func:`average_precision` — AUPRC as *average precision*:
  ``AP = Σ_k (R_k − R_{k−1}) · P_k`` over the distinct score thresholds in decreasing order
  (tied scores form one threshold), with ``R_0 = 0`` — the step-wise sum without interpolation
  (same definition as scikit-learn's ``average_precision_score``).
- :func:`fpr_at_tpr` — false-positive rate at the highest threshold whose TPR ≥ 0.95.

Segmentation (paper 001 Tables 1–3), on anomaly maps vs ground-truth masks:
- :func:`best_dice` — ⌈DICE⌉, the best Dice over all thresholds ("theoretically best possible
  DICE-score"), exact over every distinct score value, from one sort.
- :func:`dice_at_threshold` — Dice of ``map >= threshold`` (threshold chosen on validation).
- :func:`pixel_auprc` — average precision of voxel scores vs voxel labels.

Voxels are **pooled over scans** by default (``pooling="pooled"``, as paper 001: all test voxels
form one set, one threshold), or ``pooling="per_scan"``: a metric per scan, then the mean over
scans (scans without any positive voxel are left out of per-scan AUPRC, which is undefined there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

Pooling = Literal["pooled", "per_scan"]


# ----------------------------------------------------------------------------- helpers


def _as_binary(labels: np.ndarray | Sequence) -> np.ndarray:
    y = np.asarray(labels).ravel()
    if y.dtype != bool:
        uniq = np.unique(y)
        if not np.isin(uniq, (0, 1)).all():
            raise ValueError(f"labels must be 0/1 or bool, got values {uniq[:5]}")
        y = y.astype(bool)
    return y


def _check(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if np.isnan(s).any():  # ±inf is a rank like any other (+inf: flagged by the input check); NaN has none
        raise ValueError("scores contain NaN")
    return y, s


def midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` with ties given their average rank (Sun & Xu 2014, Algorithm 1)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = xs.size
    # boundaries of runs of equal values
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]  # not np.diff: inf - inf is NaN
    ends = np.r_[starts[1:], n]
    run_rank = 0.5 * (starts + ends - 1) + 1.0  # mean of 1-based ranks start+1 .. end
    ranks_sorted = np.repeat(run_rank, ends - starts)
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks_sorted
    return out


def _threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (TP, FP) when predicting ``s >= thr`` for each distinct ``thr`` in decreasing order.

    Returns ``(thresholds, tp, fp)`` of equal length (one entry per distinct score).
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]  # ties of inf too
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = (last_of_run + 1) - tp
    return s_sorted[last_of_run], tp.astype(np.float64), fp.astype(np.float64)


# ----------------------------------------------------------------------------- detection


def auroc(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> float:
    """Area under the ROC curve; ``nan`` if only one class is present.

    ``AUC = (Σ ranks of positives − m(m+1)/2) / (m·n)`` with midranks, which equals the fraction of
    (positive, negative) pairs ordered correctly, ties counting ½.
    """
    y, s = _check(labels, scores)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return float("nan")
    r = midrank(s)
    return float((r[y].sum() - m * (m + 1) / 2.0) / (m * n))


def roc_curve(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold +inf.

    Point ``k`` predicts positive when ``score >= thresholds[k]``. Empty arrays if one class only.
    """
    y, s = _check(labels, scores)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return np.array([]), np.array([]), np.array([])
    thr, tp, fp = _threshold_counts(y, s)
    return np.r_[0.0, fp / n], np.r_[0.0, tp / m], np.r_[np.inf, thr]


def average_precision(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> float:
    """AUPRC as average precision ``Σ_k (R_k − R_{k−1}) P_k`` (see module docstring); nan without positives."""
    y, s = _check(labels, scores)
    m = int(y.sum())
    if m == 0:
        return float("nan")
    _, tp, fp = _threshold_counts(y, s)
    precision = tp / (tp + fp)
    recall = tp / m
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence, tpr: float = 0.95) -> float:
    """FPR at the highest threshold reaching ``TPR >= tpr`` (FPR@95TPR by default); nan if one class."""
    fpr_, tpr_, _ = roc_curve(labels, scores)
    if fpr_.size == 0:
        return float("nan")
    ok = np.flatnonzero(tpr_ >= tpr - 1e-12)
    return float(fpr_[ok[0]])


# ----------------------------------------------------------------------------- segmentation


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2|P∩G| / (|P| + |G|)`` of two binary arrays; 1.0 when both are empty."""
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom


def _pairs(maps: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Normalise one (map, mask) pair or lists of them into a list of flat (float64, bool) pairs."""
    if isinstance(maps, np.ndarray) and isinstance(masks, np.ndarray):
        maps, masks = [maps], [masks]
    maps, masks = list(maps), list(masks)
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    if not maps:
        raise ValueError("no (map, mask) pairs given")
    out = []
    for i, (a, g) in enumerate(zip(maps, masks)):
        a, g = np.asarray(a, dtype=np.float64), np.asarray(g)
        if a.shape != g.shape:
            raise ValueError(f"pair {i}: map shape {a.shape} differs from mask shape {g.shape}")
        out.append((a.ravel(), g.ravel().astype(bool)))
    return out


@dataclass(frozen=True)
class BestDice:
    """⌈DICE⌉ and the threshold achieving it (predict ``map >= threshold``)."""

    dice: float
    threshold: float


def _dice_curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice of ``s >= thr`` for every distinct ``thr`` (decreasing), from one sort: ``2TP / (TP+FP+G)``."""
    thr, tp, fp = _threshold_counts(y, s)
    g = float(y.sum())
    return thr, 2.0 * tp / (tp + fp + g)


def best_dice(
    maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    pooling: Pooling = "pooled",
) -> BestDice:
    """⌈DICE⌉: the maximal Dice over all thresholds of the anomaly map (paper 001 Tables 1–3).

    Exact: the scores are sorted once and every distinct value is tried as a threshold
    (predict ``map >= thr``; the Dice of each threshold follows from cumulative TP/FP counts).

    ``pooled`` (default): all voxels of all scans form one prediction, one threshold.
    ``per_scan``: one common threshold maximising the *mean* per-scan Dice (each scan's Dice curve
    is evaluated at every distinct pooled score with ``searchsorted``). Returns nan Dice if no mask
    has a positive voxel when pooled.
    """
    pairs = _pairs(maps, masks)
    if pooling == "pooled":
        s = np.concatenate([a for a, _ in pairs])
        y = np.concatenate([g for _, g in pairs])
        if not y.any():
            return BestDice(float("nan"), float("nan"))
        thr, d = _dice_curve(s, y)
        k = int(np.argmax(d))
        return BestDice(float(d[k]), float(thr[k]))
    if pooling != "per_scan":
        raise ValueError(f"pooling must be 'pooled' or 'per_scan', got {pooling!r}")
    grid = np.unique(np.concatenate([a for a, _ in pairs]))[::-1]  # decreasing candidate thresholds
    total = np.zeros(grid.size)
    for a, g in pairs:
        order = np.argsort(a, kind="mergesort")
        a_sorted, g_sorted = a[order], g[order]
        # number of voxels (and positives) with score >= thr: suffix counts via searchsorted
        idx = np.searchsorted(a_sorted, grid, side="left")
        pos_suffix = np.r_[np.cumsum(g_sorted[::-1])[::-1], 0]
        tp = pos_suffix[idx].astype(np.float64)
        npred = (a_sorted.size - idx).astype(np.float64)
        gsum = float(g.sum())
        denom = npred + gsum
        total += np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)
    mean = total / len(pairs)
    k = int(np.argmax(mean))
    return BestDice(float(mean[k]), float(grid[k]))


def dice_at_threshold(
    maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    threshold: float,
    pooling: Pooling = "pooled",
) -> float:
    """Dice of ``map >= threshold`` (pooled over scans, or the mean of per-scan Dice)."""
    pairs = _pairs(maps, masks)
    if pooling == "pooled":
        tp = sum(int(np.logical_and(a >= threshold, g).sum()) for a, g in pairs)
        denom = sum(int((a >= threshold).sum()) + int(g.sum()) for a, g in pairs)
        return 1.0 if denom == 0 else 2.0 * tp / denom
    if pooling != "per_scan":
        raise ValueError(f"pooling must be 'pooled' or 'per_scan', got {pooling!r}")
    return float(np.mean([dice(a >= threshold, g) for a, g in pairs]))


def pixel_auprc(
    maps: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    pooling: Pooling = "pooled",
) -> float:
    """Voxel-level average precision of the maps vs masks (pooled, or mean over scans with lesions)."""
    pairs = _pairs(maps, masks)
    if pooling == "pooled":
        return average_precision(np.concatenate([g for _, g in pairs]), np.concatenate([a for a, _ in pairs]))
    if pooling != "per_scan":
        raise ValueError(f"pooling must be 'pooled' or 'per_scan', got {pooling!r}")
    vals = [average_precision(g, a) for a, g in pairs if g.any()]
    return float(np.mean(vals)) if vals else float("nan")
