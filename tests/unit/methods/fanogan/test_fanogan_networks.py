"""f-AnoGAN pieces against their definitions: the WGAN-GP penalty and losses, izi_f, the map, the networks."""

import numpy as np
import pytest
import torch
from torch import nn

from ldm_ood.config import ConfigError, load_config
from ldm_ood.methods.fanogan.batch import fanogan_batch
from ldm_ood.models.fanogan import FAnoGAN, build_fanogan, izi_f, izi_f_terms, levels_for, widths
from ldm_ood.training.wgan_gp import critic_loss, generator_loss, gradient_penalty

pytestmark = pytest.mark.usefixtures("one_thread")


class LinearCritic(nn.Module):
    """D(x) = w · vec(x) + b, features f(x) = scale · vec(x): ∇_x D = w everywhere, so ‖∇D‖ = ‖w‖."""

    def __init__(self, w, b=0.3, scale=1.0):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32))
        self.b, self.scale = b, scale

    def features(self, x):
        return self.scale * x.flatten(1)

    def forward(self, x):
        return x.flatten(1) @ self.w + self.b


class QuadraticCritic(nn.Module):
    """D(x) = ½‖vec(x)‖²: ∇_x D(x̂) = x̂, so the penalty is mean_b (‖x̂_b‖ − 1)²."""

    def forward(self, x):
        return 0.5 * x.flatten(1).pow(2).sum(1)


