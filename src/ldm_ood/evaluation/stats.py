"""Statistics for AUCs: the DeLong test of two correlated AUCs and seeded bootstrap CIs.

DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated ROC
curves: a nonparametric approach" — the test paper 000 (Table 1) uses to compare the LDM and the
LTM on the same cases — in the fast midrank form of Sun & Xu (2014), O((m+n) log(m+n)):

For ``m`` positives ``X`` and ``n`` negatives ``Y`` and each classifier ``r``, with midranks
``T_z`` over all cases, ``T_x`` within positives and ``T_y`` within negatives:

- ``AUC_r = (Σ_i T_z(X_i) − m(m+1)/2) / (m n)``
- structural components ``V10_i = (T_z(X_i) − T_x(X_i)) / n`` (fraction of negatives below ``X_i``,
  ties ½) and ``V01_j = 1 − (T_z(Y_j) − T_y(Y_j)) / m``;
- ``S = S10/m + S01/n`` with ``S10``, ``S01`` the sample covariance matrices (ddof 1) of the
  components across classifiers; ``z = (AUC_a − AUC_b) / sqrt(S_aa + S_bb − 2 S_ab)``, two-sided
  ``p = 2 Φ(−|z|)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.stats import norm, rankdata

from .metrics import _as_binary, auroc, midrank

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class DeLongResult:
    """Two correlated AUCs on the same cases, their (co)variances, and the test of their difference."""

    auc_a: float
    auc_b: float
    var_a: float
    var_b: float
    cov: float
    z: float
    p_value: float


def _structural_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` and components V10 ``(k, m)``, V01 ``(k, n)`` for ``scores`` of shape ``(k, N)``."""
    x, yn = scores[:, y], scores[:, ~y]
    m, n = x.shape[1], yn.shape[1]
    k = scores.shape[0]
    v10, v01, aucs = np.empty((k, m)), np.empty((k, n)), np.empty(k)
    for r in range(k):
        tz = midrank(np.r_[x[r], yn[r]])
        tx, ty = midrank(x[r]), midrank(yn[r])
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    return aucs, v10, v01


def delong_covariance(labels: np.ndarray | Sequence, *scores: np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` and their DeLong covariance matrix ``(k, k)`` for ``k`` score vectors on the same cases."""
    y = _as_binary(labels)
    s = np.vstack([np.asarray(v, dtype=np.float64).ravel() for v in scores])
    if s.shape[1] != y.size:
        raise ValueError(f"{y.size} labels but scores of length {s.shape[1]}")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 cases of each class (got {m} positive, {n} negative)")
    aucs, v10, v01 = _structural_components(y, s)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(
    labels: np.ndarray | Sequence, scores_a: np.ndarray | Sequence, scores_b: np.ndarray | Sequence
) -> DeLongResult:
    """DeLong test of ``AUC_a == AUC_b`` for two score vectors on the same cases (two-sided).

    When the variance of the difference is 0 (e.g. both AUCs are exactly 1), ``z = 0, p = 1`` if the
    AUCs are equal and ``z = ±inf, p = 0`` otherwise. Raises ``ValueError`` with < 2 cases per class.
    """
    aucs, cov = delong_covariance(labels, scores_a, scores_b)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        if abs(diff) < 1e-12:
            z, p = 0.0, 1.0
        else:
            z, p = float(np.sign(diff) * np.inf), 0.0
    else:
        z = diff / np.sqrt(var)
        p = float(2.0 * norm.sf(abs(z)))
    return DeLongResult(
        auc_a=float(aucs[0]), auc_b=float(aucs[1]), var_a=float(cov[0, 0]), var_b=float(cov[1, 1]),
        cov=float(cov[0, 1]), z=float(z), p_value=p,
    )


def significance_marker(p: float | None, strong: str = "**", weak: str = "*") -> str:
    """Marker for a p-value: ``strong`` if p < 0.001, ``weak`` if p < 0.05 (paper 000 Table 1), else ''."""
    if p is None or not np.isfinite(p):
        return ""
    return strong if p < 0.001 else weak if p < 0.05 else ""


def _auroc_rows(s: np.ndarray, m: int) -> np.ndarray:
    """AUROC of each row of ``s`` (B, N) whose first ``m`` columns are the positives (midrank formula)."""
    n = s.shape[1] - m
    r = rankdata(s, axis=1, method="average")
    return (r[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with a bootstrap percentile interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int


def bootstrap_ci(
    labels: np.ndarray | Sequence,
    scores: np.ndarray | Sequence,
    metric: Metric = auroc,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> ConfidenceInterval:
    """Percentile bootstrap CI of ``metric(labels, scores)``.

    Each replicate resamples cases with replacement — within each class separately when
    ``stratified`` (so every replicate keeps the class sizes and the AUC stays defined). The
    interval is the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the replicates; replicates
    where the metric is nan are dropped. Deterministic for a given ``seed``.
    """
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    est = float(metric(y, s))
    if not np.isfinite(est):
        return ConfidenceInterval(est, float("nan"), float("nan"), level, 0)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if stratified:
        idx = np.hstack([rng.choice(pos, (n_boot, pos.size)), rng.choice(neg, (n_boot, neg.size))])
    else:
        idx = rng.integers(0, y.size, (n_boot, y.size))
    if metric is auroc and stratified:
        reps = _auroc_rows(s[idx], pos.size)
    else:
        reps = np.array([metric(y[i], s[i]) for i in idx])
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return ConfidenceInterval(est, float("nan"), float("nan"), level, 0)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return ConfidenceInterval(est, float(lo), float(hi), level, int(reps.size))
