"""Each near-OOD corruption (paper 000 §3.1) and the sprites (paper 001 §4.1) against its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ldm_ood.data.corruptions import (
    CHUNK_FRACTION,
    CORRUPTION_KINDS,
    FOV_RADIUS_FRACTION,
    NEAR_OOD_KINDS,
    SIMPLER_KINDS,
    SMOOTH_SIGMA_VOXELS,
    Corrupt,
    Corruptd,
    add_sprites,
    anatomical_axis,
    brain_mask_heuristic,
    chunk_slices,
    corrupt_array,
    corrupt_folder,
    emptied_fov_mask,
    head_mask,
)
from ldm_ood.data.corruption_regions import REGION_KINDS, corruption_region
from ldm_ood.data.io import read_image, write_image
from ldm_ood.data.transforms import from_unit_range_ct, to_unit_range_ct
from ldm_ood.errors import BatchError

#: permuted, non-identity: array axis 0 -> I->S (3 mm), axis 1 -> R->L (2 mm), axis 2 -> P->A (1.5 mm)
PERMUTED = np.array([[0, -2.0, 0, 30], [0, 0, 1.5, -10], [3.0, 0, 0, -40], [0, 0, 0, 1]])


def test_kinds_are_table1_rows_in_order():
    assert len(NEAR_OOD_KINDS) == 14
    assert NEAR_OOD_KINDS[:3] == ("noise_0.01", "noise_0.1", "noise_0.2")
    assert NEAR_OOD_KINDS[6:9] == ("flip_lr", "flip_ap", "flip_is")
    assert NEAR_OOD_KINDS[-3:] == ("skull_stripped", "scale_0.01", "scale_0.1")


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.2])
def test_noise_sigma_measured(sigma):
    x = np.full((64, 64, 64), 0.5, np.float32)
    raw = corrupt_array(x, np.eye(4), f"noise_{sigma}", np.random.default_rng(0), clip=False)
    assert np.std(raw - x) == pytest.approx(sigma, rel=0.01)
    assert abs(np.mean(raw - x)) < 3 * sigma / np.sqrt(x.size)
    clipped = corrupt_array(x, np.eye(4), f"noise_{sigma}", np.random.default_rng(0))
    np.testing.assert_array_equal(clipped, np.clip(raw, 0, 1))


@pytest.mark.parametrize("value", [0.3, 0.6, 1.0])
def test_background_exactly_set_foreground_untouched(tiny_head, value):
    img, affine, _ = tiny_head
    ii, jj, kk = np.indices(img.shape, dtype=float)
    head = np.sqrt(((ii - 9.5) / 8) ** 2 + ((jj - 11.5) / 10) ** 2 + ((kk - 10.5) / 9) ** 2) <= 1.0
    np.testing.assert_array_equal(head_mask(img, affine), head)
    out = corrupt_array(img, affine, f"background_{value}", np.random.default_rng(0))
    assert np.all(out[~head] == np.float32(value))
    np.testing.assert_array_equal(out[head], img[head])


def test_head_mask_fills_enclosed_air_and_drops_specks():
    img = np.zeros((12, 12, 12), np.float32)
    img[2:10, 2:10, 2:10] = 0.5
    img[4:6, 4:6, 4:6] = 0.0  # air cavity inside the head
    img[0, 0, 0] = 0.9  # isolated speck in the background
    mask = head_mask(img)
    expected = np.zeros_like(mask)
    expected[2:10, 2:10, 2:10] = True
    np.testing.assert_array_equal(mask, expected)


def test_anatomical_axes_of_permuted_affine():
    assert anatomical_axis(PERMUTED, 3, 0) == (1, -1)
    assert anatomical_axis(PERMUTED, 3, 1) == (2, 1)
    assert anatomical_axis(PERMUTED, 3, 2) == (0, 1)


@pytest.mark.parametrize("kind,axis", [("flip_lr", 1), ("flip_ap", 2), ("flip_is", 0)])
def test_flip_along_anatomical_axis(kind, axis):
    x = np.random.default_rng(3).random((5, 6, 7)).astype(np.float32)
    out = corrupt_array(x, PERMUTED, kind, np.random.default_rng(0))
    np.testing.assert_array_equal(out, np.flip(x, axis=axis))
    # world check for L-R: the voxel at world x mirrors to -x about the array centre
    if kind == "flip_lr":
        assert out[2, 0, 3] == x[2, 5, 3]


def _slab(shape=(20, 8, 8), lo=3, hi=16):
    x = np.zeros(shape, np.float32)
    x[lo : hi + 1, 2:6, 2:6] = 0.5
    return x


@pytest.mark.parametrize("sign", [1, -1])
def test_chunk_top_location_and_size(sign):
    x = _slab()
    affine = PERMUTED.copy()
    affine[2, 0] = 3.0 * sign  # array axis 0 runs I->S (sign 1) or S->I (sign -1)
    out = corrupt_array(x, affine, "chunk_top", np.random.default_rng(0))
    k = round(CHUNK_FRACTION * 20)
    assert k == 3
    removed = np.arange(14, 17) if sign == 1 else np.arange(3, 6)  # the head spans indices 3..16
    changed = np.flatnonzero((out != x).any(axis=(1, 2)))
    np.testing.assert_array_equal(changed, removed)
    assert np.all(out[removed] == 0)
    keep = np.setdiff1d(np.arange(20), removed)
    np.testing.assert_array_equal(out[keep], x[keep])


def test_chunk_middle_is_centred():
    x = np.random.default_rng(0).random((8, 20, 9)).astype(np.float32) + 0.1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])[:, [0, 2, 1, 3]]  # array axis 1 is I-S
    out = corrupt_array(x, affine, "chunk_middle", np.random.default_rng(0))
    zero = np.flatnonzero((out == 0).all(axis=(0, 2)))
    np.testing.assert_array_equal(zero, [8, 9, 10])  # k = 3 slices starting at (20 - 3) // 2
    np.testing.assert_array_equal(np.delete(out, zero, axis=1), np.delete(x, zero, axis=1))


def test_skull_strip_with_mask_and_heuristic(tiny_head):
    img, affine, brain = tiny_head
    out = corrupt_array(img, affine, "skull_stripped", np.random.default_rng(0), brain_mask=brain)
    assert np.all(out[~brain] == 0)
    np.testing.assert_array_equal(out[brain], img[brain])
    guess = brain_mask_heuristic(img, affine)
    assert not (guess & (img >= 0.99)).any()  # never keeps bone
    # the inside of the bone shell minus one voxel next to the bone: between brain eroded twice and brain
    from scipy import ndimage as ndi

    assert not (guess & ~brain).any()
    assert not (ndi.binary_erosion(brain, iterations=2) & ~guess).any()
    out2 = corrupt_array(img, affine, "skull_stripped", np.random.default_rng(0))
    np.testing.assert_array_equal(out2, np.where(guess, img, 0))


@pytest.mark.parametrize("factor", [0.01, 0.1])
def test_scale_by_exact_factor(tiny_head, factor):
    img, affine, _ = tiny_head
    out = corrupt_array(img, affine, f"scale_{factor}", np.random.default_rng(0))
    np.testing.assert_array_equal(out, img * np.float32(factor))


def _gradient_energy(x: np.ndarray) -> float:
    """Mean squared finite-difference gradient: lower = smoother."""
    return float(np.mean(sum(g.astype(np.float64) ** 2 for g in np.gradient(x))))


def test_simpler_kinds_follow_the_table():
    assert SIMPLER_KINDS == ("smoothed", "fov_emptied") and CORRUPTION_KINDS == NEAR_OOD_KINDS + SIMPLER_KINDS


def test_smoothed_is_a_deterministic_gaussian_blur(tiny_head):
    img, affine, _ = tiny_head
    out = corrupt_array(img, affine, "smoothed", np.random.default_rng(0))
    again = corrupt_array(img, affine, "smoothed", np.random.default_rng(123))
    np.testing.assert_array_equal(out, again)  # no randomness
    # the definition: a separable Gaussian of σ = 1 voxel per axis (scipy, 4 σ truncation, nearest edges)
    assert SMOOTH_SIGMA_VOXELS == 1.0
    k = np.exp(-0.5 * np.arange(-4, 5) ** 2)
    k /= k.sum()
    manual = img.astype(np.float64)
    for axis in range(3):
        manual = np.apply_along_axis(lambda v: np.convolve(np.pad(v, 4, mode="edge"), k, mode="valid"), axis, manual)
    np.testing.assert_allclose(out, manual, atol=1e-6)
    # measurably smoother, same tissue mass (the border is air), still a preprocessed image
    assert _gradient_energy(out) < 0.5 * _gradient_energy(img)
    assert out.sum() == pytest.approx(img.sum(), rel=1e-3)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.dtype == np.float32


def test_fov_emptied_zeroes_exactly_outside_a_centred_cylinder(tiny_head):
    img, affine, _ = tiny_head  # head: ellipsoid with semi-axes 8 (i), 10 (j), 9 (k = I–S) voxels around (9.5, 11.5)
    out = corrupt_array(img, affine, "fov_emptied", np.random.default_rng(0))
    np.testing.assert_array_equal(out, corrupt_array(img, affine, "fov_emptied", np.random.default_rng(9)))
    head = head_mask(img, affine)
    area = head.sum(axis=(0, 1)).max()  # largest axial head area, voxels
    radius = FOV_RADIUS_FRACTION * np.sqrt(area / np.pi)
    ii, jj = np.indices(img.shape[:2])
    ci, cj = np.argwhere(head.any(axis=2)).mean(axis=0)
    outside = ((ii - ci) ** 2 + (jj - cj) ** 2 > radius ** 2)[:, :, None] & np.ones(img.shape, bool)
    assert (ci, cj) == pytest.approx((9.5, 11.5))
    np.testing.assert_array_equal(emptied_fov_mask(img, affine), outside)
    assert np.all(out[outside] == 0.0)  # emptied: exactly background
    np.testing.assert_array_equal(out[~outside], img[~outside])  # the rest untouched
    widest = int(np.argmax(head.sum(axis=(0, 1))))
    removed = (head[:, :, widest] & outside[:, :, widest]).sum() / head[:, :, widest].sum()
    assert 0.15 < removed < 0.4  # moderate: scalp and skull at the widest slice, not the brain
    assert (out > 0).sum() < (img > 0).sum()


def test_fov_emptied_follows_the_anatomical_axis_and_works_in_2d(tiny_head):
    img, _, _ = tiny_head
    permuted = np.ascontiguousarray(np.transpose(img, (2, 0, 1)))  # array axis 0 is I–S under PERMUTED
    mask = emptied_fov_mask(permuted, PERMUTED)
    assert np.all(mask == mask[:1])  # a cylinder along the I–S array axis
    np.testing.assert_array_equal(mask[0], emptied_fov_mask(img, np.diag([2.0, 2.0, 2.0, 1.0]))[:, :, 0])
    sl = img[:, :, 10]
    out2d = corrupt_array(sl, np.diag([2.0, 2.0, 1.0, 1.0]), "fov_emptied", np.random.default_rng(0))
    m2d = emptied_fov_mask(sl, np.diag([2.0, 2.0, 1.0, 1.0]))
    assert m2d.any() and np.all(out2d[m2d] == 0.0) and np.array_equal(out2d[~m2d], sl[~m2d])


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_array(np.zeros((3, 3, 3)), np.eye(4), "blur_2", np.random.default_rng(0))


def test_sprites_mask_marks_exactly_changed_pixels(tiny_head):
    img, affine, brain = tiny_head
    x = img[:, :, 10]
    for seed in range(20):
        out, mask = add_sprites(x, np.random.default_rng(seed))
        assert mask.dtype == bool and mask.any()
        np.testing.assert_array_equal(mask, out != x)
        assert not (mask & ~head_mask(x)).any()  # inside the head
        vals = out[mask]
        assert np.all(((vals >= 0.7) & (vals <= 1.0)) | ((vals >= 0.0) & (vals <= 0.1)))
    out_b, mask_b = add_sprites(x, np.random.default_rng(0), head=brain[:, :, 10])
    assert not (mask_b & ~brain[:, :, 10]).any()
    a, _ = add_sprites(x, np.random.default_rng(5))
    b, _ = add_sprites(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_array_and_dict_transforms_use_meta_affine_and_seed():
    x = torch.rand(1, 5, 6, 7)
    mt = MetaTensor(x, affine=torch.as_tensor(PERMUTED))
    flipped = Corrupt("flip_lr")(mt)
    assert isinstance(flipped, MetaTensor)
    torch.testing.assert_close(flipped.as_tensor(), torch.flip(x, dims=[2]))
    np.testing.assert_array_equal(np.asarray(flipped.affine), PERMUTED)
    n1 = Corrupt("noise_0.1", seed=7)(x.numpy())
    n2 = Corrupt("noise_0.1", seed=7)(x.numpy())
    np.testing.assert_array_equal(n1, n2)
    assert not np.array_equal(n1, Corrupt("noise_0.1", seed=8)(x.numpy()))
    d = Corruptd(["image"], "scale_0.1")({"image": mt, "case_id": "a"})
    assert d["case_id"] == "a"
    torch.testing.assert_close(d["image"].as_tensor(), x * 0.1)
    brain = torch.zeros(1, 5, 6, 7)
    brain[:, 1:3] = 1
    s = Corruptd("image", "skull_stripped", brain_mask_key="brain")({"image": mt, "brain": brain})
    torch.testing.assert_close(s["image"].as_tensor(), x * brain)


def test_corrupt_folder_writes_hu_and_reports_bad_file(tmp_path, tiny_head):
    img, affine, _ = tiny_head
    src, dst = tmp_path / "in", tmp_path / "out"
    hu = from_unit_range_ct(img) - 900.0 * (img == 0)  # air at -915 HU
    write_image(src / "a.nii.gz", hu, affine)
    write_image(src / "b.nii.gz", hu[::-1].copy(), affine)
    bad = hu.copy()
    bad[0, 0, 0] = np.nan
    write_image(src / "bad.nii.gz", bad, affine)
    with pytest.raises(BatchError, match="bad.nii.gz") as err:
        corrupt_folder("background_0.6", src, dst)
    assert len(err.value.failures) == 1
    assert sorted(p.name for p in dst.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    out = read_image(dst / "a.nii.gz")
    np.testing.assert_array_equal(out.affine, affine)
    expected = corrupt_array(to_unit_range_ct(hu), affine, "background_0.6", np.random.default_rng(0))
    np.testing.assert_allclose(to_unit_range_ct(out.array), expected, atol=1e-6)
    # preprocessed [0, 1] inputs without a CT window are kept on that scale
    (tmp_path / "unit").mkdir()
    np.save(tmp_path / "unit" / "c.npy", img)
    res = corrupt_folder("scale_0.1", tmp_path / "unit", tmp_path / "scaled", ct_window=None)
    assert [p.name for p in res.written] == ["c.npy"] and not res.failures
    np.testing.assert_array_equal(np.load(tmp_path / "scaled" / "c.npy"), img * np.float32(0.1))
    # the simpler kinds apply to real scans too: the emptied field of view is the window's background (-15 HU)
    write_image(tmp_path / "real" / "a.nii.gz", hu, affine)
    corrupt_folder("fov_emptied", tmp_path / "real", tmp_path / "fov")
    emptied = emptied_fov_mask(img, affine)
    fov = read_image(tmp_path / "fov" / "a.nii.gz").array
    assert emptied.any() and np.allclose(fov[emptied], -15.0) and np.allclose(fov[~emptied], hu[~emptied].clip(-15, 100))


@pytest.mark.parametrize("kind", REGION_KINDS)
@pytest.mark.parametrize("permuted", [False, True])
def test_region_is_exactly_the_removed_voxels(tiny_head, kind, permuted):
    img, affine, brain = tiny_head
    if permuted:  # axis 0 is I-S here: the chunk is cut along another array axis
        img, brain, affine = np.transpose(img, (2, 0, 1)).copy(), np.transpose(brain, (2, 0, 1)).copy(), PERMUTED
    out = corrupt_array(img, affine, kind, np.random.default_rng(0), brain_mask=brain)
    region = corruption_region(img, affine, kind, brain_mask=brain)
    assert region.dtype == bool and region.shape == img.shape
    np.testing.assert_array_equal(region, out != img)  # every changed voxel, and only those
    assert region.any() and (out[region] == 0).all() and (img[region] > 0).all()
    if kind == "skull_stripped":  # the removed voxels are the head's tissue outside the brain
        np.testing.assert_array_equal(region, ~brain & (img > 0))
    else:  # inside the removed slab: all of it that held tissue
        axis, sl = chunk_slices(kind, img, affine)
        slab = np.moveaxis(np.zeros(img.shape, bool), axis, 0)
        slab[sl] = True
        np.testing.assert_array_equal(region, np.moveaxis(slab, 0, axis) & (img > 0))


@pytest.mark.parametrize("kind", ["noise_0.1", "flip_lr", "scale_0.1", "background_0.3"])
def test_kinds_without_a_region_are_refused(tiny_head, kind):
    img, affine, _ = tiny_head
    with pytest.raises(ValueError, match="no localised region"):
        corruption_region(img, affine, kind)
