"""The AE / VAE baselines' anomaly map and image score (paper 001 Table 1, Baur et al. 2021), on hand-made inputs."""

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.methods.autoencoder.maps import anomaly_batch, residual_map, top_k_count, top_k_score
from ldm_ood.methods.autoencoder.model import build_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n=3, grid=(16, 16), seed=0):
    return torch.rand(n, 1, *grid, generator=torch.Generator().manual_seed(seed))


def test_a_perfect_reconstruction_gives_a_zero_map_and_the_minimum_score(monkeypatch):
    cfg = load_config(preset="tiny-2d")
    net = build_autoencoder("ae", cfg.ae, cfg.data.grid).eval()
    x = _images()
    random_net = anomaly_batch(net, x, cfg.ae)
    monkeypatch.setattr(net, "forward", lambda inp: inp)  # reconstructs exactly
    out = anomaly_batch(net, x, cfg.ae)
    assert torch.equal(out.healed, x)
    assert out.anomaly_map.shape == x.shape and torch.count_nonzero(out.anomaly_map) == 0
    assert torch.equal(out.score, torch.zeros(3))  # the map is >= 0, so 0 is the smallest possible score
    assert (random_net.score > 0).all() and (random_net.anomaly_map >= 0).all()


def test_top_k_score_is_the_mean_of_the_largest_fraction():
    amap = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10)
    amap = torch.cat([amap, amap.flip(-1) * 2])  # the same values in another order, doubled
    assert top_k_count(100, 0.05) == 5 and top_k_count(100, 0.011) == 2 and top_k_count(100, 1e-6) == 1
    assert top_k_count(1024, 0.01) == 11 and top_k_count(100, 1.0) == 100
    assert top_k_score(amap, 0.05).tolist() == pytest.approx([(95 + 96 + 97 + 98 + 99) / 5, 2 * 97.0])
    assert top_k_score(amap, 0.011).tolist() == pytest.approx([98.5, 197.0])
    assert top_k_score(amap, 1e-6).tolist() == pytest.approx([99.0, 198.0])
    assert top_k_score(amap, 1.0).tolist() == pytest.approx([49.5, 99.0])


def test_residual_map_is_the_absolute_error_then_a_median_filter():
    x = torch.zeros(1, 1, 9, 9)
    x_hat = torch.zeros(1, 1, 9, 9)
    x_hat[0, 0, 1, 1] = -0.5  # one hot voxel: |x - x̂| = 0.5 there
    x[0, 0, 4:7, 4:7] = 0.8  # a 3x3 anomaly
    raw = residual_map(x, x_hat, median_size=1)
    assert torch.equal(raw, (x - x_hat).abs())
    filtered = residual_map(x, x_hat, median_size=3)
    assert filtered[0, 0, 1, 1] == 0  # an isolated voxel is removed
    assert filtered[0, 0, 5, 5] == pytest.approx(0.8)  # the centre of the block stays
    assert filtered[0, 0, 4, 4] == 0  # a corner has 4 of 9 block voxels: the median is 0
    assert filtered[0, 0, 4, 5] == pytest.approx(0.8)  # an edge has 6 of 9
    assert filtered.dtype == torch.float32 and filtered.shape == x.shape


def test_the_score_uses_the_filtered_map():
    cfg = load_config(preset="tiny-2d")
    net = build_autoencoder("ae", cfg.ae, cfg.data.grid).eval()
    x = _images(2)
    out = anomaly_batch(net, x, cfg.ae)
    with torch.no_grad():
        expected_map = residual_map(x, net(x), cfg.ae.median_size)
    assert torch.allclose(out.anomaly_map, expected_map)
    k = top_k_count(16 * 16, cfg.ae.top_k_fraction)
    by_hand = torch.stack([m.flatten().sort(descending=True).values[:k].mean() for m in expected_map])
    assert torch.allclose(out.score, by_hand)