def _images(seed, n=3, shape=(1, 2, 2)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_gradient_penalty_of_a_linear_critic_is_the_closed_form_and_trains_w():
    w = torch.tensor([0.6, -1.2, 2.0, 0.4])
    critic = LinearCritic(w)
    real, fake, eps = _images(0), _images(1), torch.rand(3, 1, 1, 1, generator=torch.Generator().manual_seed(2))
    gp = gradient_penalty(critic, real, fake, eps)
    norm = float(np.linalg.norm(w.numpy()))
    assert gp.item() == pytest.approx((norm - 1.0) ** 2, rel=1e-6)
    # the penalty has a graph to the critic's weights: d/dw (‖w‖ − 1)² = 2 (‖w‖ − 1) w / ‖w‖
    (grad,) = torch.autograd.grad(gp, critic.w)
    assert grad.numpy() == pytest.approx((2 * (norm - 1.0) * w / norm).numpy(), rel=1e-5)


def test_gradient_penalty_is_taken_at_eps_real_plus_one_minus_eps_fake():
    real, fake = _images(3), _images(4)
    eps = torch.tensor([0.0, 0.25, 1.0]).view(3, 1, 1, 1)
    x_hat = eps.numpy() * real.numpy() + (1 - eps.numpy()) * fake.numpy()
    expected = np.mean((np.linalg.norm(x_hat.reshape(3, -1), axis=1) - 1.0) ** 2)
    assert gradient_penalty(QuadraticCritic(), real, fake, eps).item() == pytest.approx(expected, rel=1e-6)


def test_critic_and_generator_losses_are_the_wgan_gp_objective():
    w = torch.tensor([0.5, 0.5, -0.5, 1.0])
    critic = LinearCritic(w, b=0.1)
    real, fake, eps = _images(5), _images(6), torch.full((3, 1, 1, 1), 0.5)
    d_real = (real.flatten(1) @ w + 0.1).mean().item()
    d_fake = (fake.flatten(1) @ w + 0.1).mean().item()
    norm = float(np.linalg.norm(w.numpy()))
    loss = critic_loss(critic, real, fake, eps, gp_weight=10.0)
    assert loss.total.item() == pytest.approx(d_fake - d_real + 10.0 * (norm - 1.0) ** 2, rel=1e-6)
    assert loss.wasserstein.item() == pytest.approx(d_real - d_fake, rel=1e-6)
    assert generator_loss(critic, fake).item() == pytest.approx(-d_fake, rel=1e-6)


def _exact_model(scale=1.0):
    """G(E(x)) = scale · x exactly (E flattens, G reshapes and scales); f(x) = 2 · vec(x)."""
    class Scale(nn.Module):
        def forward(self, z):
            return scale * z.view(z.shape[0], 1, 2, 2)

    return FAnoGAN(Scale(), LinearCritic(torch.ones(4), scale=2.0), nn.Flatten())


def test_izi_f_is_zero_when_the_generator_reproduces_the_input_exactly():
    x = _images(7)
    terms = izi_f(_exact_model(1.0), x)
    assert torch.equal(terms.healed, x)
    assert terms.score(kappa=1.0).tolist() == [0.0, 0.0, 0.0]


def test_izi_f_is_residual_mse_plus_kappa_feature_mse():
    x = _images(8)
    terms = izi_f(_exact_model(0.5), x)  # healed = x / 2, f = 2 · vec
    a = x.flatten(1).numpy()
    residual = np.mean((a - 0.5 * a) ** 2, axis=1)
    feature = np.mean((2 * a - 2 * 0.5 * a) ** 2, axis=1)
    assert terms.residual.numpy() == pytest.approx(residual, rel=1e-6)
    assert terms.feature.numpy() == pytest.approx(feature, rel=1e-6)
    assert terms.score(kappa=0.7).numpy() == pytest.approx(residual + 0.7 * feature, rel=1e-6)
    # the same from the tensors directly: n = pixels, n_d = feature count
    direct = izi_f_terms(x, 0.5 * x, 2 * x.flatten(1), x.flatten(1))
    assert direct.score(1.0).numpy() == pytest.approx(residual + feature, rel=1e-6)


def test_the_map_is_the_residual_and_the_score_the_izi_f_loss():
    x = _images(9)
    out = fanogan_batch(_exact_model(0.5), x, kappa=1.0)
    assert torch.equal(out.healed, 0.5 * x)
    assert torch.allclose(out.anomaly_map, (x - 0.5 * x).abs())
    a = x.flatten(1).numpy()
    assert out.score.numpy() == pytest.approx(np.mean((0.5 * a) ** 2, 1) + np.mean(a**2, 1), rel=1e-6)


@pytest.mark.parametrize("grid, levels", [((16, 16), 2), ((32, 32), 3), ((64, 64), 4), ((24, 32), 2)])
def test_networks_fit_the_preset_grids(grid, levels):
    cfg = load_config(preset="tiny-2d").fanogan
    assert levels_for(grid) == levels
    torch.manual_seed(0)
    model = build_fanogan(cfg, grid).eval()
    x = torch.rand(3, 1, *grid)
    with torch.no_grad():
        z = model.encoder(x)
        healed = model(x)
        feats = model.critic.features(x)
        score = model.critic(x)
    c = widths(cfg.channels, levels)
    assert z.shape == (3, cfg.latent_dim) and healed.shape == x.shape
    assert 0.0 <= healed.min() and healed.max() <= 1.0  # (tanh + 1) / 2
    assert feats.shape == (3, c[-1] * (grid[0] // 2**levels) * (grid[1] // 2**levels)) and score.shape == (3,)
    assert c == [cfg.channels * min(2**i, 8) for i in range(levels + 1)]


def test_the_critic_has_no_batch_norm_and_scores_each_image_alone():
    model = build_fanogan(load_config(preset="tiny-2d").fanogan, (16, 16))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.critic.modules())
    model.critic.train()  # even in train mode: no statistics shared across the batch (WGAN-GP's per-sample penalty)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.critic(x)[1:2], model.critic(x[1:2]), atol=1e-6)


@pytest.mark.parametrize("grid", [(18, 18), (16, 16, 16), (6, 6)])
def test_grids_the_networks_cannot_halve_are_refused(grid):
    with pytest.raises(ConfigError, match="f-AnoGAN"):
        levels_for(grid)
