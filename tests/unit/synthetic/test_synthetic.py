"""The built-in synthetic benchmark on the ``tiny`` preset: layout, contents, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ldm_ood.config import load_config
from ldm_ood.data.corruption_regions import REGION_KINDS
from ldm_ood.data.corruptions import CORRUPTION_KINDS, NEAR_OOD_KINDS, SIMPLER_KINDS, case_rng, corrupt_array
from ldm_ood.data.io import read_image, read_mask
from ldm_ood.data.manifest import read_manifest, select, set_names
from ldm_ood.data.transforms import Preprocessor, to_unit_range_ct
from ldm_ood.synthetic.cohort import synth


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return synth("tiny", out / "a", seed=3), out


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_sets_and_splits(tiny):
    result, _ = tiny
    cfg = load_config(preset="tiny").synth
    cases = read_manifest(result.manifest)
    assert [len(select(cases, split=s, set_name="id")) for s in ("train", "val", "test")] == [
        cfg.n_train, cfg.n_val, cfg.n_test]
    tests = set_names(cases, "test")
    assert tests[0] == "id" and tuple(tests[1:15]) == NEAR_OOD_KINDS and tuple(tests[15:17]) == SIMPLER_KINDS
    far = [s for s in tests if s.startswith("far_")]
    assert len(far) >= 5 and {"far_mr_t1", "far_mr_epi"} <= set(far)
    assert all(len(select(cases, split="test", set_name=s)) == cfg.n_test for s in CORRUPTION_KINDS)
    assert all(len(select(cases, set_name=s)) == cfg.n_far_per_class for s in far)
    assert set(tests) == set(CORRUPTION_KINDS) | set(far) | {"id"}
    assert result.counts["id"] == cfg.n_test and result.preview.is_file()


def test_all_volumes_preprocess_to_the_grid(tiny):
    result, _ = tiny
    pre = Preprocessor(load_config(preset="tiny").data)
    for case in read_manifest(result.manifest):
        x, meta = pre.load(case.path)
        assert x.shape == (1, 16, 16, 16) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        np.testing.assert_allclose(np.diag(meta.input_affine)[:3], 12.0)  # RAS, preset spacing


def test_id_scans_look_like_head_ct(tiny):
    result, _ = tiny
    for case in select(read_manifest(result.manifest), set_name="id"):
        img = read_image(case.path)
        brain = read_mask(result.out / "brain_masks" / case.path.name, img)
        x = to_unit_range_ct(img.array)
        assert x[0, 0, 0] == 0 and x[-1, -1, -1] == 0  # air in the corners
        assert img.array.min() < -900  # real HU: air near -1000
        bone = (x >= 0.99) & ~brain
        assert bone.sum() > 0.05 * (x > 0).sum()  # a skull
        assert 0.15 < x[brain].mean() < 0.45  # brain ~ 5-40 HU
        assert not (bone & brain).any()


def test_near_ood_files_are_the_corrupted_id_test_scans(tiny):
    result, _ = tiny
    cases = read_manifest(result.manifest)
    src = select(cases, split="test", set_name="id")[0]
    img = read_image(src.path)
    x = to_unit_range_ct(img.array)
    brain = read_mask(result.out / "brain_masks" / src.path.name, img)
    for kind in ("noise_0.1", "flip_ap", "chunk_top", "skull_stripped", "scale_0.1"):
        case = next(c for c in select(cases, set_name=kind) if c.case_id == src.case_id)
        expected = corrupt_array(x, img.affine, kind, case_rng(3, kind, src.case_id), brain_mask=brain)
        got = to_unit_range_ct(read_image(case.path, allow_constant=True).array)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_localised_sets_carry_the_removed_voxels_as_mask(tiny):
    result, _ = tiny
    cases = read_manifest(result.manifest)
    ids = {c.case_id: c for c in select(cases, split="test", set_name="id")}
    for kind in NEAR_OOD_KINDS:
        near = select(cases, set_name=kind)
        assert near
        if kind not in REGION_KINDS:
            assert all(c.mask is None for c in near), kind
            continue
        for c in near:
            assert c.mask == result.out / "near_masks" / kind / f"{c.case_id}.nii.gz"
            mask = read_image(c.mask, allow_constant=True)
            before = to_unit_range_ct(read_image(ids[c.case_id].path).array)
            after = to_unit_range_ct(read_image(c.path, allow_constant=True).array)
            np.testing.assert_array_equal(mask.affine, read_image(c.path, allow_constant=True).affine)
            removed = np.abs(before - after) > 1e-6
            np.testing.assert_array_equal(mask.array > 0.5, removed)  # the mask is what the corruption removed
            assert removed.any() and np.abs(after[removed]).max() < 1e-6


def test_2d_manifest_and_sprite_masks(tiny):
    result, _ = tiny
    cfg = load_config(preset="tiny").synth
    cases = read_manifest(result.manifest_2d)
    assert len(select(cases, split="train", set_name="id")) == cfg.n_train_2d
    assert len(select(cases, split="val", set_name="id")) == cfg.n_val_2d
    healthy = select(cases, split="test", set_name="id")
    sprites = select(cases, split="test", set_name="sprites")
    assert len(healthy) == len(sprites) == cfg.n_test_2d
    subjects = {s: {c.case_id.rsplit("-", 1)[0] for c in select(cases, split=s)} for s in ("train", "val", "test")}
    assert subjects["train"].isdisjoint(subjects["test"]) and subjects["val"].isdisjoint(subjects["test"])
    for h, s in zip(healthy, sprites):
        a, b = read_image(h.path), read_image(s.path)
        assert a.array.shape == (cfg.slice_size, cfg.slice_size)
        mask = read_mask(s.mask, b)
        changed = np.abs(to_unit_range_ct(a.array) - to_unit_range_ct(b.array)) > 1e-5  # HU round trip ~1e-7
        assert mask.any() and np.array_equal(mask, changed)
    haem = {c.case_id: c for c in select(cases, split="test", set_name="haemorrhage")}
    assert haem and set(haem) <= {h.case_id for h in healthy}
    for h in healthy:
        if h.case_id in haem:
            b = read_image(haem[h.case_id].path)
            mask = read_mask(haem[h.case_id].mask, b)
            assert mask.any() and np.median(b.array[mask]) > 45  # hyperdense blood inside the mask


def test_same_seed_is_byte_identical(tiny):
    result, root = tiny
    again = synth("tiny", root / "b", seed=3)
    assert _hashes(result.out) == _hashes(again.out)
    other = synth("tiny", root / "c", seed=4)
    h1, h2 = _hashes(result.out), _hashes(other.out)
    assert h1.keys() == h2.keys() and h1["id/train/head-train-000.nii.gz"] != h2["id/train/head-train-000.nii.gz"]
