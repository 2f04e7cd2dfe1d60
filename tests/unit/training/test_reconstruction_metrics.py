"""PSNR, SSIM and codebook usage of the first stage's validation (training/reconstruction_metrics.py)."""

import math

import pytest
import torch

from ldm_ood.training.reconstruction_metrics import PSNR_CAP, ReconstructionStats, codebook_usage, psnr, ssim


def test_psnr_matches_its_definition():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1, 0, 0, 0] = 0.5  # MSE 0.25 / 16
    assert psnr(x, y).tolist() == pytest.approx([20.0, 10 * math.log10(16 / 0.25)])
    assert psnr(x, x).tolist() == [PSNR_CAP, PSNR_CAP]


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 20, 20, generator=g)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (ssim(x, noisy) < 0.9).all()
    assert ssim(torch.rand(1, 1, 6, 6, 6, generator=g), torch.rand(1, 1, 6, 6, 6, generator=g)).shape == (1,)  # window fits


def test_codebook_perplexity_and_dead_codes():
    assert codebook_usage(torch.tensor([5.0, 0, 0, 0])) == (pytest.approx(1.0), 3)  # collapsed onto one code
    assert codebook_usage(torch.tensor([3.0, 3, 3, 3])) == (pytest.approx(4.0), 0)  # uniform: K
    p = torch.tensor([0.5, 0.25, 0.25])
    assert codebook_usage(torch.tensor([2.0, 1, 1, 0]))[0] == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    perplexity, dead = codebook_usage(torch.zeros(3))
    assert math.isnan(perplexity) and dead == 3


def test_stats_accumulate_over_batches_and_reset():
    stats = ReconstructionStats(num_codes=4)
    x = torch.zeros(1, 1, 8, 8)
    stats.add(x, x + 0.1, torch.tensor([[0, 0], [1, 1]]))
    stats.add(x, x + 0.01, torch.tensor([[2, 2], [2, 2]]))
    out = stats.result()
    assert out["val_psnr"] == pytest.approx((20 + 40) / 2)
    assert out["val_dead_codes"] == 1
    assert out["val_perplexity"] == pytest.approx(math.exp(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))))
    assert stats.n == 0 and stats.counts.sum() == 0  # reset for the next epoch


def test_dead_codes_restart_at_encoder_outputs_and_stay_there():
    from ldm_ood.config import load_config
    from ldm_ood.models.first_stage import build_first_stage
    from ldm_ood.training.codebook_restart import restart_dead_codes

    torch.manual_seed(0)
    model = build_first_stage(load_config(preset="tiny-2d").first_stage, 2)
    q = model.quantizer.quantizer
    q.ema_cluster_size[:] = 5.0
    q.ema_cluster_size[[2, 7]] = 0.0  # two dead codes
    kept = q.embedding.weight[0].clone()
    z = torch.randn(2, q.embedding_dim, 3, 3)
    n = restart_dead_codes(q, z, threshold=0.01, generator=torch.Generator().manual_seed(1))
    assert n == 2
    flat = z.movedim(1, -1).reshape(-1, q.embedding_dim)
    for k in (2, 7):  # each restarted code is one of the batch's encoder outputs, with an EMA state of size 1
        assert (flat - q.embedding.weight[k]).abs().sum(1).min() == 0
        torch.testing.assert_close(q.ema_w[k], q.embedding.weight[k])
        assert q.ema_cluster_size[k] == 1.0
    torch.testing.assert_close(q.embedding.weight[0], kept)  # live codes untouched
    # one EMA step that assigns the encoder output to it leaves the restarted code where it is
    model.train()
    target = q.embedding.weight[2].clone()
    q(target.view(1, -1, 1, 1))
    torch.testing.assert_close(q.embedding.weight[2], target, rtol=1e-4, atol=1e-5)
    assert restart_dead_codes(q, z, threshold=0.01) == 0  # nothing dead any more
