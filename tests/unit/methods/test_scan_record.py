"""Folder mode's per-scan record ``<case>.json`` (``methods.scan_record``): its values are those of the
score-file row of the same scan in manifest mode, the calibration's operating point and the networks'
model id; a scan that fails gets a record with its error; the file is strict JSON.

One tiny 2D run with random networks (``tests/tiny_runs.py``); the folder holds copies of two of the
manifest's test scans under the same names, so folder and manifest mode score the same scans with
the same seeds.
"""

import hashlib
import json
import math
import shutil

import numpy as np
import pytest
from tiny_runs import build_tiny_2d_run

from ldm_ood.data.manifest import Case
from ldm_ood.errors import BatchError
from ldm_ood.methods.autoencoder.pipeline import calibrate_ae, segment_ae
from ldm_ood.methods.base import Calibrated
from ldm_ood.methods.context import read_folder_score
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
from ldm_ood.methods.operating_point import OperatingPoint, load_operating_point, read_operating_point
from ldm_ood.methods.records import read_records
from ldm_ood.methods.scan_record import ScanRecord, read_scan_record, scored_record

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    run_dir, broken_folder = build_tiny_2d_run(root)
    folder = root / "scans"
    folder.mkdir()
    for case in ("t0", "t1"):
        shutil.copy(root / "data" / f"{case}.nii.gz", folder / f"{case}.nii.gz")
    shutil.copy(broken_folder / "broken.nii.gz", folder / "broken.nii.gz")
    return run_dir, folder


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _score_both(run_dir, folder, out, calibrate, score):
    """Calibrate, score the manifest (its bad case fails) and the folder (its broken file fails)."""
    calibrate(run_dir.root)
    with pytest.raises(BatchError, match="bad"):
        score(run_dir.root)
    with pytest.raises(BatchError, match="broken"):
        score(run_dir.root, input_dir=folder, output_dir=out)


def test_ldm_records_match_the_manifest_rows_of_the_same_scans(run, tmp_path):
    run_dir, folder = run
    out = tmp_path / "out"
    _score_both(run_dir, folder, out, lambda r: calibrate_ldm(r, progress=False),
                lambda r, **kw: score_ldm(r, progress=False, **kw))
    rows = {r["case_id"]: r for r in read_records(run_dir.scores_path("ldm", "id"))}
    cal = json.loads(run_dir.ood_calibration_path.read_text())
    record_id = json.loads(run_dir.calibration_record_path("ldm").read_text())["id"]
    networks = {s: _sha(run_dir.model_path(s)) for s in ("first_stage", "ldm")}
    model_id = hashlib.sha256(json.dumps(networks, sort_keys=True).encode()).hexdigest()[:12]
    for case in ("t0", "t1"):
        row, rec = rows[case], read_scan_record(out / f"{case}.json")
        assert rec.case_id == case and rec.input == str(folder / f"{case}.nii.gz") and not rec.failed
        assert rec.score == pytest.approx(float(row["pred_score"]), rel=1e-6)
        assert rec.score == read_folder_score(out / f"{case}.txt")  # the .txt holds the same score
        assert rec.model_score == pytest.approx(float(row["model_score"]), rel=1e-6)
        assert rec.percentile == pytest.approx(float(row["percentile"]))
        assert rec.flag is bool(int(row["flag"])) and rec.flag is (rec.score > cal["threshold"])
        assert (rec.threshold, rec.fpr) == (cal["threshold"], cal["fpr"])
        assert rec.qc_reason == row["qc_reason"] == ""
        assert rec.calibration_id == row["calibration_id"] == record_id
        assert rec.model_id == model_id and rec.method == "ldm" and rec.method_label == "score ldm"
        assert rec.seconds >= 0
        assert rec.outputs == {"score": f"{case}.txt", "map": f"{case}.nii.gz"} and (out / f"{case}.nii.gz").exists()
    broken = read_scan_record(out / "broken.json")  # the failed scan: its error, no score, no .txt
    assert broken.failed and "broken.nii.gz" in broken.error and broken.score is None
    assert broken.threshold == cal["threshold"] and not (out / "broken.txt").exists()


