"""DeLong against a hand computation, the naive O(mn) structural components and a bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from ldm_ood.evaluation.metrics import auroc
from ldm_ood.evaluation.stats import bootstrap_ci, delong_covariance, delong_test, significance_marker


def _naive_delong(y, a, b):
    """DeLong 1988 structural components with explicit O(mn) loops (psi = 1, 1/2, 0)."""
    y = np.asarray(y, bool)
    comps10, comps01, aucs = [], [], []
    for s in (a, b):
        x, z = s[y], s[~y]
        psi = np.array([[1.0 if xi > zj else 0.5 if xi == zj else 0.0 for zj in z] for xi in x])
        comps10.append(psi.mean(axis=1))
        comps01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.vstack(comps10))
    s01 = np.cov(np.vstack(comps01))
    return np.array(aucs), s10 / m + s01 / n


def test_delong_variance_by_hand():
    # X = {.35, .8}, Y = {.1, .4}: V10 = [1/2, 1], V01 = [1, 1/2]; var (ddof 1) of each = 1/8
    # Var(AUC) = (1/8)/2 + (1/8)/2 = 1/8
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    aucs, cov = delong_covariance(y, s)
    assert aucs[0] == pytest.approx(0.75)
    assert cov[0, 0] == pytest.approx(0.125)


def test_delong_matches_naive_structural_components():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 80).astype(bool)
    a = np.round(rng.normal(size=80) + 1.0 * y, 1)  # ties on purpose
    b = np.round(0.6 * a + rng.normal(size=80) * 0.8 + 0.3 * y, 1)
    aucs, cov = delong_covariance(y, a, b)
    aucs_naive, cov_naive = _naive_delong(y, a, b)
    np.testing.assert_allclose(aucs, aucs_naive, atol=1e-12)
    np.testing.assert_allclose(cov, cov_naive, atol=1e-12)
    res = delong_test(y, a, b)
    var = cov_naive[0, 0] + cov_naive[1, 1] - 2 * cov_naive[0, 1]
    z = (aucs_naive[0] - aucs_naive[1]) / np.sqrt(var)
    assert res.z == pytest.approx(z)
    assert res.p_value == pytest.approx(2 * norm.sf(abs(z)))
    assert (res.auc_a, res.auc_b) == (pytest.approx(auroc(y, a)), pytest.approx(auroc(y, b)))


def test_delong_agrees_with_bootstrap_of_auc_difference():
    rng = np.random.default_rng(11)
    n = 300
    y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(bool)
    latent = rng.normal(size=n)
    a = latent + 1.0 * y + 0.5 * rng.normal(size=n)
    b = latent + 0.6 * y + 0.9 * rng.normal(size=n)  # correlated with a through `latent`
    res = delong_test(y, a, b)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    diffs = []
    for _ in range(2000):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        diffs.append(auroc(y[idx], a[idx]) - auroc(y[idx], b[idx]))
    var_boot = np.var(diffs, ddof=1)
    var_delong = res.var_a + res.var_b - 2 * res.cov
    assert var_delong == pytest.approx(var_boot, rel=0.15)
    assert res.cov > 0  # the two scores share `latent`
    p_boot = 2 * norm.sf(abs(res.auc_a - res.auc_b) / np.sqrt(var_boot))
    assert res.p_value == pytest.approx(p_boot, rel=0.5, abs=1e-4)


def test_delong_identical_and_perfect_scores():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    res = delong_test(y, s, s)
    assert (res.z, res.p_value) == (0.0, 1.0)
    res = delong_test(y, s, -s)  # AUC 1 vs 0, each with zero variance
    assert res.p_value == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


def test_significance_marker():
    assert significance_marker(0.0005) == "**"
    assert significance_marker(0.01) == "*"
    assert significance_marker(0.2) == ""
    assert significance_marker(float("nan")) == ""


def test_bootstrap_ci_seeded_stratified_and_near_delong():
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(100), np.zeros(100)].astype(bool)
    s = rng.normal(size=200) + 1.0 * y
    ci = bootstrap_ci(y, s, n_boot=1000, seed=3)
    assert ci == bootstrap_ci(y, s, n_boot=1000, seed=3)  # deterministic
    assert ci.low < ci.estimate < ci.high
    assert ci.estimate == pytest.approx(auroc(y, s))
    _, cov = delong_covariance(y, s)
    half = norm.ppf(0.975) * np.sqrt(cov[0, 0])  # normal-approx CI from DeLong's variance
    assert ci.low == pytest.approx(ci.estimate - half, abs=0.02)
    assert ci.high == pytest.approx(ci.estimate + half, abs=0.02)


def test_bootstrap_ci_perfect_and_one_class():
    y = np.array([0, 0, 1, 1])
    ci = bootstrap_ci(y, [0.1, 0.2, 0.8, 0.9], n_boot=200)
    assert (ci.low, ci.high) == (1.0, 1.0)  # stratified: every replicate has both classes
    ci = bootstrap_ci([1, 1, 1], [0.1, 0.2, 0.3], n_boot=50)
    assert np.isnan(ci.estimate) and np.isnan(ci.low)


def test_bootstrap_fast_auroc_path_matches_generic_loop():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(30), np.zeros(40)].astype(bool)
    s = np.round(rng.normal(size=70) + y, 1)
    fast = bootstrap_ci(y, s, n_boot=300, seed=9)
    slow = bootstrap_ci(y, s, metric=lambda yy, ss: auroc(yy, ss), n_boot=300, seed=9)
    assert (fast.low, fast.high) == (pytest.approx(slow.low), pytest.approx(slow.high))
