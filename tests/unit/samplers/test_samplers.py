"""The samplers against MONAI's schedulers of the same name (one chain or image at a time)."""

import torch

from ldm_ood.config import load_config
from ldm_ood.models.diffusion import build_ddpm_scheduler, build_inference_scheduler
from ldm_ood.samplers.ddpm import ddpm_step
from ldm_ood.samplers.noise import make_noise, noised_chains, q_sample
from ldm_ood.samplers.plms import PLMSHistory

CFG = load_config(preset="tiny").ldm


def test_q_sample_and_noised_chains_are_monai_add_noise_and_start_zero_is_the_clean_latent():
    sch = build_ddpm_scheduler(CFG)
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    for t in (0, 1, 500, 999):
        ref = sch.add_noise(original_samples=z0, noise=eps, timesteps=torch.full((3,), t))
        torch.testing.assert_close(q_sample(sch, z0, t, eps), ref, rtol=1e-6, atol=1e-6)
    starts = torch.tensor([0, 300, 700])
    got = noised_chains(sch, z0, eps, starts)
    assert torch.equal(got[0], z0[0])
    torch.testing.assert_close(got[1:], sch.add_noise(original_samples=z0, noise=eps, timesteps=starts)[1:])


def test_plms_history_follows_monai_pndm_for_chains_started_at_different_steps():
    n_steps = 10
    grid = build_inference_scheduler(CFG, "plms", n_steps).timesteps.tolist()  # 900 ... 0, descending
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 2, 2, generator=g)
    eps_of = {t: torch.randn(2, 3, 2, 2, generator=g) for t in grid}  # a fixed "network" per timestep
    starts = [grid[0], grid[3]]  # chain 1 joins three steps later
    ours = PLMSHistory(build_inference_scheduler(CFG, "plms", n_steps), 2, (3, 2, 2))
    x = x0.clone()
    for t in grid:
        active = torch.tensor([k for k in range(2) if t <= starts[k]])
        if len(active):
            x[active] = ours.step(eps_of[t][active], t, x[active], active)
    for k in range(2):  # each chain alone through a fresh MONAI scheduler
        ref = build_inference_scheduler(CFG, "plms", n_steps)
        xk = x0[k : k + 1].clone()
        for t in grid:
            if t <= starts[k]:
                xk = ref.step(eps_of[t][k : k + 1], t, xk)[0]
        torch.testing.assert_close(x[k : k + 1], xk, rtol=1e-5, atol=1e-6)


def test_ddpm_step_with_per_image_generators_equals_one_image_at_a_time():
    sch = build_ddpm_scheduler(CFG)
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    got = ddpm_step(sch, eps, 500, x, [torch.Generator().manual_seed(s) for s in (5, 6)])
    for i, s in enumerate((5, 6)):
        ref = sch.step(eps[i : i + 1], 500, x[i : i + 1], generator=torch.Generator().manual_seed(s))[0]
        torch.testing.assert_close(got[i : i + 1], ref)


def test_make_noise_depends_only_on_each_scans_seed():
    a = make_noise((2, 3), 4, seeds=[7, 8])
    b = make_noise((2, 3), 4, seeds=[8])
    assert a.shape == (2, 4, 2, 3) and torch.equal(a[1], b[0])
