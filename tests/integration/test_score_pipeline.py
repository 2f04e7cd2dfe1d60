"""File-level paper 000 scoring: calibrate, score sets (CSV + native-grid maps), failures, resume, folder mode.

Tiny nets on a 5-step PLMS grid (800, 600, 400, 200, 0) with 2 score t-values and 2 map t-values:
the chains start at 200, 400 and 600. One calibration and one scoring pass are shared by the tests
(module-scoped fixtures).
"""

import csv

import nibabel as nib
import numpy as np
import pytest
from tiny_runs import tiny_3d_ldm

from ldm_ood.config import load_config
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.errors import BatchError
from ldm_ood.methods.ldm.calibration import OODCalibration
from ldm_ood.methods.ldm.pipeline import BASE_FIELDS, calibrate_ldm, score_ldm
from ldm_ood.methods.records import read_records

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets
AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, 2.5, 0, -20.0], [0, 0, 1.5, 3.0], [0, 0, 0, 1]])


def _scan(path, seed, shape=(18, 14, 20), noise=0.0):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    head = (np.sqrt((g**2).sum(0)) < 0.8 + 0.05 * rng.standard_normal()) * 60.0
    data = (head + rng.normal(0, 5 + noise, size=shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    score = {"bf16": False, "num_inference_steps": 5, "num_t_values": 2, "map_t_values": [250, 500]}
    cfg = load_config(preset="tiny", overrides={"score": score})
    cases = [Case(f"v{i}", _scan(root / f"v{i}.nii.gz", i), split="val", set="id") for i in range(3)]
    cases += [Case(f"t{i}", _scan(root / f"t{i}.nii.gz", 10 + i), split="test", set="id") for i in range(2)]
    bad = root / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    cases.append(Case("bad", bad, split="test", set="id"))
    cases += [Case(f"n{i}", _scan(root / f"n{i}.nii.gz", 20 + i, noise=60.0), split="test", set="noise") for i in range(2)]
    manifest = write_manifest(root / "manifest.csv", cases)
    run, models = tiny_3d_ldm(cfg, root / "run")
    return run, cfg, manifest, models, root


@pytest.fixture(scope="module")
def scored(setup):
    """Calibrate once, then score every test set once (the bad file raises at the end)."""
    run, cfg, manifest, models, root = setup
    res = calibrate_ldm(run.root, manifest, models=models, progress=False)
    with pytest.raises(BatchError, match="bad") as err:
        score_ldm(run.root, manifest, models=models, progress=False)
    return res, err.value


def test_calibrate_then_score_writes_rows_maps_and_reports_failures(setup, scored):
    run, cfg, manifest, models, root = setup
    res, err = scored
    assert res.n == 3 and run.ood_calibration_path.exists() and run.ood_voxel_stats_path.exists()
    cal = OODCalibration.load(run.ood_calibration_path)
    # num_t_values 2 -> t = 250, 750; maps 250, 500; snapped down onto the grid 800, 600, 400, 200, 0
    assert cal.t_values == [200, 600] and cal.map_t_values == [200, 400]
    assert cal.tails == "two_sided" == cfg.score.tails  # the default
    assert len(cal.val_scores) == 3 and min(cal.val_scores) >= 0.0  # distances from the validation mean
    assert "bad" in str(err) and "t0" not in str(err)

    rows = read_records(run.scores_path("ldm", "id"))
    assert [r["case_id"] for r in rows] == ["t0", "t1"]  # the bad file did not stop the others
    with open(run.scores_path("ldm", "id")) as fh:
        header = next(csv.reader(fh))
    assert header[: len(BASE_FIELDS)] == list(BASE_FIELDS)
    assert header[len(BASE_FIELDS):] == [f"mse@{t}" for t in cal.t_values] + [f"lpips@{t}" for t in cal.t_values]
    noise_rows = read_records(run.scores_path("ldm", "noise"))
    assert [r["case_id"] for r in noise_rows] == ["n0", "n1"]
    for r in rows + noise_rows:
        z_mse = [(float(r[f"mse@{t}"]) - m) / s for t, m, s in zip(cal.t_values, cal.mean["mse"], cal.std["mse"])]
        z_lp = [(float(r[f"lpips@{t}"]) - m) / s for t, m, s in zip(cal.t_values, cal.mean["lpips"], cal.std["lpips"])]
        assert float(r["signed_score"]) == pytest.approx(np.mean(z_mse + z_lp))  # the paper's one-sided score
        assert float(r["pred_score"]) == pytest.approx((abs(np.mean(z_mse)) + abs(np.mean(z_lp))) / 2)
        assert float(r["score_mse"]) == pytest.approx(abs(np.mean(z_mse)))
        assert int(r["flag"]) == int(float(r["pred_score"]) > cal.threshold)
        img = nib.load(r["map_path"])
        assert img.shape == (18, 14, 20)
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-5)


def test_resume_skips_done_scans_and_recomputes_identically(setup, scored):
    run, cfg, manifest, models, root = setup
    path = run.scores_path("ldm", "noise")
    before = read_records(path)
    assert len(before) == 2
    # simulate an interruption after one scan: drop the last row
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    res = score_ldm(run.root, manifest, sets=["noise"], models=models, progress=False)
    assert (res.scored, res.skipped) == (1, 1)
    assert res.unet_calls == 4  # one scan: one batched call per grid step 600, 400, 200, 0
    after = read_records(path)
    assert [r["case_id"] for r in after] == [r["case_id"] for r in before]  # no duplicates
    assert float(after[-1]["pred_score"]) == pytest.approx(float(before[-1]["pred_score"]), rel=1e-5)
    res = score_ldm(run.root, manifest, sets=["noise"], models=models, progress=False)
    assert (res.scored, res.skipped, res.unet_calls) == (0, 2, 0)


def test_folder_in_folder_out(setup, scored):
    run, cfg, manifest, models, root = setup
    inp = root / "mood_in"
    inp.mkdir()
    for i in range(2):
        _scan(inp / f"case{i}.nii.gz", 30 + i)
    out = root / "mood_out"
    res = score_ldm(run.root, input_dir=inp, output_dir=out, models=models, progress=False)
    assert res.scored == 2
    for i in range(2):
        txt = (out / f"case{i}.txt").read_text()
        assert txt == f"{float(txt)!r}\n" and np.isfinite(float(txt))  # MOOD layout: the score alone
        img = nib.load(str(out / f"case{i}.nii.gz"))
        assert img.shape == (18, 14, 20)
    assert score_ldm(run.root, input_dir=inp, output_dir=out, models=models, progress=False).skipped == 2
