"""Masked healing (paper 001 §3): exactness outside the mask, step counts, DDIM/DDPM steps."""

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from ldm_ood.config import load_config
from ldm_ood.methods.segment.healing import heal, healing_timesteps
from ldm_ood.models.diffusion import build_ddpm_scheduler, build_unet
from ldm_ood.samplers.ddim import ddim_step
from ldm_ood.samplers.ddpm import ddpm_step
from ldm_ood.samplers.noise import q_sample

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting(torch.nn.Module):
    """Wraps a UNet and records the timesteps of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, timesteps):
        self.calls.append(int(timesteps[0]))
        return self.net(x, timesteps=timesteps)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(preset="tiny-2d")
    torch.manual_seed(0)
    return build_unet(cfg.ldm, 2, 4).eval(), build_ddpm_scheduler(cfg.ldm)


def test_healing_timesteps():
    assert healing_timesteps(500) == list(range(500, -1, -1))
    d = healing_timesteps(500, 50)
    assert len(d) == 50 and d[0] == 500 and d[-1] == 0 and d[:3] == [500, 490, 480]
    assert all(a > b for a, b in zip(d, d[1:]))
    assert healing_timesteps(3, 10) == [3, 2, 1, 0]


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 5)])
@pytest.mark.parametrize("healing", ["paper", "repaint"])
def test_unmasked_latents_end_bit_exactly_at_z0(tiny, sampler, steps, healing):
    unet, sch = tiny
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 4, 6, 6, generator=g)  # padded to 8x8 for the UNet, cropped back
    mask = torch.rand(3, 6, 6, generator=g) > 0.6
    ts = healing_timesteps(20, steps)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    out = heal(unet, z0, mask, sch, ts, sampler=sampler, healing=healing, multiple=4, generator=gens)
    keep = ~mask[:, None].expand_as(z0)
    assert torch.equal(out[keep], z0[keep])  # bit-exact
    assert not torch.equal(out[~keep], z0[~keep])  # the masked region was healed
    assert torch.isfinite(out).all()
    # nothing to heal: the latent comes back unchanged
    assert torch.equal(heal(unet, z0, torch.zeros_like(mask), sch, ts, sampler=sampler, healing=healing, multiple=4), z0)


class Shrink(torch.nn.Module):
    """A cheap stand-in for the UNet: predicts 0.1·x as the noise."""

    def forward(self, x, timesteps):
        return 0.1 * x


def test_ddpm_and_ddim_make_the_configured_number_of_unet_calls(tiny):
    _, sch = tiny
    z0 = torch.randn(2, 4, 8, 8)
    net = Counting(Shrink())
    heal(net, z0, None, sch, healing_timesteps(30), sampler="ddpm", generator=torch.Generator().manual_seed(1))
    assert net.calls == list(range(30, -1, -1))  # start_t + 1 calls: t = 30, ..., 0
    net.calls.clear()
    heal(net, z0, None, sch, healing_timesteps(500, 50), sampler="ddim")
    assert len(net.calls) == 50 and net.calls[0] == 500 and net.calls[-1] == 0
    with pytest.raises(ValueError):
        heal(net, z0, None, sch, healing_timesteps(500, 50), sampler="ddpm")


def test_paper_form_feeds_z0_outside_the_mask(tiny):
    """Each step's input is m ⊙ z'_t + (1 − m) ⊙ z_0 (paper form)."""
    unet, sch = tiny
    z0 = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 3:6] = True
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, timesteps):
            seen.append(x.clone())
            return unet(x, timesteps=timesteps)

    heal(Spy(), z0, mask, sch, healing_timesteps(5), generator=torch.Generator().manual_seed(0))
    keep = ~mask[:, None].expand_as(z0)
    for x in seen:
        assert torch.equal(x[keep], z0[keep])
    assert not torch.equal(seen[1][~keep], seen[2][~keep])


def test_ddim_step_matches_monai_on_a_uniform_grid(tiny):
    _, sch = tiny
    monai = DDIMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                          beta_end=0.0195, clip_sample=False)
    monai.set_timesteps(50)  # ratio 20: 500 -> 480, and 0 -> clean
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(ddim_step(sch, eps, 500, 480, x), monai.step(eps, 500, x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddim_step(sch, eps, 0, -1, x), monai.step(eps, 0, x)[0], rtol=1e-5, atol=1e-6)


def test_ddpm_step_by_hand_and_per_image_generators(tiny):
    _, sch = tiny
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = 300
    b, ab = sch.betas[t], sch.alphas_cumprod[t]
    mean = (x - b / (1 - ab).sqrt() * eps) / (1 - b).sqrt()  # Ho et al. 2020 Alg. 2
    var = b * (1 - sch.alphas_cumprod[t - 1]) / (1 - ab)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    got = ddpm_step(sch, eps, t, x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, mean + var.sqrt() * z, rtol=1e-4, atol=1e-5)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    both = ddpm_step(sch, eps, t, x, gens)
    second = ddpm_step(sch, eps[1:], t, x[1:], torch.Generator().manual_seed(2))
    torch.testing.assert_close(both[1:], second)
    # q_sample is the forward process
    torch.testing.assert_close(q_sample(sch, x, t, z), ab.sqrt() * x + (1 - ab).sqrt() * z)
