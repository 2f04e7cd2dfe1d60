"""DICOM series in folder mode (``score --input DIR --output OUT``): each series found in the input tree is a
case, scored like its NIfTI conversion; a bad series is named (UID and folder) while the others are scored.

A tiny 3D run with random networks (``tiny_runs.tiny_3d_ldm``: ``tiny`` preset, 5-step PLMS grid),
resampled to 6 mm, calibrated on the NIfTI conversions of three series built from pydicom's
``CT_small.dcm``, so that the series scored here lie inside the calibration's input domain and get a
finite model score (not the input check's +inf, which would make any comparison vacuous).
"""

from __future__ import annotations

import math
import shutil

import nibabel as nib
import numpy as np
import pytest
from dicom_series import stored, template, write_series
from tiny_runs import tiny_3d_ldm

from ldm_ood.config import load_config
from ldm_ood.data.dicom import read_series, series_case_id
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.errors import BatchError
from ldm_ood.methods.context import read_folder_score
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets

#: a tilted plane: rows along (cos 30°, sin 30°, 0), columns along -z (LPS)
OBLIQUE = (math.cos(math.radians(30)), 0.5, 0.0, 0.0, 0.0, -1.0)

#: |DICOM score − NIfTI score| allowed. Both go through identical code from the same float32 voxels and the
#: same case id (which seeds the PLMS noise); the only difference is that the NIfTI header keeps the affine
#: in float32 (srow) while the series' is float64: the resampling grids differ by ~1e-5 mm, the preprocessed
#: inputs by ~2.5e-6 (identical once the affine is rounded: tests/unit/data/test_dicom.py), the scores by
#: 7e-6 (axial) and 1.4e-5 (oblique) as measured. 1e-4 leaves 7x headroom; a wrong geometry, slice order or
#: HU scale moves the score by far more (a different noise seed alone moved it by 0.58).
SCORE_TOLERANCE = 1e-4


def _pixels(seed: int):
    """Slice k: CT_small's stored values plus seeded noise (σ 20 HU), shifted by 3 k."""
    base = stored(template()).astype(np.float64)
    rng = np.random.default_rng(seed)
    return lambda k: np.round(base + rng.normal(0, 20, base.shape) + 3 * k)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    score = {"num_inference_steps": 5, "num_t_values": 2, "map_t_values": [250, 500]}
    cfg = load_config(preset="tiny", overrides={"data": {"spacing": [6.0, 6.0, 6.0]}, "score": score})
    val = []
    for i in range(3):
        write_series(root / "val_dicom" / f"v{i}", 12, step=6.0, pixels=_pixels(i), seed=i)
        img = read_series(root / "val_dicom" / f"v{i}")
        val.append(Case(f"v{i}", write_image(root / "val" / f"v{i}.nii.gz", img.array, img.affine), split="val"))
    manifest = write_manifest(root / "manifest.csv", val)
    run, models = tiny_3d_ldm(cfg, root / "run")
    calibrate_ldm(run.root, manifest, models=models, progress=False)

    tree = root / "tree"
    good = {
        "axial": write_series(tree / "patient1" / "study" / "axial", 12, step=6.0, pixels=_pixels(10), seed=10)[0],
        "oblique": write_series(tree / "patient2" / "oblique", 12, step=6.0, orientation=OBLIQUE,
                                pixels=_pixels(11), seed=11)[0],
    }
    bad_uid, _ = write_series(tree / "patient3" / "gappy", 12, step=6.0, pixels=_pixels(12), skip=(5,), seed=12)
    (tree / "patient3" / "scout.dcm").write_text("exported report, not DICOM")
    with pytest.raises(BatchError) as err:
        score_ldm(run.root, input_dir=tree, output_dir=root / "out_dicom", models=models, progress=False)

    nifti_in = root / "nifti_in"  # named by the series' case id: a scan's PLMS noise is seeded by its case id
    for name, uid in good.items():
        img = read_series(tree / ("patient1/study/axial" if name == "axial" else "patient2/oblique"))
        write_image(nifti_in / f"{uid}.nii.gz", img.array, img.affine)
    res = score_ldm(run.root, input_dir=nifti_in, output_dir=root / "out_nifti", models=models, progress=False)
    assert res.scored == 2
    return root, tree, good, bad_uid, err.value, models


def test_a_tree_of_series_scores_the_good_ones_and_names_the_bad_ones(scored):
    root, tree, good, bad_uid, err, models = scored
    failed = dict(err.failures.items)
    scout_id = series_case_id("patient3/scout.dcm")  # its path in the tree, made a plain name
    assert set(failed) == {bad_uid, scout_id} and scout_id.startswith("patient3_scout.dcm-")
    message = failed[bad_uid]
    assert message.startswith(f"{tree / 'patient3' / 'gappy'}: DICOM series {bad_uid}: irregular slice spacing")
    assert "1 slice(s) missing" in message
    assert failed[scout_id].startswith(f"{tree / 'patient3' / 'scout.dcm'}: not a DICOM file")
    out = root / "out_dicom"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{uid}{ext}" for uid in good.values()
                                                           for ext in (".nii.gz", ".txt"))
    for name, uid in good.items():
        assert math.isfinite(read_folder_score(out / f"{uid}.txt"))  # scored by the model, not the input check
        series = read_series(tree / ("patient1/study/axial" if name == "axial" else "patient2/oblique"))
        amap = nib.load(out / f"{uid}.nii.gz")
        assert amap.shape == series.array.shape == (128, 128, 12)
        np.testing.assert_allclose(amap.affine, series.affine, atol=1e-5)  # the series' own grid and affine


def test_a_dicom_series_scores_as_its_nifti_conversion(scored):
    root, tree, good, bad_uid, err, models = scored
    for name, uid in good.items():
        from_dicom = read_folder_score(root / "out_dicom" / f"{uid}.txt")
        from_nifti = read_folder_score(root / "out_nifti" / f"{uid}.txt")
        print(f"{name}: DICOM {from_dicom!r} NIfTI {from_nifti!r} |diff| {abs(from_dicom - from_nifti):.3g}")
        assert from_dicom == pytest.approx(from_nifti, rel=0, abs=SCORE_TOLERANCE)
        map_dicom = nib.load(root / "out_dicom" / f"{uid}.nii.gz").get_fdata()
        map_nifti = nib.load(root / "out_nifti" / f"{uid}.nii.gz").get_fdata()
        print(f"{name}: max |map diff| {np.abs(map_dicom - map_nifti).max():.3g} of max |map| {np.abs(map_nifti).max():.3g}")
        np.testing.assert_allclose(map_dicom, map_nifti, rtol=0, atol=1e-3)


def test_a_second_run_skips_the_scored_series_and_retries_the_failed_ones(scored, tmp_path):
    root, tree, good, bad_uid, err, models = scored
    out = tmp_path / "out"
    shutil.copytree(root / "out_dicom", out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(BatchError) as again:
        score_ldm(root / "run", input_dir=tree, output_dir=out, models=models, progress=False)
    assert [cid for cid, _ in again.value.failures.items] == [cid for cid, _ in err.failures.items]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # the scored series were skipped
