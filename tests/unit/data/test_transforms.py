"""Preprocessing (paper 000 §3.1) against hand-computed values, and the inverse to the native grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_ood.config import DataConfig
from ldm_ood.data.dataset import CaseDataset
from ldm_ood.data.io import Image, read_image, write_image
from ldm_ood.data.manifest import Case
from ldm_ood.data.transforms import Preprocessor, from_unit_range_ct, to_unit_range_ct
from ldm_ood.errors import InputError

#: LPS-oriented, anisotropic: array axis 0 runs R->L (2 mm), 1 runs A->P (1.5 mm), 2 runs I->S (3 mm)
LPS = np.array([[-2.0, 0, 0, 10], [0, -1.5, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])


def test_ct_window_clamp_and_rescale(tmp_path):
    hu = np.array([[[-1000.0, -15.0], [0.0, 42.5]], [[100.0, 215.0], [-16.0, 50.0]]], dtype=np.float32)
    write_image(tmp_path / "ct.nii.gz", hu, np.eye(4))
    x, _ = Preprocessor(DataConfig(grid=(2, 2, 2))).load(tmp_path / "ct.nii.gz")
    expected = [[[0.0, 0.0], [15 / 115, 57.5 / 115]], [[1.0, 1.0], [0.0, 65 / 115]]]
    assert x.shape == (1, 2, 2, 2) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)


def test_other_modality_min_max(tmp_path):
    a = np.array([[[2.0, 4.0], [6.0, 10.0]]] * 2, dtype=np.float32)
    write_image(tmp_path / "mr.nii.gz", a, np.eye(4))
    x, _ = Preprocessor(DataConfig(grid=(2, 2, 2), modality="other")).load(tmp_path / "mr.nii.gz")
    np.testing.assert_allclose(x[0, 0].numpy(), [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_centre_pad_and_crop_placement(tmp_path):
    # 4 x 6 x 3 RAS volume -> grid 6 x 4 x 3: axis 0 padded by one voxel each side, axis 1 cropped 1 each side
    a = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3) + 1
    write_image(tmp_path / "a.nii.gz", a, np.eye(4))
    x, meta = Preprocessor(DataConfig(grid=(6, 4, 3), modality="other")).load(tmp_path / "a.nii.gz")
    scaled = (a - a.min()) / (a.max() - a.min())
    expected = np.zeros((6, 4, 3), np.float32)
    expected[1:5] = scaled[:, 1:5]
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    # the grid affine shifts by the crop: voxel (1, 0, 0) of the grid is input voxel (0, 1, 0)
    np.testing.assert_allclose(meta.grid_affine @ [1, 0, 0, 1], [0, 1, 0, 1])


def test_invert_round_trip_lps_anisotropic(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-50, 150, (10, 12, 7)).astype(np.float32)
    write_image(tmp_path / "lps.nii.gz", hu, LPS)
    pre = Preprocessor(DataConfig(grid=(8, 16, 8)))
    x, meta = pre.load(tmp_path / "lps.nii.gz")
    # reoriented to RAS: axes 0 and 1 flipped, spacing kept
    np.testing.assert_allclose(np.diag(meta.grid_affine)[:3], [2.0, 1.5, 3.0])
    back = pre.invert(x[0], meta)
    assert back.array.shape == hu.shape
    np.testing.assert_array_equal(back.affine, LPS)
    # axis 0 (10 -> 8) is cropped by one voxel at each end, axis 1 and 2 are padded: all else kept
    np.testing.assert_allclose(back.array[1:9], to_unit_range_ct(hu)[1:9], atol=1e-6)
    assert np.all(back.array[[0, 9]] == 0)
    # and the written map lands on the input's grid
    write_image(tmp_path / "map.nii.gz", back.array, back.affine)
    np.testing.assert_array_equal(read_image(tmp_path / "map.nii.gz").affine, LPS)


def test_invert_with_resampling_returns_native_grid(tmp_path):
    rng = np.random.default_rng(1)
    write_image(tmp_path / "a.nii.gz", rng.uniform(-15, 100, (10, 12, 7)).astype(np.float32), LPS)
    pre = Preprocessor(DataConfig(grid=(16, 16, 16), spacing=(1.5, 1.5, 1.5)))
    x, meta = pre.load(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(np.abs(np.diag(meta.grid_affine)[:3]), 1.5)
    ones = pre.invert(torch.ones(16, 16, 16), meta)
    assert ones.array.shape == (10, 12, 7)
    np.testing.assert_array_equal(ones.affine, LPS)
    # a constant map stays constant wherever the grid covered the input (the middle does)
    np.testing.assert_allclose(ones.array[3:7, 4:8, 2:5], 1.0, atol=1e-5)


def test_2d_png_same_path(tmp_path):
    img = np.linspace(0, 1, 5 * 7, dtype=np.float32).reshape(5, 7)
    write_image(tmp_path / "s.png", img)
    pre = Preprocessor(DataConfig(spatial_dims=2, grid=(8, 8), modality="other"))
    x, meta = pre.load(tmp_path / "s.png")
    assert x.shape == (1, 8, 8)
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) == 0.0
    back = pre.invert(x, meta)
    assert back.array.shape == (5, 7)
    np.testing.assert_allclose(back.array[:, :], ((img * 255 + 0.5).astype(np.uint8) / 255.0), atol=1e-6)


def test_bad_inputs_name_the_file(tmp_path):
    pre = Preprocessor(DataConfig(grid=(4, 4, 4)))
    bad = tmp_path / "nan.nii.gz"
    a = np.ones((4, 4, 4), np.float32)
    a[0, 0, 0] = np.nan
    write_image(bad, a, np.eye(4))
    with pytest.raises(InputError, match="nan.nii.gz.*NaN"):
        pre.load(bad)
    write_image(tmp_path / "flat.nii.gz", np.zeros((4, 4), np.float32) + np.eye(4, dtype=np.float32), np.eye(4))
    with pytest.raises(InputError, match="flat.nii.gz.*dimensionality"):
        pre.load(tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="grid"):
        pre.invert(np.zeros((3, 4, 4)), pre.apply(Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)))[1])


def test_hu_encoding_round_trip():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(to_unit_range_ct(from_unit_range_ct(x)), x, atol=1e-6)
    np.testing.assert_allclose(from_unit_range_ct(np.array([0.0, 1.0])), [-15.0, 100.0])


def test_case_dataset_items_and_cache(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"c{i}.nii.gz", np.full((4, 4, 4), 10.0 * i, np.float32) + np.eye(4)[None], np.eye(4))
    cases = [Case(f"c{i}", tmp_path / f"c{i}.nii.gz") for i in range(2)]
    ds = CaseDataset(cases, Preprocessor(DataConfig(grid=(4, 4, 4))))
    item = ds[1]
    assert item["case_id"] == "c1" and item["image"].shape == (1, 4, 4, 4)
    assert float(item["image"][0, 0, 1, 0]) == pytest.approx(25 / 115)
    assert ds[1]["image"] is item["image"]  # cached
    assert set(ds.meta) == {"c1"} and len(ds) == 2
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 1, 4, 4, 4) and batch["case_id"] == ["c0", "c1"]
