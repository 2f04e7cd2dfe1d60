"""Paper 001 segmentation end to end in 2D on a tiny random run: calibrate, segment, files, resume."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ldm_ood.artifacts.checkpoint import save_model
from ldm_ood.config import load_config
from ldm_ood.data.io import read_image, write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.errors import BatchError
from ldm_ood.methods.records import read_records
from ldm_ood.methods.segment.pipeline import FIELDS, calibrate_segment, segment
from ldm_ood.models.diffusion import build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


def _slice(rng, shape, lesion=False):
    """A disk 'head' in HU-like units (CT window [-15, 100]) with an optional bright square."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    img = np.where(r < min(shape) * 0.4, 40.0, -1000.0) + rng.normal(0, 3, shape)
    mask = np.zeros(shape, np.float32)
    if lesion:
        img[6:10, 7:11] = 95.0
        mask[6:10, 7:11] = 1.0
    return img.astype(np.float32), mask


@pytest.fixture(scope="module")
def run_and_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(0)
    cfg = load_config(preset="tiny-2d", overrides={"segment": {
        "start_t": 8, "ddim_steps": 3, "kl_t_range": (400, 600), "kl_num_t": 3, "score_num_t": 4, "score_subsample_num_t": 2,
        "batch_size": 2,
        "bf16": False}})
    cases = []
    for i in range(3):  # healthy validation, NIfTI slices of a native grid other than the model grid
        img, _ = _slice(rng, (18, 20))
        p = write_image(root / "data" / f"val{i}.nii.gz", img, np.diag([0.9, 0.9, 1.0, 1.0]))
        cases.append(Case(f"val{i}", p, set="id", split="val"))
    for i in range(2):
        img, _ = _slice(rng, (18, 20))
        cases.append(Case(f"h{i}", write_image(root / "data" / f"h{i}.nii.gz", img), set="id", split="test"))
    for i in range(3):
        img, mask = _slice(rng, (18, 20), lesion=True)
        cases.append(Case(f"s{i}", write_image(root / "data" / f"s{i}.nii.gz", img),
                          mask=write_image(root / "data" / f"s{i}_mask.nii.gz", mask), set="sprites", split="test"))
    manifest = write_manifest(root / "data" / "manifest_2d.csv", cases)
    cfg.data.manifest = manifest

    run = RunDir(root / "run")
    run.save_config(cfg)
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, 2)
    unet = build_unet(cfg.ldm, 2, cfg.first_stage.embedding_dim)
    dump = cfg.model_dump(mode="json")
    save_model(run.stage_dir("first_stage"), fs, {"stage": "first_stage", "spatial_dims": 2, "config": dump})
    save_model(run.stage_dir("ldm"), unet, {
        "stage": "ldm", "spatial_dims": 2, "scale_factor": 0.8, "latent_multiple": latent_multiple(cfg.ldm),
        "latent_spatial_shape": [4, 4], "latent_channels": cfg.first_stage.embedding_dim, "config": dump})
    return run, manifest, cfg


