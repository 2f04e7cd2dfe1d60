"""Far-OOD classes drawn from real scans shipped in installed packages: deterministic, finite, on the grid,
varied in pose; and the benchmark's set sizes per preset."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_ood.config import load_config
from ldm_ood.synthetic.anatomy import grid_affine
from ldm_ood.synthetic.far_ood import FAR_OOD_CLASSES, REAL_FAR_OOD_CLASSES, _ct_slice, ct_body

SHAPE = (16, 16, 16)
AFFINE = grid_affine(SHAPE, 12.0)
NEW_REAL = ("far_mr_brain_crop", "far_mr_phantom", "far_ct_body")


@pytest.mark.parametrize("name", NEW_REAL)
def test_real_class_is_deterministic_finite_and_on_the_grid(name):
    fn = FAR_OOD_CLASSES[name]
    a, is_ct = fn(np.random.default_rng([7, 1]), SHAPE, AFFINE)
    b, _ = fn(np.random.default_rng([7, 1]), SHAPE, AFFINE)
    c, _ = fn(np.random.default_rng([7, 2]), SHAPE, AFFINE)
    assert a.shape == SHAPE and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # same draw, same case
    assert not np.array_equal(a, c)  # another draw: another pose
    if is_ct:  # Hounsfield units: air outside, bone inside
        assert a.min() >= -1024.0 and a.max() > 300.0
    else:  # non-CT classes are min-max rescaled (paper 000 §3.1)
        assert (a.min(), a.max()) == (0.0, 1.0)


def test_ct_body_is_the_dicom_slice_in_hu_extruded_along_is():
    import os

    import pydicom

    hu, m = _ct_slice()
    ds = pydicom.dcmread(os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "CT_small.dcm"))
    np.testing.assert_array_equal(hu, ds.pixel_array.astype(np.float32) - 1024.0)  # RescaleSlope 1, intercept -1024
    # the in-plane affine centres the slice: the middle pixel sits at the world origin
    np.testing.assert_allclose(m @ np.array([63.5, 63.5, 1.0]), [0.0, 0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(np.abs(m[:2, :2]).sum(0), 0.661468 * 4)  # true pixel of the 512² original
    vol, is_ct = ct_body(np.random.default_rng(3), SHAPE, AFFINE)
    assert is_ct
    for k in range(1, SHAPE[2]):  # a pose rotates about I–S only: every axial plane is the same
        np.testing.assert_allclose(vol[:, :, k], vol[:, :, 0], atol=1e-4)
    assert -1000.0 - 1e-3 <= vol.min() and vol.max() <= hu.max() + 1e-3  # interpolated (air outside), never beyond


def test_at_least_eight_far_classes_and_three_real():
    assert len(FAR_OOD_CLASSES) >= 8
    assert set(REAL_FAR_OOD_CLASSES) <= set(FAR_OOD_CLASSES) and len(REAL_FAR_OOD_CLASSES) >= 3


@pytest.mark.parametrize(("preset", "n_test", "n_far"), [("cpu", 47, 22), ("cpu-quick", 8, 6), ("demo", 8, 4)])
def test_set_sizes_follow_the_preset(preset, n_test, n_far):
    cfg = load_config(preset=preset).synth
    assert (cfg.n_test, cfg.n_far_per_class) == (n_test, n_far)
