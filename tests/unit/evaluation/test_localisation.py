"""Pixel AUROC / AUPRC of anomaly maps against a corruption's region, by hand and through ``evaluate``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_ood.data.io import read_image, write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.evaluation.evaluate import evaluate
from ldm_ood.evaluation.localisation import (
    check_filter,
    filter_map,
    head_domain,
    localisation_metrics,
    on_grid,
)
from ldm_ood.evaluation.summary import Summary
from ldm_ood.evaluation.tables import localisation_grid, to_markdown
from ldm_ood.methods.ltm.likelihood import upsample_map
from ldm_ood.methods.records import RecordWriter

# scan A: voxel 4 (value 5.0) lies outside the head domain; scan B: all in the domain
MAP_A, REG_A, DOM_A = [0.9, 0.2, 0.5, 0.1, 5.0, 0.7], [1, 0, 0, 0, 0, 1], [1, 1, 1, 1, 0, 1]
MAP_B, REG_B, DOM_B = [0.3, 0.25, 0.05], [0, 1, 0], [1, 1, 1]


def _arrays():
    maps = [np.array(MAP_A), np.array(MAP_B)]
    regions = [np.array(REG_A, bool), np.array(REG_B, bool)]
    domains = [np.array(DOM_A, bool), np.array(DOM_B, bool)]
    return maps, regions, domains


def test_pooled_metrics_match_hand_counts():
    maps, regions, domains = _arrays()
    lm = localisation_metrics(maps, regions, domains, n_boot=200, seed=0)
    # in the domain: positives .9 .7 .25, negatives .2 .5 .1 .3 .05 -> .9: 5/5, .7: 5/5, .25: 3/5
    assert lm.pixel_auroc == pytest.approx(13 / 15)
    # descending .9+ .7+ .5 .3 .25+ ...: precision at the hits 1, 1, 3/5
    assert lm.pixel_auprc == pytest.approx((1 + 1 + 3 / 5) / 3)
    assert lm.region_fraction == pytest.approx(3 / 8)
    # case bootstrap: A twice -> AUROC 1 (p = 1/4), B twice -> .25 vs .3, .05 -> 1/2 (p = 1/4)
    assert lm.pixel_auroc_ci == (pytest.approx(0.5), pytest.approx(1.0))
    lo, hi = lm.pixel_auprc_ci
    assert lo <= lm.pixel_auprc <= hi


def test_whole_field_of_view_counts_the_voxel_outside_the_head():
    maps, regions, _ = _arrays()
    lm = localisation_metrics(maps, regions, [np.ones(r.shape, bool) for r in regions], n_boot=0)
    # the 5.0 negative now beats every positive: .9: 5/6, .7: 5/6, .25: 3/6
    assert lm.pixel_auroc == pytest.approx(13 / 18)
    assert lm.pixel_auprc == pytest.approx((1 / 2 + 2 / 3 + 3 / 6) / 3)
    assert lm.pixel_auroc_ci is None


def test_head_domain_is_the_region_plus_the_remaining_tissue():
    corrupted = np.array([[-15.0, 20.0], [-15.0, -15.0]])  # HU: window floor = air
    region = np.array([[False, False], [True, False]])
    np.testing.assert_array_equal(head_domain(corrupted, region), [[False, True], [True, False]])


def test_latent_map_is_upsampled_to_the_image_grid():
    latent = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    up = on_grid(latent, (8, 8, 8))
    assert up.shape == (8, 8, 8)
    np.testing.assert_array_equal(up, upsample_map(torch.as_tensor(latent), (8, 8, 8)))
    np.testing.assert_array_equal(up[4:, :4, 4:], latent[1, 0, 1])  # nearest blocks of 4
    assert on_grid(up, (8, 8, 8)) is not None and on_grid(up, (8, 8, 8)).shape == (8, 8, 8)
    with pytest.raises(ValueError, match="whole fraction"):
        on_grid(np.zeros((3, 3, 3)), (8, 8, 8))


def test_map_filters():
    a = np.zeros((11, 11, 11))
    a[5, 5, 5] = -1.0
    np.testing.assert_array_equal(filter_map(a, "none"), a)
    np.testing.assert_array_equal(filter_map(a, "abs"), np.abs(a))
    assert filter_map(a, "median3")[5, 5, 5] == 0.0  # a single voxel is speckle to a 3^3 median
    g = filter_map(a, "abs+gaussian1")
    w = np.exp(-np.arange(-4, 5) ** 2 / 2.0)
    w /= w.sum()  # the separable kernel, truncated at 4 sigma
    assert g.sum() == pytest.approx(1.0) and g[5, 5, 5] == pytest.approx(w[4] ** 3)
    assert g[5, 5, 6] == pytest.approx(w[4] ** 2 * w[5])
    for bad in ("gauss1", "abs+", "median", "sqrt"):
        with pytest.raises(ValueError, match="unknown map filter"):
            check_filter(bad)


def _tiny_localisation_run(root):
    """3 chunk_top scans 8³ (air at i = 0, tissue elsewhere), region = tissue with k >= 6; LDM maps
    on the image grid = region + small noise, LTM maps at latent size 2³ = 1 where k >= 4."""
    rng = np.random.default_rng(0)
    run, data = root / "run", root / "data"
    fields = ["case_id", "set", "pred_score", "map_path"]
    ldm = RecordWriter(run / "scores" / "ldm" / "chunk_top.csv", fields)
    ltm = RecordWriter(run / "scores" / "ltm" / "chunk_top.csv", fields)
    scale = RecordWriter(run / "scores" / "ldm" / "scale_0.1.csv", fields)
    cases = []
    for i in range(3):
        cid = f"c{i}"
        region = np.zeros((8, 8, 8), bool)
        region[1:, :, 6:] = True
        scan = np.full((8, 8, 8), 40.0, np.float32)
        scan[0] = -15.0
        scan[region] = -15.0  # removed tissue reads as air in the corrupted scan
        path = write_image(data / "chunk_top" / f"{cid}.nii.gz", scan)
        mask = write_image(data / "masks" / f"{cid}.nii.gz", region.astype(np.uint8))
        cases.append(Case(cid, path, mask, "chunk_top", "test"))
        cases.append(Case(cid, write_image(data / "scale" / f"{cid}.nii.gz", scan), None, "scale_0.1", "test"))
        lmap = region + rng.uniform(0, 0.1, region.shape).astype(np.float32)
        tok = np.zeros((2, 2, 2), np.float32)
        tok[:, :, 1] = 1.0
        ldm.write({"case_id": cid, "set": "chunk_top", "pred_score": 1.0,
                   "map_path": str(write_image(run / "maps" / "ldm" / f"{cid}.nii.gz", lmap))})
        ltm.write({"case_id": cid, "set": "chunk_top", "pred_score": 1.0,
                   "map_path": str(write_image(run / "maps" / "ltm" / f"{cid}.nii.gz", tok))})
        scale.write({"case_id": cid, "set": "scale_0.1", "pred_score": 1.0,
                     "map_path": str(write_image(run / "maps" / "ldm" / f"s{cid}.nii.gz", lmap))})
    return run, write_manifest(data / "manifest.csv", cases)


def test_evaluate_writes_localisation_rows(tmp_path):
    run, manifest = _tiny_localisation_run(tmp_path)
    assert read_image(run / "maps" / "ltm" / "c0.nii.gz").array.shape == (2, 2, 2)
    s = evaluate({"r": run}, manifest=manifest, print_tables=False, map_filters=("none", "gaussian1"))
    rows = {(r.method, r.map_filter): r for r in s.localisation}
    assert set(rows) == {(m, f) for m in ("ldm", "ltm") for f in ("none", "gaussian1")}  # scale_0.1: no region
    assert rows[("ldm", "none")].pixel_auroc == pytest.approx(1.0)
    assert rows[("ldm", "none")].pixel_auprc == pytest.approx(1.0)
    # LTM upsampled: positives (k >= 6) all 1; negatives in the head (i >= 1, k < 6): 7·8·6 = 336,
    # of which k = 4, 5 (112) tie at 1 and k < 4 (224) are 0 -> 224/336 + ½·112/336 = 5/6
    ltm = rows[("ltm", "none")]
    assert ltm.pixel_auroc == pytest.approx(5 / 6)
    assert (ltm.pixel_auroc_low, ltm.pixel_auroc_high) == (pytest.approx(5 / 6), pytest.approx(5 / 6))
    assert ltm.region_fraction == pytest.approx(112 / 448) and ltm.n_cases == 3 and ltm.domain == "head"
    again = Summary.load(run / "summary.json")
    assert again.localisation == s.localisation
    table = to_markdown(localisation_grid(s))
    assert "chunk top" in table and "0.833" in table and "1.000" in table


def test_evaluate_refuses_an_unknown_filter_before_writing(tmp_path):
    run, manifest = _tiny_localisation_run(tmp_path)
    with pytest.raises(ValueError, match="unknown map filter 'gauss'"):
        evaluate({"r": run}, manifest=manifest, print_tables=False, map_filters=("none", "gauss"))
    assert not (run / "summary.json").exists()