def test_calibrate_then_segment_writes_maps_on_the_input_grid_and_resumes(run_and_manifest):
    run, manifest, cfg = run_and_manifest
    summary = calibrate_segment(run.root, variants=["c", "d"], device="cpu")
    assert summary.n == 3 and set(summary.details["residual_thresholds"]) == {"c", "d"}
    calib = json.loads(run.segment_calibration_path.read_text())
    assert set(calib["val_scores"]) == {"val0", "val1", "val2"} and calib["variants"]["c"]["fpr"] == 0.05
    thr = load_file(str(run.segment_thresholds_path))
    assert set(thr) == {"t400-600_n3"} and thr["t400-600_n3"].shape == (4, 4)  # c and d share kl_num_t=3 here

    result = segment(run.root, variant="c", device="cpu")
    assert result.segmented == 5 and result.failed == 0
    rows = read_records(run.segment_scores_path("c", "sprites"))
    assert [r["case_id"] for r in rows] == ["s0", "s1", "s2"] and list(rows[0]) == list(FIELDS)
    for r in rows:
        assert float(r["pred_score"]) > 0 and float(r["seconds"]) > 0
        healed, amap = read_image(r["healed_path"], allow_constant=True), read_image(r["map_path"], allow_constant=True)
        mask = read_image(r["mask_path"], allow_constant=True)
        assert healed.array.shape == amap.array.shape == mask.array.shape == (18, 20)  # the input's grid
        assert set(np.unique(mask.array)) <= {0.0, 1.0}
        np.testing.assert_array_equal(mask.array, amap.array >= calib["variants"]["c"]["residual_threshold"])
    assert len(read_records(run.segment_scores_path("c", "id"))) == 2

    # resume: nothing left to do; a removed row is redone and only it
    again = segment(run.root, variant="c", device="cpu")
    assert again.segmented == 0 and again.skipped == 5
    path = run.segment_scores_path("c", "sprites")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    redo = segment(run.root, variant="c", sets=["sprites"], device="cpu")
    assert redo.segmented == 1 and [r["case_id"] for r in read_records(path)] == ["s0", "s1", "s2"]
    c_rows = read_records(path)
    for r in c_rows:  # the whole-chain score (every t) and its subsample of the same draws, timed
        assert float(r["pred_score_subsample"]) > 0 and 0 < float(r["score_seconds"]) <= float(r["seconds"])

    # variant d reads the image-level score back from c's rows: same values, its time not counted again
    segment(run.root, variant="d", device="cpu")
    d_rows = read_records(run.segment_scores_path("d", "sprites"))
    assert [(r["pred_score"], r["pred_score_subsample"]) for r in d_rows] == \
        [(r["pred_score"], r["pred_score_subsample"]) for r in c_rows]
    assert all(r["score_seconds"] == "" for r in d_rows)
    # variant a was not calibrated: segmenting with it calibrates it (a new calibration id), and the score,
    # which depends on the networks and the score settings only, is still read back
    before = read_records(path)[0]["calibration_id"]
    segment(run.root, variant="a", sets=["sprites"], device="cpu")
    a_rows = read_records(run.segment_scores_path("a", "sprites"))
    assert a_rows[0]["calibration_id"] != before and a_rows[0]["score_key"] == c_rows[0]["score_key"] != ""
    assert [r["pred_score"] for r in a_rows] == [r["pred_score"] for r in c_rows]
    assert all(r["score_seconds"] == "" for r in a_rows)
    # the id is the variant's own: calibrating a left c's id as it was, so c's file resumes without --force
    again = segment(run.root, variant="c", sets=["sprites"], device="cpu")
    assert again.skipped == 3 and again.segmented == 0 and read_records(path)[0]["calibration_id"] == before


def test_segment_variant_a_calibrates_itself_and_reports_bad_files(run_and_manifest, tmp_path):
    run, _, _ = run_and_manifest
    folder = tmp_path / "in"
    rng = np.random.default_rng(1)
    img, _ = _slice(rng, (16, 16), lesion=True)
    write_image(folder / "good.png", np.clip((img + 15) / 115, 0, 1))
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    with pytest.raises(BatchError, match="broken"):
        segment(run.root, variant="a", input_dir=folder, output_dir=out, device="cpu")
    assert "a" in json.loads(run.segment_calibration_path.read_text())["variants"]
    assert float((out / "good.txt").read_text()) > 0  # MOOD layout: the score alone, as LDM/LTM
    assert not (out / "broken.txt").exists()
    assert read_image(out / "good_map.png", allow_constant=True).array.shape == (16, 16)  # PNG in, PNG out
    assert read_image(out / "good_healed.png", allow_constant=True).array.shape == (16, 16)
    (folder / "broken.nii.gz").unlink()
    again = segment(run.root, variant="a", input_dir=folder, output_dir=out, device="cpu", progress=False)
    assert again.segmented == 0 and again.skipped == 1  # a case with a .txt is done
