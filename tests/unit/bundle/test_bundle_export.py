"""``export_bundle``: what a bundle holds (the calibrated methods' networks, the config, the calibration)
and what its ``model.json`` says about it, checked against the run's own files."""

import json
import os
import shutil

import pytest
import yaml

from ldm_ood.artifacts.integrity import file_sha256
from ldm_ood.bundle import FORMAT_VERSION, export_bundle, open_bundle
from ldm_ood.bundle.export import exportable_methods
from ldm_ood.bundle.format import model_id_of
from ldm_ood.errors import BundleError, IntegrityError, OutputError
from ldm_ood.evaluation.summary import DetectionResult, SegmentationResult, Summary
from ldm_ood.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


def test_bundle_holds_the_calibrated_methods_networks_and_calibration_only(exported):
    run, bundle = exported.run, open_bundle(exported.bundle)
    meta = bundle.meta
    # ldm and segment (variant c) are calibrated; the LTM, f-AnoGAN, AE, VAE, ensemble are trained, not calibrated
    assert meta["methods"] == ["ldm", "segment"] and bundle.methods == ("ldm", "segment")
    assert list(meta["networks"]) == ["first_stage", "ldm"]
    assert exportable_methods(run)[1]["ltm"] == "not calibrated"
    expected = sorted([
        "config.yaml", "first_stage/DONE", "first_stage/config.json", "first_stage/model.safetensors",
        "ldm/DONE", "ldm/config.json", "ldm/model.safetensors",
        *(f"calibration/{n}" for n in ("ood.json", "ood_voxel_stats.safetensors", "ldm_input_domain.json",
                                       "ldm_record.json", "segment.json", "segment_thresholds.safetensors",
                                       "segment_input_domain.json", "segment_record.json")),
    ])
    assert _files(bundle.root) == sorted([*expected, "model.json"])
    # every file but model.json is listed with its sha256; networks and calibration are byte copies of the run's
    assert sorted(meta["files"]) == expected
    for rel, sha in meta["files"].items():
        assert file_sha256(bundle.root / rel) == sha
        if rel != "config.yaml":
            assert (bundle.root / rel).read_bytes() == (run.root / rel).read_bytes()
    assert bundle.model_id == meta["model_id"] == model_id_of(meta["files"])
    # the configuration is the run's, without the training-site manifest path
    config = yaml.safe_load((bundle.root / "config.yaml").read_text())
    own = yaml.safe_load(run.config_path.read_text())
    assert own["data"]["manifest"] is not None and config["data"]["manifest"] is None
    own["data"]["manifest"] = None
    assert config == own


def test_model_json_describes_versions_training_data_and_operating_points(exported):
    run, meta = exported.run, open_bundle(exported.bundle).meta
    assert meta["format"] == "ldm-ood-model-bundle" and meta["format_version"] == FORMAT_VERSION
    assert set(meta["versions"]) >= {"ldm_ood", "torch", "monai"}
    cfg = run.load_config()
    assert meta["training_data"] == {
        "spatial_dims": 2, "grid": list(cfg.data.grid), "spacing": None, "orientation": "RAS", "modality": "ct",
        "intensity_window": list(cfg.data.ct_window),
        "cases_per_split": {"val": 3, "test": 4},  # tiny_runs: 3 val slices, 3 test + the unreadable one
    }
    ood = json.loads(run.ood_calibration_path.read_text())
    record = json.loads(run.calibration_record_path("ldm").read_text())
    assert meta["calibrations"]["ldm"] == {"task": "detection", "id": record["id"], "n_validation": 3,
                                           "fpr": ood["fpr"], "threshold": ood["threshold"]}
    seg = json.loads(run.segment_calibration_path.read_text())["variants"]["c"]
    assert meta["calibrations"]["segment"]["variants"] == {
        "c": {"fpr": seg["fpr"], "residual_threshold": seg["residual_threshold"]}}
    assert meta["benchmark"] is None  # the run has no summary.json


def test_same_run_exports_to_the_same_model_id_and_benchmark_aucs_come_from_summary(exported, tmp_path):
    run = exported.run
    summary = Summary(runs={"tiny": str(run.root)}, detection=[
        DetectionResult("tiny", "ldm", "far_noise", "far", 3, 3, 0.875, 0.5, 1.0, 0.9, 0.2)],
        segmentation=[SegmentationResult("tiny", "c", "sprites", 3, 3, "pooled", 0.41, 0.3, 0.37, 0.2, 0.35, 0.6, 0.7)])
    summary.save(run.summary_path)
    try:
        again = open_bundle(export_bundle(run.root, tmp_path / "again"))
    finally:
        run.summary_path.unlink()
    assert again.model_id == open_bundle(exported.bundle).model_id  # the files, not the time, make the id
    assert again.meta["benchmark"] == {"detection_auroc": {"ldm": {"far_noise": 0.875}},
                                       "segmentation": {"c": {"sprites": {"image_auroc": 0.6, "pixel_auprc": 0.35,
                                                                          "best_dice": 0.41}}}}


def test_export_refuses_a_used_folder_a_bundle_and_a_run_without_calibration(exported, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="not an empty folder"):
        export_bundle(exported.run.root, used)
    with pytest.raises(BundleError, match="already a model bundle"):
        export_bundle(exported.bundle, tmp_path / "copy")
    bare = RunDir(tmp_path / "bare")
    bare.save_config(exported.run.load_config())
    with pytest.raises(BundleError, match="no method to export"):
        export_bundle(bare.root, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists() and not list(tmp_path.glob(".nothing*"))  # no half bundle left


def test_a_changed_calibration_is_left_out_and_changed_weights_refuse_the_export(exported, tmp_path, capsys):
    run = RunDir(shutil.copytree(exported.run.root, tmp_path / "run"))
    ood = json.loads(run.ood_calibration_path.read_text())
    ood["threshold"] += 1.0
    run.ood_calibration_path.write_text(json.dumps(ood))
    bundle = open_bundle(export_bundle(run.root, tmp_path / "segment_only"))
    assert bundle.methods == ("segment",) and "calibration/ood.json" not in bundle.meta["files"]
    warning = "".join(capsys.readouterr().err.split())
    assert "methodldmisleftoutofthebundle" in warning and f"{run.ood_calibration_path}:sha256" in warning

    weights = run.model_path("first_stage")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="differs from the one recorded") as err:
        export_bundle(run.root, tmp_path / "broken")
    assert err.value.path == weights
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob(".broken*"))
