"""A ScoringSession loads a run once and scores one scan at a time exactly as ``ldm-ood score`` does:
the same score as folder mode's ``<case>.txt``, the same anomaly map (voxels and affine), the same
row as manifest mode's score file, from a file or from an image in memory."""

import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
from tiny_runs import build_tiny_2d_run

from ldm_ood.data.io import read_image
from ldm_ood.errors import BatchError, ConfigError, InputError
from ldm_ood.methods.context import read_folder_score
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
from ldm_ood.methods.ltm.pipeline import calibrate_ltm, score_ltm
from ldm_ood.methods.records import read_records
from ldm_ood.methods.session import ScoringSession

pytestmark = pytest.mark.usefixtures("one_thread")

SCORE = {"ldm": score_ldm, "ltm": score_ltm}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run, _ = build_tiny_2d_run(tmp_path_factory.mktemp("session"))
    calibrate_ldm(run.root, progress=False)
    calibrate_ltm(run.root, progress=False)
    return run


def _same_map(a, b):
    a, b = nib.load(a), nib.load(b)
    return np.array_equal(a.get_fdata(), b.get_fdata()) and np.array_equal(a.affine, b.affine)


@pytest.mark.parametrize("method", ["ldm", "ltm"])
def test_a_session_scores_a_scan_as_folder_mode_does(run, tmp_path, method):
    scan = run.root.parent / "data" / "t1.nii.gz"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(scan, folder / scan.name)  # one scan: a batch of one, as the session scores it
    SCORE[method](run.root, input_dir=folder, output_dir=tmp_path / "out", progress=False)

    session = ScoringSession(run.root, method)
    scored = session.score(folder / scan.name, tmp_path / "session")
    assert scored.case_id == "t1" and scored.map_path == tmp_path / "session" / "t1.nii.gz"
    assert scored.row["pred_score"] == read_folder_score(tmp_path / "out" / "t1.txt")
    assert _same_map(scored.map_path, tmp_path / "out" / "t1.nii.gz")
    record = json.loads(run.calibration_record_path(method).read_text())
    assert scored.row["calibration_id"] == record["id"]
    # the model id is folder mode's (<case>.json): the id of the networks scoring used
    assert session.model_id == json.loads((tmp_path / "out" / "t1.json").read_text())["model_id"] != ""
    assert scored.row["flag"] == int(scored.row["pred_score"] > session.threshold)


@pytest.mark.parametrize("method", ["ldm", "ltm"])
def test_a_session_row_is_the_manifest_mode_row(run, method):
    with pytest.raises(BatchError, match="bad"):  # the tiny run's manifest has one unreadable case
        SCORE[method](run.root, progress=False)
    rows = {r["case_id"]: r for r in read_records(run.scores_path(method, "id"))}
    session = ScoringSession(run.root, method)
    for case_id in ("t0", "t2"):
        row = session.score(run.root.parent / "data" / f"{case_id}.nii.gz", run.root.parent / "session").row
        expected = rows[case_id]
        assert set(row) == set(expected) - {"set"}
        for key in set(row) - {"map_path", "seconds", "case_id", "qc_reason", "calibration_id"}:
            assert row[key] == float(expected[key]), key  # the CSV holds repr(float): exact
        assert (row["qc_reason"], row["calibration_id"]) == (expected["qc_reason"], expected["calibration_id"])
        assert _same_map(row["map_path"], expected["map_path"])


def test_an_image_in_memory_scores_as_its_file(run, tmp_path):
    session = ScoringSession(run.root, "ldm")
    path = run.root.parent / "folder" / "f0.nii.gz"
    from_file = session.score(path, tmp_path / "a")
    in_memory = session.score(read_image(path, spatial_dims=2), tmp_path / "b", case_id="f0")
    assert {k: v for k, v in in_memory.row.items() if k not in ("map_path", "seconds")} == \
           {k: v for k, v in from_file.row.items() if k not in ("map_path", "seconds")}
    assert _same_map(in_memory.map_path, from_file.map_path)
    other = session.score(path, tmp_path / "c", case_id="renamed")  # the case id seeds the noise
    assert other.row["pred_score"] != from_file.row["pred_score"] and math.isfinite(other.row["pred_score"])


def test_a_session_refuses_what_it_cannot_serve(run, tmp_path):
    session = ScoringSession(run.root, "ldm")
    with pytest.raises(InputError, match="case id '../x' contains a path separator"):
        session.score(run.root.parent / "folder" / "f0.nii.gz", tmp_path, case_id="../x")
    with pytest.raises(InputError, match="wrong dimensionality"):
        session.score(_volume(tmp_path), tmp_path / "out")
    with pytest.raises(ConfigError, match="method 'segment' cannot be served; the detection methods can: ldm, ltm"):
        ScoringSession(run.root, "segment")
    bare, _ = build_tiny_2d_run(tmp_path / "bare")
    with pytest.raises(ConfigError, match="method ltm is not calibrated; run `ldm-ood calibrate --method ltm"):
        ScoringSession(bare.root, "ltm")
    with pytest.raises(FileNotFoundError, match="no OOD calibration"):
        ScoringSession(bare.root, "ldm")


def _volume(tmp_path):
    from ldm_ood.data.io import write_image

    return write_image(tmp_path / "vol.nii.gz", np.random.default_rng(0).normal(size=(6, 6, 6)).astype(np.float32))
