"""What a result was made from is recorded and checked: calibrations name their files and networks,
score rows their calibration, and a second writer on a run directory is refused."""

from __future__ import annotations

import json
import math
import multiprocessing as mp

import pytest
import torch
from tiny_runs import build_tiny_2d_run

from ldm_ood.artifacts.checkpoint import save_model
from ldm_ood.artifacts.lock import run_lock
from ldm_ood.errors import BatchError, IntegrityError, RunLockedError, StaleArtifactError
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
from ldm_ood.methods.records import read_records
from ldm_ood.models.first_stage import build_first_stage

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run(tmp_path):
    return build_tiny_2d_run(tmp_path)[0]


def _score(run, **kw):
    with pytest.raises(BatchError, match="bad"):  # the tiny run's manifest has one unreadable case
        score_ldm(run.root, progress=False, **kw)
    return read_records(run.scores_path("ldm", "id"))


def test_rows_carry_the_calibration_id_and_another_calibration_is_not_mixed_in(run):
    first = calibrate_ldm(run.root, progress=False)
    record = json.loads(run.calibration_record_path("ldm").read_text())
    assert first.id == record["id"] and len(first.id) == 12
    assert set(record["files"]) == {"ood.json", "ood_voxel_stats.safetensors", "ldm_input_domain.json"}
    assert set(record["networks"]) == {"first_stage", "ldm"}
    rows = _score(run)
    assert {r["calibration_id"] for r in rows} == {first.id} and len(rows) == 3

    path = run.scores_path("ldm", "id")
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))  # a partial run: one row left
    cal = json.loads(run.ood_calibration_path.read_text())
    cal["threshold"] += 1.0  # edited by hand
    run.ood_calibration_path.write_text(json.dumps(cal))
    with pytest.raises(IntegrityError, match="ood.json: sha256 .* differs from .* recorded in .*ldm_record.json"):
        score_ldm(run.root, progress=False)  # edited by hand: refused, not used
    cfg = run.load_config()
    cfg.score.fpr = 0.2  # recalibrated at another operating point: another calibration
    run.save_config(cfg)
    second = calibrate_ldm(run.root, progress=False)
    assert second.id != first.id
    with pytest.raises(StaleArtifactError, match=f"holds scores made under calibration {first.id}, but the run is "
                                                 f"now calibrated as {second.id}"):
        score_ldm(run.root, progress=False)
    assert len(read_records(path)) == 1  # untouched
    rows = _score(run, force=True)
    assert [r["calibration_id"] for r in rows] == [first.id, second.id, second.id]


def test_a_calibration_made_before_its_networks_were_retrained_is_stale(run):
    calibrate_ldm(run.root, progress=False)
    cfg = run.load_config()
    torch.manual_seed(7)  # the first stage is retrained
    save_model(run.stage_dir("first_stage"), build_first_stage(cfg.first_stage, 2),
               {"stage": "first_stage", "spatial_dims": 2, "config": cfg.model_dump(mode="json")})
    with pytest.raises(StaleArtifactError, match="ldm/model.safetensors: was trained on a first stage that has since changed"):
        score_ldm(run.root, progress=False)
    # the LDM is retrained on it (its record names the new first stage): now the calibration is the stale one
    record = json.loads(run.model_config_path("ldm").read_text())
    record["inputs"] = {"first_stage": json.loads(run.model_config_path("first_stage").read_text())["weights_sha256"]}
    run.model_config_path("ldm").write_text(json.dumps(record))
    with pytest.raises(StaleArtifactError, match="ood.json: made with a first stage that has since been retrained: "
                                                 "re-run `ldm-ood calibrate --method ldm"):
        score_ldm(run.root, progress=False)
    rows = _score(run, force=True)
    assert len(rows) == 3 and all(math.isfinite(float(r["pred_score"])) for r in rows)


def _hold(root, ready, release):
    with run_lock(root, "score ldm"):
        ready.set()
        release.wait(30)


def test_a_second_writer_on_a_run_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(RunLockedError, match=rf"pid {holder.pid} \(score ldm"):
        with run_lock(tmp_path, "calibrate ldm"):
            pass
    holder.kill()  # kill -9: the kernel releases the lock
    holder.join()
    with run_lock(tmp_path, "calibrate ldm"):
        with run_lock(tmp_path, "nested"):  # re-entrant in one process
            pass


@pytest.mark.parametrize("name", ["ood.json", "ood_voxel_stats.safetensors"])
def test_a_torn_calibration_file_is_named_with_the_command_that_remakes_it(run, name):
    calibrate_ldm(run.root, progress=False)
    path = run.calibration_dir / name
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(IntegrityError, match=f"{name}: sha256 .* differs"):
        score_ldm(run.root, progress=False)
    run.calibration_record_path("ldm").unlink()  # an older calibration without a record: parsed, still named
    with pytest.raises(IntegrityError, match=f"{name}: not a readable calibration file .*ldm-ood calibrate --method ldm"):
        score_ldm(run.root, progress=False)
