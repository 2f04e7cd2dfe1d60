"""Paper 001 pixel metrics with case-bootstrap CIs, time per 100 slices, and Table 1 beside the paper."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_ood.evaluation.metrics import best_dice, pixel_auprc
from ldm_ood.evaluation.segmentation import pixel_metrics, seconds_per_100
from ldm_ood.evaluation.summary import SegmentationResult, Summary
from ldm_ood.evaluation.tables import PAPER_001_TABLE1, paper001_table1_grid, paper001_table3_grid


def _case(rng, noise):
    gt = np.zeros((8, 8), bool)
    gt[2:5, 3:6] = True
    return gt.astype(float) + noise * rng.random((8, 8)), gt


def test_perfect_maps_have_a_degenerate_interval_and_noisy_ones_a_wider_one():
    rng = np.random.default_rng(0)
    perfect = [_case(rng, 0.0) for _ in range(5)]
    m = pixel_metrics([a for a, _ in perfect], [g for _, g in perfect], threshold=0.5, n_boot=50)
    assert (m.best_dice, m.best_dice_ci, m.dice_at_threshold, m.pixel_auprc) == (1.0, (1.0, 1.0), 1.0, 1.0)
    noisy = [_case(rng, 1.5) for _ in range(6)]
    maps, gts = [a for a, _ in noisy], [g for _, g in noisy]
    m = pixel_metrics(maps, gts, threshold=None, n_boot=100, seed=3)
    assert m.best_dice == pytest.approx(best_dice(maps, gts).dice) and m.pixel_auprc == pytest.approx(pixel_auprc(maps, gts))
    lo, hi = m.best_dice_ci
    assert lo < hi and lo <= m.best_dice <= hi
    assert m.dice_at_threshold is None
    assert pixel_metrics(maps[:1], gts[:1], None).best_dice_ci is None  # one scan: no interval


def test_seconds_per_100_is_the_mean_row_time_times_100():
    rows = [{"seconds": "0.5"}, {"seconds": "1.5"}, {"seconds": ""}, {"seconds": "nan"}]
    assert seconds_per_100(rows) == pytest.approx(100.0)
    assert seconds_per_100([{"seconds": ""}]) is None


def _row(variant, dice):
    return SegmentationResult("seg2d", variant, "sprites", 10, 10, "pooled", dice, 0.5, 0.4, 0.6, 0.7, 0.8, 0.9,
                              dice - 0.1, dice + 0.05, 0.6, 0.8, 12.5)


def test_table1_lists_systems_in_the_papers_order_beside_its_numbers():
    s = Summary(runs={"seg2d": "x"})
    s.segmentation = [_row("c", 0.75), _row("ae", 0.2), _row("d", 0.7),
                      SegmentationResult("seg2d", "c", "id", 10, 0, "pooled", *([None] * 7))]
    grid = paper001_table1_grid(s)
    systems = [cells[1].text for _, cells in grid.rows]
    assert systems == ["AE (spatial)", "DDPM (c)", "DDIM (d)"]  # the id set (no masks) is not a Table 1 row
    c = grid.rows[1][1]
    assert c[2].text == "0.750 [0.650, 0.800]" and c[3].text == f"{PAPER_001_TABLE1['c'][1]:.3f}" and c[8].text == "12.5"


def test_segmentation_time_excludes_the_image_score_which_is_reported_apart():
    rows = [{"seconds": "2.0", "score_seconds": "1.5"}, {"seconds": "1.0", "score_seconds": "0.5"}, {"seconds": "0.4"}]
    assert seconds_per_100(rows, less="score_seconds") == pytest.approx(100 * (0.5 + 0.5 + 0.4) / 3)
    assert seconds_per_100(rows, "score_seconds") == pytest.approx(100.0)  # rows without the column are not timed


def test_table3_orders_systems_by_time_and_names_the_downsampling_factor():
    def row(variant, f, seconds):
        return SegmentationResult(f"seg2d_f{f}" if f else "seg2d", variant, "haemorrhage", 10, 10, "pooled", 0.5, 0.5,
                                  0.4, 0.6, 0.7, 0.8, 0.9, 0.4, 0.6, 0.6, 0.8, seconds, downsampling=f)

    s = Summary(runs={"seg2d": "x", "seg2d_f8": "y"})
    s.segmentation = [row("c", 4, 90.0), row("d", 8, 5.0), row("vae", 4, 0.8), row("c", 8, 40.0), row("d", 4, 12.0),
                      _row("c", 0.75)]  # a sprites row: Table 1's, not Table 3's
    grid = paper001_table3_grid(s)
    got = [(cells[0].text, cells[1].text, cells[3].text, cells[6].text) for _, cells in grid.rows]
    assert got == [("VAE (dense)", "—", "0.353", "1"), ("DDIM (d)", "8", "0.483", "12"), ("DDIM (d)", "4", "0.469", "46"),
                   ("DDPM (c)", "8", "0.473", "81"), ("DDPM (c)", "4", "0.471", "324")]
    assert [cells[1].text for _, cells in paper001_table1_grid(s).rows] == ["DDPM (c)"]  # haemorrhage rows left out
