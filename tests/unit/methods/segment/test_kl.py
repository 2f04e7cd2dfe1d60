"""KL maps L_{t-1} (paper 001 §3): closed form against hand computations, t-sets, thresholds."""

import math

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from ldm_ood.config import load_config
from ldm_ood.methods.segment.kl import (
    chain_kl,
    gaussian_kl,
    image_kl_score,
    kl_coefficients,
    kl_map,
    kl_mask,
    kl_t_values,
    kl_terms,
    kl_thresholds,
    posterior_mean,
    posterior_variance,
    score_t_values,
    subsample_score,
)
from ldm_ood.models.diffusion import build_ddpm_scheduler, build_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def _scheduler(T=1000):
    return DDPMScheduler(num_train_timesteps=T, schedule="scaled_linear_beta", beta_start=0.0015,
                         beta_end=0.0195, clip_sample=False)


def _noise(shape, seed, n_t):
    """The noise kl_terms draws with one generator: per t, one (B, C, *s) tensor."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(shape, generator=g) for _ in range(n_t)], 1)  # (B, n_t, C, *s)


class ConstantNoise(torch.nn.Module):
    """A stub "UNet" predicting a constant noise value everywhere."""

    def __init__(self, value=0.0):
        super().__init__()
        self.value = value

    def forward(self, x, timesteps):
        return torch.full_like(x, self.value)


class TrueNoise(torch.nn.Module):
    """A stub "UNet" returning the exact noise that was added (an oracle of kl_terms' draws)."""

    def __init__(self, noise, t_values):
        super().__init__()
        self.noise, self.index = noise, {t: j for j, t in enumerate(t_values)}

    def forward(self, x, timesteps):
        B = self.noise.shape[0]
        k = x.shape[0] // B
        return torch.stack([self.noise[r // k, self.index[int(timesteps[r])]] for r in range(x.shape[0])])


def test_gaussian_kl_hand_values():
    assert gaussian_kl(torch.tensor(0.0), 1.0, torch.tensor(1.0), 1.0).item() == pytest.approx(0.5)
    assert gaussian_kl(torch.tensor(0.0), 1.0, torch.tensor(0.0), 2.0).item() == pytest.approx(0.5 * (math.log(2) - 0.5))
    assert gaussian_kl(torch.tensor(3.0), 0.25, torch.tensor(3.0), 0.25).item() == 0.0


def test_coefficient_matches_hand_formula_at_t500():
    sch = _scheduler()
    b = sch.betas.double()
    ab = sch.alphas_cumprod.double()
    t = 500
    beta_tilde = b[t] * (1 - ab[t - 1]) / (1 - ab[t])
    hand = b[t] ** 2 / (2 * beta_tilde * (1 - b[t]) * (1 - ab[t]))
    assert kl_coefficients(sch)[t].item() == pytest.approx(hand.item(), rel=1e-6)  # α_t stored in float32
    assert posterior_variance(sch, t) == pytest.approx(beta_tilde.item(), rel=1e-12)
    assert math.isinf(kl_coefficients(sch)[0].item())


def test_kl_equals_gaussian_kl_of_posterior_means():
    """L_{t-1} from kl_terms == D_KL(N(μ̃, β̃) ‖ N(μ_θ, β̃)) computed from the means in float64."""
    sch = _scheduler()
    z0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    eps_theta = 0.3
    for t in (1, 400, 999):
        got = kl_terms(ConstantNoise(eps_theta), z0, sch, [t], generator=torch.Generator().manual_seed(7))
        eps = _noise(z0.shape, 7, 1)[:, 0].double()
        ab = sch.alphas_cumprod.double()[t]
        zt = ab.sqrt() * z0.double() + (1 - ab).sqrt() * eps
        x0_hat = (zt - (1 - ab).sqrt() * eps_theta) / ab.sqrt()
        var = posterior_variance(sch, t)
        ref = gaussian_kl(posterior_mean(sch, t, z0, zt), var, posterior_mean(sch, t, x0_hat, zt), var)
        torch.testing.assert_close(got.double(), ref, rtol=2e-4, atol=1e-7)


def test_kl_is_exactly_zero_for_the_true_noise_and_averages_over_t():
    sch = _scheduler()
    z0 = torch.randn(3, 2, 4, 6)
    ts = kl_t_values((400, 600), 5)
    oracle = TrueNoise(_noise(z0.shape, 3, len(ts)), ts)
    for max_batch in (3, 6, 100):  # one t per call, two per call, all at once
        terms = kl_terms(oracle, z0, sch, ts, generator=torch.Generator().manual_seed(3), max_batch=max_batch)
        assert terms.shape == z0.shape and torch.count_nonzero(terms) == 0
    # mean over t: with ε_θ = 0, L = c_t ε², averaged over the t-values
    terms = kl_terms(ConstantNoise(0.0), z0, sch, ts, generator=torch.Generator().manual_seed(3), max_batch=4)
    eps = _noise(z0.shape, 3, len(ts))
    c = kl_coefficients(sch)[ts].float().view(1, -1, 1, 1, 1)
    torch.testing.assert_close(terms, (c * eps**2).mean(1), rtol=1e-5, atol=1e-8)
    v = kl_map(terms)
    assert v.shape == (3, 4, 6)
    torch.testing.assert_close(v, terms.mean(1))
    torch.testing.assert_close(image_kl_score(terms), terms.flatten(1).mean(1))


def test_kl_with_padding_and_per_image_generators_does_not_depend_on_batching():
    cfg = load_config(preset="tiny-2d")
    torch.manual_seed(0)
    unet = build_unet(cfg.ldm, 2, 4).eval()
    sch = build_ddpm_scheduler(cfg.ldm)
    z0 = torch.randn(2, 4, 6, 6)  # 6 is not a multiple of 4: padded to 8 and cropped back
    ts = [400, 500, 600]

    def gens():
        return [torch.Generator().manual_seed(s) for s in (11, 12)]

    a = kl_terms(unet, z0, sch, ts, multiple=4, generator=gens(), max_batch=2)
    b = kl_terms(unet, z0, sch, ts, multiple=4, generator=gens(), max_batch=64)
    single = kl_terms(unet, z0[1:], sch, ts, multiple=4, generator=gens()[1:], max_batch=64)
    assert a.shape == (2, 4, 6, 6)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a[1:], single, rtol=1e-4, atol=1e-6)
    assert (a > 0).all()


def test_chain_kl_per_t_hand_values_and_subsample_of_the_same_draws():
    sch = _scheduler()
    z0 = torch.randn(2, 2, 3, 5)
    ts = score_t_values(1000, None)[::37]  # 27 t-values spread over the whole chain
    eps = _noise(z0.shape, 5, len(ts))
    per_t = chain_kl(ConstantNoise(0.0), z0, sch, ts, generator=torch.Generator().manual_seed(5), max_batch=10)
    # with ε_θ = 0: L_{t-1} = c_t ε² per element, the image's mean per t
    c = kl_coefficients(sch)[ts].float().view(1, -1)
    torch.testing.assert_close(per_t, c * (eps**2).flatten(2).mean(2), rtol=1e-5, atol=1e-8)
    # its mean over t is the image score of kl_terms with the same draws (the whole-chain score, §4.1)
    terms = kl_terms(ConstantNoise(0.0), z0, sch, ts, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(per_t.mean(1), image_kl_score(terms), rtol=1e-5, atol=1e-8)
    # a subsample is the mean of its own columns of those draws; one not drawn gives None
    sub = [ts[0], ts[3], ts[-1]]
    torch.testing.assert_close(subsample_score(per_t, ts, sub), per_t[:, [0, 3, len(ts) - 1]].mean(1))
    assert subsample_score(per_t, ts, [ts[0] + 1]) is None


def test_t_value_sets():
    assert kl_t_values((400, 600), None) == list(range(400, 601))
    d = kl_t_values((400, 600), 50)
    assert len(d) == 50 and d[0] == 400 and d[-1] == 600 and d == sorted(set(d))
    assert len(score_t_values(1000, None)) == 999 and score_t_values(1000, None)[0] == 1
    s = score_t_values(1000, 50)
    assert len(s) == 50 and s[0] == 1 and s[-1] == 999
    with pytest.raises(ValueError):
        kl_t_values((0, 10), None)
    with pytest.raises(ValueError):
        kl_terms(ConstantNoise(), torch.zeros(1, 1, 2, 2), _scheduler(), [0])


def test_percentile_thresholds_and_mask_against_numpy():
    rng = np.random.default_rng(0)
    maps = rng.gamma(2.0, size=(40, 5, 7)).astype(np.float32)
    thr = kl_thresholds(torch.from_numpy(maps), 97.5)
    np.testing.assert_allclose(thr.numpy(), np.percentile(maps, 97.5, axis=0), rtol=1e-6)
    # by hand for one position: 40 sorted values, rank 0.975 * 39 = 38.025 -> linear interpolation
    col = np.sort(maps[:, 2, 3].astype(np.float64))
    assert thr[2, 3].item() == pytest.approx(col[38] + 0.025 * (col[39] - col[38]), rel=1e-6)
    v = torch.from_numpy(maps[:3])
    m = kl_mask(v, thr)
    assert m.dtype == torch.bool and torch.equal(m, v >= thr)
    assert kl_mask(thr[None], thr).all()  # v == threshold counts as anomalous (m = 1 if v >= thr)
