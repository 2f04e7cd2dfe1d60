"""Calibration and segmentation of the AE / VAE baselines on a tiny run: the numbers against their definitions."""

import json

import numpy as np
import pytest
import torch
from tiny_runs import build_tiny_2d_run

from ldm_ood.data.io import read_image
from ldm_ood.data.manifest import read_manifest, select
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.errors import BatchError, NonFiniteCalibrationError
from ldm_ood.evaluation.inputs import read_threshold, segmentation_calibration
from ldm_ood.methods.autoencoder.maps import anomaly_batch
from ldm_ood.methods.autoencoder.model import load_autoencoder
from ldm_ood.methods.autoencoder.pipeline import calibrate_ae, calibrate_vae, segment_ae, segment_vae
from ldm_ood.methods.records import read_records
from ldm_ood.methods.segment.variants import foreground

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run(tmp_path):
    return build_tiny_2d_run(tmp_path)[0]


def _val_inputs(run):
    cfg = run.load_config()
    pre = Preprocessor(cfg.data)
    cases = select(read_manifest(cfg.data.manifest), split="val")
    return cfg, torch.stack([pre.load(c.path)[0] for c in cases]), [c.case_id for c in cases]


@pytest.mark.parametrize("kind, calibrate", [("ae", calibrate_ae), ("vae", calibrate_vae)])
def test_calibration_is_the_fpr_quantile_of_the_foreground_residuals(run, kind, calibrate):
    result = calibrate(run.root, progress=False, device="cpu")
    cfg, x, ids = _val_inputs(run)
    out = anomaly_batch(load_autoencoder(run, kind), x, getattr(cfg, kind))
    fg = out.anomaly_map[foreground(x)].double().numpy()
    expected = float(np.quantile(fg, 1 - cfg.segment.fpr))
    calib = json.loads(run.calibration_json_path(kind).read_text())
    assert calib["residual_threshold"] == pytest.approx(expected, rel=1e-6)
    assert result.details["residual_threshold"] == calib["residual_threshold"]
    assert calib["fpr"] == cfg.segment.fpr and calib["n_val"] == result.n == 3
    assert calib["val_scores"] == pytest.approx(dict(zip(ids, out.score.tolist())), rel=1e-6)
    assert calib["score_threshold"] == pytest.approx(float(np.quantile(out.score.numpy(), 1 - cfg.segment.fpr)))
    assert result.threshold == calib["score_threshold"]
    assert calib["val_score_mean"] == pytest.approx(float(out.score.double().mean()))
    assert calib["top_k"] == 13  # ceil(0.05 * 16 * 16)
    # evaluate and the report read the baseline's threshold from calibration/<kind>.json
    path = segmentation_calibration(run, kind)
    assert path == run.calibration_json_path(kind)
    assert read_threshold(path, "residual_threshold", kind) == calib["residual_threshold"]
    assert (run.calibration_record_path(kind)).is_file() and run.input_domain_path(kind).is_file()


def test_a_perfect_reconstruction_gives_zero_maps_and_scores_and_heals_to_the_input(run, monkeypatch):
    cfg = run.load_config()
    model = load_autoencoder(run, "ae")
    monkeypatch.setattr(model, "forward", lambda inp: inp)
    cal = calibrate_ae(run.root, model=model, progress=False, device="cpu")
    assert cal.details["residual_threshold"] == 0 and cal.details["val_score_mean"] == 0
    with pytest.raises(BatchError, match="bad"):  # the manifest's unreadable case is reported at the end
        segment_ae(run.root, model=model, progress=False, device="cpu")
    rows = read_records(run.segment_scores_path("ae", "id"))
    assert sorted(r["case_id"] for r in rows) == ["t0", "t1", "t2"]
    pre = Preprocessor(cfg.data)
    for r in rows:
        assert float(r["pred_score"]) == 0.0 and r["calibration_id"] == cal.id
        amap = read_image(r["map_path"], allow_constant=True).array
        assert np.count_nonzero(amap) == 0
        healed = read_image(r["healed_path"]).array
        x, meta = pre.load(f"{run.root.parent}/data/{r['case_id']}.nii.gz")
        assert np.allclose(healed, pre.invert(x[0].numpy(), meta).array, atol=1e-5)  # healed = x̂ = x
        mask = read_image(r["mask_path"], allow_constant=True).array
        assert (mask == 1).all()  # mask = map >= threshold, and 0 >= 0 everywhere


def test_a_network_giving_nan_writes_no_calibration(run, monkeypatch):
    model = load_autoencoder(run, "vae")
    monkeypatch.setattr(model, "decode_forward", lambda z, sigmoid=True: torch.full((len(z), 1, 16, 16), np.nan))
    with pytest.raises(NonFiniteCalibrationError, match=r"calibration vae: 3 of 3 validation scans gave non-finite"):
        calibrate_vae(run.root, model=model, progress=False, device="cpu")
    assert not run.calibration_json_path("vae").exists()


def test_segmenting_an_uncalibrated_baseline_calibrates_it_first(run):
    assert not run.calibration_json_path("vae").exists()
    with pytest.raises(BatchError, match="bad"):  # the manifest's unreadable case, reported after the others
        segment_vae(run.root, sets=["id"], progress=False, device="cpu")
    assert run.calibration_json_path("vae").is_file()
    thr = json.loads(run.calibration_json_path("vae").read_text())["residual_threshold"]
    rows = read_records(run.segment_scores_path("vae", "id"))
    assert sorted(r["case_id"] for r in rows) == ["t0", "t1", "t2"]
    for r in rows:
        amap = read_image(r["map_path"], allow_constant=True).array
        mask = read_image(r["mask_path"], allow_constant=True).array
        assert np.array_equal(mask.astype(bool), amap >= thr)
        assert np.isfinite(float(r["pred_score"])) and float(r["pred_score"]) >= 0
