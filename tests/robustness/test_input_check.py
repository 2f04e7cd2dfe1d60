"""Inputs that are not scans of the trained kind are flagged OOD with a reason, never scored as normal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_runs import build_tiny_2d_run

from ldm_ood.config import load_config
from ldm_ood.data.io import Image, write_image
from ldm_ood.data.plausibility import DEFAULT, InputDomain, InputStats, input_stats
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.evaluation.inputs import read_score_column
from ldm_ood.methods.context import read_folder_score
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
from ldm_ood.methods.ltm.pipeline import calibrate_ltm, score_ltm
from ldm_ood.methods.records import read_records

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stats_measure_padding_extent_foreground_and_saturation():
    x = torch.zeros(1, 8, 8)
    x[0, :4, :2] = 1.0  # 8 saturated voxels
    x[0, 4:, :2] = 0.5  # 8 foreground voxels
    s = input_stats(x, fitted_shape=(8, 2), grid=(8, 8))
    assert s == InputStats(coverage=0.25, min_extent=0.25, foreground=16 / 64, saturated=0.5)
    assert input_stats(torch.zeros(1, 4, 4), (40, 40), (4, 4)) == InputStats(1.0, 1.0, 0.0, 0.0)  # cropped: full


def test_the_domain_is_the_validation_range_widened_and_names_each_broken_bound():
    val = [InputStats(1.0, 1.0, 0.3, 0.2), InputStats(0.9, 0.8, 0.4, 0.4)]
    d = InputDomain.fit(val)
    assert (d.coverage_min, d.min_extent_min, d.foreground_min, d.n) == pytest.approx((0.45, 0.4, 0.075, 2))
    assert d.saturated_max == pytest.approx(0.4 + 0.9 * 0.6)
    assert d.reason(InputStats(0.9, 0.8, 0.1, 0.5)) == ""
    reason = d.reason(InputStats(0.01, 0.1, 0.0, 1.0))
    assert reason.count("; ") == 3 and "covers 1.0% of the grid" in reason and "near-blank" in reason
    assert "top of the intensity window" in reason and "thinnest axis" in reason
    assert InputDomain.fit([]) == DEFAULT


def test_preprocessing_records_the_stats_of_a_volume_that_is_mostly_padding():
    cfg = load_config(preset="tiny").data  # 16^3 grid, no resampling
    x, meta = Preprocessor(cfg).apply(Image(np.full((3, 3, 3), 40.0, np.float32), np.eye(4), None))
    assert meta.stats.coverage == pytest.approx(27 / 16**3) and meta.stats.min_extent == pytest.approx(3 / 16)
    assert "covers 0.7% of the grid" in DEFAULT.reason(meta.stats)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    run, folder = build_tiny_2d_run(tmp_path_factory.mktemp("qc"))
    (folder / "broken.nii.gz").unlink()
    calibrate_ldm(run.root, progress=False)
    calibrate_ltm(run.root, progress=False)
    rng = np.random.default_rng(0)
    write_image(folder / "tiny.nii.gz", rng.normal(40, 5, (3, 3)).astype(np.float32))  # 3x3 pixels of tissue
    write_image(folder / "blank.nii.gz", rng.normal(-1000, 3, (18, 20)).astype(np.float32))  # air only
    return run, folder


@pytest.mark.parametrize("method", ["ldm", "ltm"])
def test_implausible_inputs_get_the_most_ood_score_with_their_reason(calibrated, tmp_path, method):
    run, folder = calibrated
    score = score_ldm if method == "ldm" else score_ltm
    res = score(run.root, input_dir=folder, output_dir=tmp_path / "out", progress=False)
    assert (res.scored, res.rejected) == (4, 2)
    txt = {p.stem: read_folder_score(p) for p in (tmp_path / "out").glob("*.txt")}
    assert txt["tiny"] == math.inf and txt["blank"] == math.inf and math.isfinite(txt["f0"]) and math.isfinite(txt["f1"])

    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,path,set,split\n" + "".join(
        f"{p.stem.split('.')[0]},{p},{'id' if p.name.startswith('f') else 'odd'},test\n" for p in sorted(folder.iterdir())))
    score(run.root, manifest=manifest, progress=False)
    rows = {r["case_id"]: r for r in read_records(run.scores_path(method, "odd"))}
    assert set(rows) == {"tiny", "blank"}
    assert "covers" in rows["tiny"]["qc_reason"] and "near-blank" in rows["blank"]["qc_reason"]
    for r in rows.values():
        assert r["pred_score"] == "inf" and r["flag"] == "1" and r["percentile"] == "100.0"
        assert math.isfinite(float(r["model_score"]))  # the model's own score is kept
    normal = read_records(run.scores_path(method, "id"))
    assert all(r["qc_reason"] == "" and r["model_score"] == r["pred_score"] for r in normal)
    col = read_score_column(run.scores_path(method, "odd"), "pred_score")
    assert col.n_rejected == 2 and col.n_nonfinite == 0 and col.scores["tiny"] == math.inf
    assert "2 of 2 scan(s) flagged OOD by the input check" in col.rejected_note()