def test_segmentation_records_place_the_score_among_the_validation_scores(run, tmp_path):
    """The AE baseline's score file has no percentile / flag: the record computes them from its calibration."""
    run_dir, folder = run
    out = tmp_path / "out"
    _score_both(run_dir, folder, out, lambda r: calibrate_ae(r, progress=False, device="cpu"),
                lambda r, **kw: segment_ae(r, progress=False, **kw))
    rows = {r["case_id"]: r for r in read_records(run_dir.segment_scores_path("ae", "id"))}
    cal = json.loads(run_dir.calibration_json_path("ae").read_text())
    val = np.array(list(cal["val_scores"].values()))
    assert len(val) == 3
    for case in ("t0", "t1"):
        rec = read_scan_record(out / f"{case}.json")
        assert rec.score == pytest.approx(float(rows[case]["pred_score"]), rel=1e-5)
        assert rec.percentile == pytest.approx(100.0 * np.mean(val <= rec.score))
        assert rec.flag is bool(rec.score > cal["score_threshold"])
        assert (rec.threshold, rec.fpr, rec.method) == (cal["score_threshold"], cal["fpr"], "ae")
        assert set(rec.outputs) == {"score", "healed", "map", "mask"} and rec.outputs["map"] == f"{case}_map.nii.gz"


def test_a_scan_flagged_by_the_input_check_is_strict_json_with_an_infinite_score(tmp_path):
    ref = OperatingPoint((0.1, 0.2, 0.3, 0.4), threshold=0.35, fpr=0.25)
    calibrated = Calibrated("abc", method="ae", model_id="m1", reference=ref)
    row = {"pred_score": math.inf, "map_path": str(tmp_path / "c_map.nii.gz"), "model_score": 0.15,
           "qc_reason": "only 5 % of the grid is inside the scan", "calibration_id": "abc"}
    rec = scored_record(Case("c", tmp_path / "c.nii.gz"), row, calibrated, "segment ae", 1.23456, tmp_path / "c.txt")
    assert (rec.score, rec.model_score, rec.percentile, rec.flag) == (math.inf, 0.15, 100.0, True)
    text = rec.to_json()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["score"] == "inf" and data["seconds"] == 1.235 and data["outputs"]["map"] == "c_map.nii.gz"
    assert ScanRecord.from_json(text) == rec
    # the same row without the input check: percentile and flag from the validation scores
    clear = scored_record(Case("c", tmp_path / "c.nii.gz"), {**row, "pred_score": 0.15, "qc_reason": ""},
                          calibrated, "segment ae", 1.0, tmp_path / "c.txt")
    assert (clear.percentile, clear.flag) == (25.0, False)
    with pytest.raises(ValueError, match="not a scan record"):
        ScanRecord.from_json('{"case_id": "c"}')


def test_operating_point_of_an_old_calibration_is_empty_not_an_error(tmp_path):
    """Calibrations without validation scores (older versions) or without a readable file give an empty
    operating point; each method's keys are read from its registry line."""
    assert read_operating_point({"threshold": 1.0, "fpr": 0.05}, "ldm") == OperatingPoint((), 1.0, 0.05)
    assert not read_operating_point({"threshold": 1.0}, "ldm").available
    assert read_operating_point({"values": [3.0, 1.0], "threshold": 2.5, "fpr": 0.1}, "ltm") == OperatingPoint((3.0, 1.0), 2.5, 0.1)
    seg = read_operating_point({"val_scores": {"a": 1.0, "b": 2.0}, "fpr": 0.05}, "segment")
    assert seg == OperatingPoint((1.0, 2.0), None, None) and seg.flag(5.0) is None and seg.percentile(1.5) == 50.0
    heal = read_operating_point({"val_scores": {"a": 1.0}, "image_threshold": 1.0, "fpr": 0.05}, "transformer")
    assert heal.threshold == 1.0 and heal.flag(1.0) is False and heal.flag(1.01) is True
    from ldm_ood.runs import RunDir

    run = RunDir(tmp_path / "run")
    assert load_operating_point(run, "ldm") == OperatingPoint()  # not calibrated
    run.calibration_dir.mkdir(parents=True)
    run.ood_calibration_path.write_text("{ torn")
    assert load_operating_point(run, "ldm") == OperatingPoint()
