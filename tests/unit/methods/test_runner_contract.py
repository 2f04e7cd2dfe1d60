"""Every scoring method through the one runner (``scoring.runner``): the same contract for LDM, LTM and segmentation.

One tiny 2D run with random networks saved as a trained run would be (first stage, LDM, LTM), loaded
by each method from disk. For each method: a bad file among good ones is reported while the others are
scored (and the call raises ``BatchError`` at the end), a second call resumes (nothing is redone),
folder mode writes ``<case>.txt`` with the score alone and resumes from it, and a clean call returns
the method's ``RunResult``.
"""

import math

import pytest
from tiny_runs import build_tiny_2d_run

from ldm_ood.errors import BatchError
from ldm_ood.methods.autoencoder.pipeline import calibrate_ae, calibrate_vae, segment_ae, segment_vae
from ldm_ood.methods.base import CalibrationResult, RunResult
from ldm_ood.methods.context import read_folder_score
from ldm_ood.methods.fanogan.pipeline import calibrate_fanogan, segment_fanogan
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
from ldm_ood.methods.ltm.pipeline import calibrate_ltm, score_ltm
from ldm_ood.methods.records import read_records
from ldm_ood.methods.segment.pipeline import calibrate_segment, segment
from ldm_ood.methods.transformer_heal.pipeline import (
    calibrate_ensemble,
    calibrate_transformer,
    segment_ensemble,
    segment_transformer,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_tiny_2d_run(tmp_path_factory.mktemp("contract"))


METHODS = {
    "ldm": (lambda r: calibrate_ldm(r, progress=False), lambda r, **kw: score_ldm(r, progress=False, **kw),
            lambda run: run.scores_path("ldm", "id")),
    "ltm": (lambda r: calibrate_ltm(r, progress=False), lambda r, **kw: score_ltm(r, progress=False, **kw),
            lambda run: run.scores_path("ltm", "id")),
    "segment": (lambda r: calibrate_segment(r, variants=["c"], device="cpu"),
                lambda r, **kw: segment(r, variant="c", progress=False, **kw),
                lambda run: run.segment_scores_path("c", "id")),
    "fanogan": (lambda r: calibrate_fanogan(r, progress=False, device="cpu"),
                lambda r, **kw: segment_fanogan(r, progress=False, device="cpu", **kw),
                lambda run: run.segment_scores_path("fanogan", "id")),
    "ae": (lambda r: calibrate_ae(r, progress=False, device="cpu"), lambda r, **kw: segment_ae(r, progress=False, **kw),
           lambda run: run.segment_scores_path("ae", "id")),
    "vae": (lambda r: calibrate_vae(r, progress=False, device="cpu"),
            lambda r, **kw: segment_vae(r, progress=False, **kw), lambda run: run.segment_scores_path("vae", "id")),
    "transformer": (lambda r: calibrate_transformer(r, progress=False),
                    lambda r, **kw: segment_transformer(r, progress=False, **kw),
                    lambda run: run.segment_scores_path("transformer", "id")),
    "ensemble": (lambda r: calibrate_ensemble(r, progress=False),
                 lambda r, **kw: segment_ensemble(r, progress=False, **kw),
                 lambda run: run.segment_scores_path("ensemble", "id")),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_honours_the_runner_contract(run, tmp_path, method):
    run_dir, folder = run
    calibrate, score, records = METHODS[method]
    cal = calibrate(run_dir.root)
    assert isinstance(cal, CalibrationResult) and cal.method == method and cal.path.is_file()
    assert cal.n == 3 and cal.failed == 0 and all(p.is_file() for p in cal.files.values())
    assert cal.threshold is None if method == "segment" else math.isfinite(cal.threshold)

    # a bad file among good ones: the good ones are scored, the bad one named, the call raises at the end
    with pytest.raises(BatchError, match="bad") as err:
        score(run_dir.root)
    assert [cid for cid, _ in err.value.failures.items] == ["bad"]
    rows = read_records(records(run_dir))
    assert sorted(r["case_id"] for r in rows) == ["t0", "t1", "t2"]
    assert all(math.isfinite(float(r["pred_score"])) and float(r["seconds"]) >= 0 for r in rows)

    # resume: nothing is scored twice (the bad case is tried again and fails again)
    with pytest.raises(BatchError, match="bad"):
        score(run_dir.root)
    assert len(read_records(records(run_dir))) == 3

    # folder mode: <case>.txt holds the score alone, written for the good cases; a rerun resumes from it
    out = tmp_path / f"out_{method}"
    with pytest.raises(BatchError, match="broken"):
        score(run_dir.root, input_dir=folder, output_dir=out)
    scores = {p.stem: read_folder_score(p) for p in out.glob("*.txt")}
    assert set(scores) == {"f0", "f1"} and all(math.isfinite(v) for v in scores.values())
    (folder / "broken.nii.gz").rename(tmp_path / "broken.nii.gz")
    try:
        again = score(run_dir.root, input_dir=folder, output_dir=out)
    finally:
        (tmp_path / "broken.nii.gz").rename(folder / "broken.nii.gz")
    assert isinstance(again, RunResult)
    assert (again.scored, again.skipped, again.failed) == (0, 2, 0)
    assert again.outputs["folder"] == out
