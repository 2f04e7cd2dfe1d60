"""The AE (spatial) and VAE (dense) networks, the VAE objective and its deterministic inference."""

import math

import pytest
import torch
from monai.networks.nets import AutoEncoder, VarAutoEncoder

from ldm_ood.config import ConfigError, load_config
from ldm_ood.methods.autoencoder.maps import anomaly_batch
from ldm_ood.methods.autoencoder.model import (
    TrainingPass,
    autoencoder_loss,
    build_autoencoder,
    kl_divergence,
    reconstruct,
)
from ldm_ood.methods.autoencoder.training import AutoencoderTask

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n=2, grid=(16, 16), seed=0):
    return torch.rand(n, 1, *grid, generator=torch.Generator().manual_seed(seed))


def test_the_ae_has_a_spatial_bottleneck_and_the_vae_a_dense_latent():
    cfg = load_config(preset="tiny-2d")
    ae = build_autoencoder("ae", cfg.ae, (16, 16)).eval()
    vae = build_autoencoder("vae", cfg.vae, (16, 16)).eval()
    assert isinstance(ae, AutoEncoder) and not isinstance(ae, VarAutoEncoder)
    assert isinstance(vae, VarAutoEncoder)
    x = _images()
    with torch.no_grad():
        z = ae.intermediate(ae.encode(x))
        mu, logvar = vae.encode_forward(x)
    assert z.shape == (2, cfg.ae.channels[-1], 4, 4)  # a feature map: grid / prod(strides), no dense layer
    assert not any(isinstance(m, torch.nn.Linear) for m in ae.modules())
    assert mu.shape == logvar.shape == (2, cfg.vae.latent_size)
    assert reconstruct(ae, x).shape == reconstruct(vae, x).shape == x.shape


def test_a_grid_the_strides_do_not_divide_is_refused():
    cfg = load_config(preset="tiny-2d")
    with pytest.raises(ConfigError, match=r"not divisible by the product of ae\.strides"):
        build_autoencoder("ae", cfg.ae, (18, 16))


def test_vae_loss_is_reconstruction_plus_beta_kl_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    x_hat = torch.full_like(x, 0.5)
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # KL per case: 1/2 sum_j (mu^2 + sigma^2 - log sigma^2 - 1)
    kl_case = [0.5 * ((1 + 1 - 0 - 1) + (0 + 4 - math.log(4.0) - 1)), 0.0]
    assert kl_divergence(mu, logvar).tolist() == pytest.approx(kl_case)
    loss = autoencoder_loss(x, x_hat, "l1", mu, logvar, kl_weight=0.5)
    recon = 0.5  # every |x - x̂| is 0.5
    kl_per_voxel = (kl_case[0] + kl_case[1]) / 2 / 4  # batch mean, 4 voxels per image
    assert float(loss.recon) == pytest.approx(recon)
    assert float(loss.kl) == pytest.approx(kl_per_voxel)
    assert float(loss.total) == pytest.approx(recon + 0.5 * kl_per_voxel)
    l2 = autoencoder_loss(x, x_hat, "l2", mu, logvar, kl_weight=2.0)
    assert float(l2.total) == pytest.approx(0.25 + 2.0 * kl_per_voxel)
    ae = autoencoder_loss(x, x_hat, "l1")
    assert ae.kl is None and float(ae.total) == pytest.approx(recon)


def test_the_vae_training_objective_samples_z_with_the_given_noise():
    cfg = load_config(preset="tiny-2d", overrides={"vae": {"kl_weight": 0.3}})
    task = AutoencoderTask(cfg, "vae")
    x = _images(3)
    gen = torch.Generator().manual_seed(5)
    loss = task.loss(task._pass, x, gen)
    eps = torch.randn((3, cfg.vae.latent_size), generator=torch.Generator().manual_seed(5))
    net = task.net
    mu, logvar = net.encode_forward(x)
    x_hat = net.decode_forward(mu + eps * torch.exp(0.5 * logvar), True)
    kl = (0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)).mean() / 256
    expected = (x - x_hat).abs().mean() + 0.3 * kl
    assert loss.total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert task.loss(task._pass, x, None).total.item() != pytest.approx(loss.total.item())  # z = mu differs


def test_the_vae_decodes_its_posterior_mean_at_eval_time():
    cfg = load_config(preset="tiny-2d")
    torch.manual_seed(0)
    vae = build_autoencoder("vae", cfg.vae, (16, 16))
    TrainingPass(vae)(_images(), torch.randn(2, cfg.vae.latent_size))  # a train-mode pass: batch statistics move
    vae.eval()
    x = _images(2, seed=1)
    a, b = reconstruct(vae, x), reconstruct(vae, x)
    assert torch.equal(a, b)
    with torch.no_grad():
        mu, _ = vae.encode_forward(x)
        assert torch.equal(a, vae.decode_forward(mu, True))
        assert torch.equal(a, vae(x)[0])  # MONAI's own forward agrees (use_mean_at_inference)
    m1, m2 = anomaly_batch(vae, x, cfg.vae), anomaly_batch(vae, x, cfg.vae)
    assert torch.equal(m1.anomaly_map, m2.anomaly_map) and torch.equal(m1.score, m2.score)


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_a_bf16_training_step_and_reconstruction_run(kind):
    cfg = load_config(preset="tiny-2d")
    task = AutoencoderTask(cfg, kind)
    task.use_bf16(True)  # the AE goes channels-last; the VAE stays contiguous (MONAI flattens it with view)
    out = task.train_step({"image": _images(2)}, epoch=1)
    assert all(math.isfinite(v) for v in out.values())
    task.net.eval()
    assert reconstruct(task.net, _images(2), bf16=True).dtype == torch.float32
