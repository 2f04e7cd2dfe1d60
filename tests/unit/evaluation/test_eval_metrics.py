"""Metrics against hand-worked examples (each value below is computed by hand in the comments)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ldm_ood.evaluation.metrics import (
    auroc,
    average_precision,
    best_dice,
    dice,
    dice_at_threshold,
    fpr_at_tpr,
    midrank,
    pixel_auprc,
    roc_curve,
)

# y = [0, 0, 1, 1], s = [0.1, 0.4, 0.35, 0.8]
Y1, S1 = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])


def test_midrank_averages_ties():
    # sorted: 1 (rank 1), 2, 2 (ranks 2,3 -> 2.5), 5 (rank 4)
    assert midrank(np.array([2.0, 1.0, 5.0, 2.0])).tolist() == [2.5, 1.0, 4.0, 2.5]


def test_auroc_counts_pairs():
    # pairs (pos, neg): (.35,.1) ok, (.35,.4) wrong, (.8,.1) ok, (.8,.4) ok -> 3/4
    assert auroc(Y1, S1) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    # pos {.5, .9}, neg {.5, .2}: (.5,.5)=1/2, (.5,.2)=1, (.9,.5)=1, (.9,.2)=1 -> 3.5/4
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)


def test_auroc_one_class_is_nan():
    assert np.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(auroc([0, 0], [0.1, 0.2]))


def test_roc_curve_points():
    fpr, tpr, thr = roc_curve(Y1, S1)
    # thresholds .8, .4, .35, .1 -> (fp, tp) = (0,1), (1,1), (1,2), (2,2)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0, 0.5, 0.5, 1.0, 1.0]
    assert thr[1:].tolist() == [0.8, 0.4, 0.35, 0.1]


def test_average_precision_by_hand():
    # desc: .8 (P=1, R=.5), .4 (P=.5, R=.5), .35 (P=2/3, R=1), .1 (P=.5, R=1)
    # AP = .5*1 + 0*.5 + .5*(2/3) + 0 = 5/6
    assert average_precision(Y1, S1) == pytest.approx(5 / 6)


def test_average_precision_ties_form_one_threshold():
    # desc: .9 (TP1 FP0: P=1, R=.5), .5 tied pair (TP2 FP1: P=2/3, R=1) -> .5 + .5*2/3
    assert average_precision([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(5 / 6)
    assert np.isnan(average_precision([0, 0], [0.3, 0.4]))


def test_matches_sklearn_on_random_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_fpr_at_95_tpr():
    # pos .9 .8 .7 .2, neg .6 .5 .3 .1: TPR >= .95 needs threshold .2 -> negatives .6 .5 .3 above -> 3/4
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.7, 0.2, 0.6, 0.5, 0.3, 0.1]
    assert fpr_at_tpr(y, s) == pytest.approx(0.75)
    assert fpr_at_tpr(y, s, tpr=0.75) == pytest.approx(0.0)  # threshold .7 -> no negative above
    assert np.isnan(fpr_at_tpr([1, 1], [0.2, 0.3]))


def test_dice_by_hand():
    assert dice(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)  # 2*1/(2+2)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_best_dice_sweeps_every_threshold():
    # thresholds .9 .8 .7 .6 .5 .1 with G = 3: Dice 2/4, 4/5, 4/6, 6/7, 6/8, 6/9 -> best 6/7 at .6
    m = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    g = np.array([1, 1, 0, 1, 0, 0])
    res = best_dice(m, g)
    assert res.dice == pytest.approx(6 / 7)
    assert res.threshold == pytest.approx(0.6)


def test_best_dice_constructed_separable_case():
    # two scans; every lesion voxel scores above every background voxel -> best Dice 1 at the
    # lowest lesion value (0.7)
    rng = np.random.default_rng(0)
    masks, maps = [], []
    for k in range(2):
        g = np.zeros((8, 8), bool)
        g[2 + k : 5 + k, 3:6] = True
        a = rng.uniform(0.0, 0.5, g.shape)
        a[g] = rng.uniform(0.7, 1.0, g.sum())
        a[g.nonzero()[0][0], g.nonzero()[1][0]] = 0.7
        masks.append(g)
        maps.append(a)
    res = best_dice(maps, masks)
    assert res.dice == pytest.approx(1.0)
    assert res.threshold == pytest.approx(0.7)
    assert best_dice(maps, masks, pooling="per_scan").dice == pytest.approx(1.0)


def test_best_dice_matches_brute_force():
    rng = np.random.default_rng(3)
    maps = [np.round(rng.uniform(size=(6, 7)), 2) for _ in range(3)]
    masks = [rng.uniform(size=(6, 7)) < 0.2 for _ in range(3)]
    cands = np.unique(np.concatenate([m.ravel() for m in maps]))
    brute_pooled = max(dice_at_threshold(maps, masks, t) for t in cands)
    brute_scan = max(dice_at_threshold(maps, masks, t, pooling="per_scan") for t in cands)
    assert best_dice(maps, masks).dice == pytest.approx(brute_pooled)
    assert best_dice(maps, masks, pooling="per_scan").dice == pytest.approx(brute_scan)


# scan A: map [.9, .1], gt [1, 0]; scan B: map [.5, .4], gt [0, 1]
MAPS = [np.array([0.9, 0.1]), np.array([0.5, 0.4])]
MASKS = [np.array([1, 0]), np.array([0, 1])]


def test_pooled_vs_per_scan_best_dice():
    # pooled (G=2): thr .9 -> 2/3, .5 -> 2/4, .4 -> 4/5, .1 -> 4/6 => 0.8 at .4
    pooled = best_dice(MAPS, MASKS)
    assert (pooled.dice, pooled.threshold) == (pytest.approx(0.8), pytest.approx(0.4))
    # per scan: thr .9 -> (1+0)/2, .5 -> (1+0)/2, .4 -> (1+2/3)/2, .1 -> (2/3+2/3)/2 => 5/6 at .4
    scan = best_dice(MAPS, MASKS, pooling="per_scan")
    assert (scan.dice, scan.threshold) == (pytest.approx(5 / 6), pytest.approx(0.4))


def test_dice_at_threshold_pooled_and_per_scan():
    # thr .3: pred A [1,0], B [1,1]; pooled TP 2, |P| 3, |G| 2 -> 4/5; per scan (1 + 2/3)/2
    assert dice_at_threshold(MAPS, MASKS, 0.3) == pytest.approx(0.8)
    assert dice_at_threshold(MAPS, MASKS, 0.3, pooling="per_scan") == pytest.approx(5 / 6)


def test_pixel_auprc_pooled_and_per_scan():
    # pooled desc .9 (1: P=1 R=.5), .5 (0), .4 (1: P=2/3 R=1) -> .5 + .5*2/3 = 5/6
    assert pixel_auprc(MAPS, MASKS) == pytest.approx(5 / 6)
    # per scan: A -> 1; B: .5 (0), .4 (1: P=1/2, R=1) -> 1/2; mean 3/4
    assert pixel_auprc(MAPS, MASKS, pooling="per_scan") == pytest.approx(0.75)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        best_dice([np.zeros((2, 2))], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="pooling"):
        pixel_auprc(MAPS, MASKS, pooling="mean")  # type: ignore[arg-type]
