"""``calibrate --method fanogan`` and ``segment --method fanogan`` against hand computations on a tiny run."""

import json

import numpy as np
import pytest
import torch
from tiny_runs import build_tiny_2d_run

from ldm_ood.data.io import read_image
from ldm_ood.data.manifest import read_manifest, select
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.errors import BatchError, NonFiniteCalibrationError
from ldm_ood.methods.fanogan.pipeline import calibrate_fanogan, segment_fanogan
from ldm_ood.methods.records import read_records
from ldm_ood.methods.segment.variants import foreground
from ldm_ood.models.fanogan import izi_f
from ldm_ood.models.loading import load_fanogan

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run, _ = build_tiny_2d_run(tmp_path_factory.mktemp("fanogan_method"))
    return run


def _by_hand(run, split):
    """``{case: (x (1, 1, *grid), meta, healed, izi_f score)}`` of the run's ``split`` cases, computed directly."""
    cfg = run.load_config()
    pre, model = Preprocessor(cfg.data), load_fanogan(run)
    out = {}
    for case in select(read_manifest(cfg.data.manifest), split=split):
        if case.case_id == "bad":
            continue
        x, meta = pre.load(case.path)
        with torch.no_grad():
            terms = izi_f(model, x[None])
        out[case.case_id] = (x[None], meta, terms.healed, terms.score(cfg.fanogan.kappa).item())
    return cfg, pre, out


def test_calibration_is_the_fpr_quantile_of_the_healthy_foreground_residuals(run):
    result = calibrate_fanogan(run.root, progress=False, device="cpu")
    cfg, _, val = _by_hand(run, "val")
    calib = json.loads(run.calibration_json_path("fanogan").read_text())
    voxels = np.concatenate([(x - h).abs()[foreground(x)].numpy() for x, _, h, _ in val.values()])
    expected = np.quantile(voxels.astype(np.float64), 1 - cfg.segment.fpr)
    assert calib["residual_threshold"] == pytest.approx(expected, rel=1e-6)
    assert calib["fpr"] == cfg.segment.fpr and calib["n_val"] == 3
    assert calib["val_scores"] == pytest.approx({k: v[3] for k, v in val.items()}, rel=1e-6)
    scores = np.array([v[3] for v in val.values()])
    assert calib["score_threshold"] == pytest.approx(np.quantile(scores, 1 - cfg.segment.fpr), rel=1e-6)
    assert result.threshold == calib["score_threshold"]
    assert result.details["residual_threshold"] == calib["residual_threshold"]
    assert run.calibration_record_path("fanogan").is_file() and run.input_domain_path("fanogan").is_file()


def test_segmentation_writes_the_residual_map_its_mask_and_the_izi_f_score(run):
    with pytest.raises(BatchError, match="bad"):
        segment_fanogan(run.root, progress=False, device="cpu")
    threshold = json.loads(run.calibration_json_path("fanogan").read_text())["residual_threshold"]
    _, pre, test = _by_hand(run, "test")
    rows = {r["case_id"]: r for r in read_records(run.segment_scores_path("fanogan", "id"))}
    assert sorted(rows) == ["t0", "t1", "t2"]
    for case_id, (x, meta, healed, score) in test.items():
        row = rows[case_id]
        assert float(row["pred_score"]) == pytest.approx(score, rel=1e-5)
        amap = read_image(row["map_path"], allow_constant=True).array
        mask = read_image(row["mask_path"], allow_constant=True).array
        healed_img = read_image(row["healed_path"], allow_constant=True).array
        expected = pre.invert((x - healed).abs()[0, 0].numpy(), meta).array
        np.testing.assert_allclose(amap, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(healed_img, pre.invert(healed[0, 0].numpy(), meta).array, rtol=1e-5, atol=1e-6)
        assert np.array_equal(mask > 0, amap >= threshold)
        assert row["map_path"].startswith(str(run.segment_dir("fanogan", "id")))


class NaNGenerator(torch.nn.Module):
    def forward(self, z):
        return torch.full((z.shape[0], 1, 16, 16), float("nan"))


def test_a_calibration_from_networks_giving_nan_is_refused_and_nothing_is_written(tmp_path):
    run, _ = build_tiny_2d_run(tmp_path)
    model = load_fanogan(run)
    model.generator = NaNGenerator()
    with pytest.raises(NonFiniteCalibrationError, match="3 of 3 validation scans gave non-finite image score"):
        calibrate_fanogan(run.root, model=model, progress=False, device="cpu")
    assert not run.calibration_json_path("fanogan").exists()
    assert not run.calibration_record_path("fanogan").exists()
