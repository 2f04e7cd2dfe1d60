"""Haemorrhage-like lesions (synthetic/lesions.py): inside the brain, hyperdense, sized, with mass effect."""

import numpy as np
import pytest

from ldm_ood.synthetic.lesions import BLOOD_HU, DIAMETER_MM, add_haemorrhage


def _slice(size=64):
    """A disc of 'brain' (30 HU, with a darker 'ventricle' band) inside a 'skull' ring (1000 HU), air outside."""
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    d = np.hypot(ii - size / 2, jj - size / 2)
    brain = d < 24
    hu = np.where(brain, 30.0, np.where(d < 27, 1000.0, -1000.0)).astype(np.float32)
    hu[brain & (np.abs(ii - size / 2) < 2)] = 5.0
    return hu, brain


def test_lesion_is_inside_the_brain_hyperdense_and_of_its_size():
    hu, brain = _slice()
    for seed in range(8):
        out, les = add_haemorrhage(hu, brain, spacing_mm=2.0, rng=np.random.default_rng(seed), noise_hu=0.0)
        assert les.mask.any() and not (les.mask & ~brain).any()
        assert BLOOD_HU[0] - 12 < np.median(out[les.mask]) < BLOOD_HU[1] + 12  # ±4 HU texture, partial volume
        assert abs(np.median(out[les.mask]) - les.hu) < 8
        area_px = les.mask.sum()
        assert 0.5 * np.pi * les.radius_px**2 < area_px < 1.6 * np.pi * les.radius_px**2
        d_mm = 2 * les.radius_px * 2.0
        assert DIAMETER_MM[0] - 1e-6 <= d_mm <= DIAMETER_MM[1] + 1e-6
        np.testing.assert_array_equal(out[~brain], hu[~brain])  # the skull and air do not move


def test_mass_effect_moves_nearby_tissue_only_and_is_deterministic():
    hu, brain = _slice()
    a, les = add_haemorrhage(hu, brain, 2.0, np.random.default_rng(3), noise_hu=0.0, mass_effect=0.3)
    b, _ = add_haemorrhage(hu, brain, 2.0, np.random.default_rng(3), noise_hu=0.0, mass_effect=0.3)
    np.testing.assert_array_equal(a, b)
    still, _ = add_haemorrhage(hu, brain, 2.0, np.random.default_rng(3), noise_hu=0.0, mass_effect=0.0)
    ii, jj = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    d = np.hypot(ii - les.centre[0], jj - les.centre[1])
    moved = np.abs(a - still) > 1.0
    assert moved.any()  # the ventricle band or the lesion's surroundings were displaced
    assert not (moved & (d > 6 * les.radius_px)).any()


def test_a_slice_without_brain_is_an_error():
    hu, brain = _slice()
    with pytest.raises(ValueError, match="no brain"):
        add_haemorrhage(hu, np.zeros_like(brain), 2.0, np.random.default_rng(0))
