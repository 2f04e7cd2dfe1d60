"""Training losses against hand computations on small tensors."""

import math

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.models.perceptual import lpips_loss
from ldm_ood.training import losses


def test_reconstruction_l2_and_l1():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 2, 2)
    x_hat = torch.tensor([1.0, 1.0, 0.0, 3.5]).view(1, 1, 2, 2)
    assert losses.reconstruction_loss(x, x_hat, "l2").item() == pytest.approx((1 + 0 + 4 + 0.25) / 4)
    assert losses.reconstruction_loss(x, x_hat, "l1").item() == pytest.approx((1 + 0 + 2 + 0.5) / 4)
    with pytest.raises(ValueError, match="reconstruction_loss"):
        losses.reconstruction_loss(x, x_hat, "huber")


def test_spectral_loss_of_constant_is_dc_amplitude_squared():
    # ortho FFT of a constant c over N elements: DC amplitude c*sqrt(N), all others 0
    # -> mean over N of squared amplitude differences = c^2
    x = torch.zeros(1, 1, 4, 4, 4)
    x_hat = torch.full_like(x, 0.5)
    assert losses.spectral_loss(x, x_hat, spatial_dims=3).item() == pytest.approx(0.25, rel=1e-5)
    # a shifted copy has identical amplitudes: loss 0
    y = torch.rand(1, 1, 8, 8)
    assert losses.spectral_loss(y, torch.roll(y, 3, dims=-1), spatial_dims=2).item() == pytest.approx(0.0, abs=1e-6)


def test_adversarial_least_squares_generator_and_discriminator():
    real = torch.tensor([[0.5, 1.5], [1.0, 2.0]]).view(1, 1, 2, 2)
    fake = torch.tensor([[0.0, 0.2], [-0.4, 1.0]]).view(1, 1, 2, 2)
    # MONAI's least-squares criterion applies LeakyReLU(0.05) to the logits first: -0.4 -> -0.02
    g = losses.generator_adversarial_loss([torch.zeros(1), fake])  # PatchDiscriminator list: last = logits
    assert g.item() == pytest.approx(((0 - 1) ** 2 + (0.2 - 1) ** 2 + (-0.02 - 1) ** 2 + 0) / 4)
    d = losses.discriminator_loss(real, fake)
    real_term = ((0.5 - 1) ** 2 + 0.5**2 + 0 + 1) / 4
    fake_term = (0 + 0.04 + 0.02**2 + 1) / 4
    assert d.item() == pytest.approx(0.5 * (real_term + fake_term))


def test_diffusion_loss_is_mean_squared_error():
    eps = torch.tensor([1.0, -1.0, 0.0, 2.0])
    pred = torch.tensor([0.0, -1.0, 1.0, 0.0])
    assert losses.diffusion_loss(pred, eps).item() == pytest.approx((1 + 0 + 1 + 4) / 4)


def test_next_token_loss():
    k = 5
    # uniform logits: CE = log K for every token
    assert losses.next_token_loss(torch.zeros(2, 3, k), torch.randint(0, k, (2, 3))).item() == pytest.approx(math.log(k))
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])
    expected = -(2.0 - math.log(math.exp(2) + 2))
    assert losses.next_token_loss(logits, torch.tensor([[0]])).item() == pytest.approx(expected)


def test_vq_loss_is_commitment_times_mse_to_codebook():
    """Paper 001 §2.1 with EMA codebook: MONAI's quantization loss = β · mean((sg[e_k] − z_e)²)."""
    cfg = load_config(preset="tiny").first_stage
    torch.manual_seed(0)
    model = build_first_stage(cfg, spatial_dims=2).eval()
    x = torch.rand(2, 1, 16, 16)
    z_e = model.encode(x)
    q, vq = model.quantize(z_e)
    idx = model.index_quantize(x)
    e = model.quantizer.embed(idx)
    assert torch.equal(q, e)  # straight-through value = nearest codebook vectors
    assert vq.item() == pytest.approx(cfg.commitment_cost * ((e - z_e) ** 2).mean().item(), rel=1e-5)


def test_generator_loss_weights_every_term():
    cfg = load_config(preset="tiny").first_stage.model_copy(
        update={"perceptual_weight": 0.1, "adversarial_weight": 0.01, "spectral_weight": 2.0}
    )
    x = torch.zeros(1, 1, 4, 4, 4)
    x_hat = torch.full_like(x, 0.5)
    fake = torch.zeros(1, 1, 2, 2, 2)  # LS generator loss = 1
    out = losses.first_stage_generator_loss(cfg, x, x_hat, torch.tensor(0.3), 3, fake, lambda a, b: torch.tensor(4.0))
    expected = 0.25 + 0.3 + 0.1 * 4.0 + 2.0 * 0.25 + 0.01 * 1.0
    assert out.total.item() == pytest.approx(expected, rel=1e-6)
    assert out.terms == pytest.approx({"recon": 0.25, "vq": 0.3, "perceptual": 4.0, "spectral": 0.25, "adv_g": 1.0})
    # VQ-VAE of paper 001: L1 + vq only
    vqvae = cfg.model_copy(update={"reconstruction_loss": "l1", "perceptual_weight": 0.0, "adversarial_weight": 0.0,
                                   "spectral_weight": 0.0})
    out = losses.first_stage_generator_loss(vqvae, x, x_hat, torch.tensor(0.3), 3)
    assert out.total.item() == pytest.approx(0.5 + 0.3) and set(out.terms) == {"recon", "vq"}


def test_perceptual_loss_is_zero_for_identical_and_positive_otherwise():
    from ldm_ood.models.perceptual import load_lpips

    model = load_lpips()
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    assert lpips_loss(model, x, x, generator=g).item() == pytest.approx(0.0, abs=1e-6)
    x_hat = (x + 0.3 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    p = lpips_loss(model, x, x_hat, generator=g)
    p.backward()
    assert p.item() > 0 and x_hat.grad is not None and x_hat.grad.abs().sum() > 0
