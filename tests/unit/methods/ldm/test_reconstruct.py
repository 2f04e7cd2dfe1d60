"""Multi-start reconstructions: PLMS per-chain history vs MONAI, batched == sequential, no shared history."""

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.methods.ldm.reconstruct import (
    chain_starts,
    decode_chains,
    default_t_values,
    denoise_latents,
    inference_grid,
    reconstruct,
    snap_to_grid,
)
from ldm_ood.models.diffusion import CallCounter, build_inference_scheduler, build_unet
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.samplers.noise import make_noise
from ldm_ood.samplers.plms import PLMSHistory

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets
CFG = load_config(preset="tiny")


def _unet(seed=0):
    torch.manual_seed(seed)
    unet = build_unet(CFG.ldm, spatial_dims=3, in_channels=4).eval()
    # random init has a zero output conv in MONAI: perturb so eps actually depends on the input
    with torch.no_grad():
        for p in unet.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return unet


def _sched(kind="plms", steps=10):
    return build_inference_scheduler(CFG.ldm, kind, steps)


def test_default_t_values_match_paper_and_reference_code():
    t = default_t_values(50, 1000)
    assert t == tuple(range(10, 1000, 20))  # reference: reversed(100-step grid)[1::2]
    assert default_t_values(4, 1000) == (125, 375, 625, 875)
    grid = inference_grid(_sched("plms", 100))
    assert grid[0] == 990 and grid[-1] == 0 and len(grid) == 100
    assert snap_to_grid(t, grid) == t  # on the paper's grid every t is a grid timestep
    g10 = inference_grid(_sched("plms", 10))
    assert snap_to_grid((125, 375, 999, 0, 50), g10) == (100, 300, 900, 0, 0)
    assert chain_starts((125, 375), (250, 300), grid=g10) == (100, 200, 300)


@pytest.mark.parametrize("start_idx", [0, 1, 2, 5, 9])
def test_plms_history_matches_monai_step_single_chain(start_idx):
    sch = _sched("plms", 10)
    grid = inference_grid(sch)
    t0 = int(grid[::-1][start_idx])
    g = torch.Generator().manual_seed(start_idx)
    x_ref = torch.randn(1, 4, 4, 4, 4, generator=g)
    x = x_ref.clone()
    hist = PLMSHistory(sch, 1, (4, 4, 4, 4))
    ref = _sched("plms", 10)
    for s in grid[grid <= t0]:
        eps = torch.randn(1, 4, 4, 4, 4, generator=g)
        x_ref, _ = ref.step(eps, int(s), x_ref)
        x = hist.step(eps, int(s), x, torch.tensor([0]))
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-6)
    assert int(hist.counter[0]) == ref.counter


def test_plms_history_vectorised_over_chains_equals_separate_schedulers():
    sch = _sched("plms", 10)
    grid = inference_grid(sch)
    starts = [900, 500, 100, 300]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 4, 4, 4, generator=g)
    refs = [_sched("plms", 10) for _ in starts]
    xs = [x[i : i + 1].clone() for i in range(4)]
    hist = PLMSHistory(sch, 4, (2, 4, 4, 4))
    for s in grid:
        eps = torch.randn(4, 2, 4, 4, 4, generator=g)
        active = torch.tensor([i for i, t0 in enumerate(starts) if t0 >= s])
        if active.numel() == 0:
            continue
        x[active] = hist.step(eps[active], int(s), x[active], active)
        for i in active.tolist():
            xs[i], _ = refs[i].step(eps[i : i + 1], int(s), xs[i])
    torch.testing.assert_close(x, torch.cat(xs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["plms", "ddim"])
def test_batched_equals_per_chain_sequential_fp32(kind):
    unet, sch = _unet(), _sched(kind, 10)
    grid = inference_grid(sch)
    starts = chain_starts(default_t_values(4), (250, 500), grid=grid)  # 100, 200, 300, 500, 600, 800 (PLMS)
    z0 = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    noise = make_noise((4, 4, 4, 4), len(starts), seeds=[11, 12])
    cb, cs = CallCounter(), CallCounter()
    batched = denoise_latents(unet, sch, z0, starts, noise, "batched", counter=cb)
    seq = denoise_latents(unet, sch, z0, starts, noise, "sequential", counter=cs)
    # the UNet's float rounding depends on the batch's size; DDIM's x̂0 divides it by sqrt(ᾱ_999) ≈ 0.02
    torch.testing.assert_close(batched, seq, rtol=1e-5, atol=1e-5 if kind == "plms" else 5e-5)
    # one batched UNet call per grid step <= the highest start; sequential: one per chain-step
    n_steps = [int((grid <= t0).sum()) for t0 in starts]
    assert cb.calls == max(n_steps)
    assert cs.calls == sum(n_steps) and cb.evals == cs.evals == 2 * sum(n_steps)
    assert not torch.allclose(batched[:, 0], z0)  # something happened


def test_batched_bf16_close_to_sequential_fp32():
    """bf16 autocast on the UNet only: relative L2 error of the latents below 5 % (stated tolerance)."""
    unet, sch = _unet(), _sched("plms", 10)
    starts = (100, 400, 800)
    z0 = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    noise = make_noise((4, 4, 4, 4), 3, seeds=[5])
    ref = denoise_latents(unet, sch, z0, starts, noise, "sequential", bf16=False)
    fast = denoise_latents(unet, sch, z0, starts, noise, "batched", bf16=True)
    rel = (fast - ref).norm() / ref.norm()
    assert rel < 0.05


def test_reference_mode_leaks_history_and_correct_mode_is_order_independent():
    unet, sch = _unet(), _sched("plms", 10)
    starts = (200, 500, 800)
    z0 = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    noise = make_noise((4, 4, 4, 4), 3, seeds=[9])
    leaky = denoise_latents(unet, sch, z0, starts, noise, "reference")
    fresh = denoise_latents(unet, sch, z0, starts, noise, "sequential")
    batched = denoise_latents(unet, sch, z0, starts, noise, "batched")
    # the first (lowest) chain starts from a clean scheduler in both; later chains differ
    torch.testing.assert_close(leaky[:, 0], fresh[:, 0], rtol=0, atol=0)
    assert (leaky[:, 1:] - fresh[:, 1:]).abs().max() > 1e-3
    # correct modes: permuting the chains permutes the results (no dependence on chain order)
    perm = [2, 0, 1]
    starts_p = tuple(starts[i] for i in perm)
    fresh_p = denoise_latents(unet, sch, z0, starts_p, noise[:, perm], "sequential")
    batched_p = denoise_latents(unet, sch, z0, starts_p, noise[:, perm], "batched")
    torch.testing.assert_close(fresh_p, fresh[:, perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(batched_p, batched[:, perm], rtol=1e-5, atol=1e-5)
    # and the scheduler passed in was not mutated
    assert sch.counter == 0 and sch.ets == []


def test_noise_per_scan_independent_of_batch():
    a = make_noise((2, 3), 4, seeds=[7, 8])
    b = make_noise((2, 3), 4, seeds=[8])
    torch.testing.assert_close(a[1], b[0])
    assert not torch.allclose(a[0, 0], a[0, 1])  # per-chain noise


def test_reconstruct_encodes_once_pads_and_start_zero_is_identity():
    torch.manual_seed(0)
    fs = build_first_stage(CFG.first_stage, spatial_dims=3).eval()
    unet, sch = _unet(), _sched("plms", 10)
    x = torch.rand(2, 1, 16, 16, 16)
    calls = {"n": 0}
    orig = fs.encode

    def counting(inp):
        calls["n"] += 1
        return orig(inp)

    fs.encode = counting
    rec = reconstruct(fs, unet, sch, x, starts=(0, 300, 600), seeds=[1, 2], scale_factor=0.5, multiple=4)
    assert calls["n"] == 1
    assert rec.latents.shape == (2, 3, 4, 4, 4, 4)
    torch.testing.assert_close(rec.latents[:, 0], rec.z)  # t = 0: no noise, no steps
    assert rec.calls.calls == int((inference_grid(sch) <= 600).sum())
    imgs = torch.cat([im for _, im in decode_chains(fs, rec.latents.flatten(0, 1), requantize=True, bf16=False, batch=4)])
    assert imgs.shape == (6, 1, 16, 16, 16)
    # decoded t = 0 chain equals the first stage's own reconstruction
    torch.testing.assert_close(imgs[0:1], fs.decode_stage_2_outputs(rec.z[0:1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "one_step"])
def test_the_score_sampler_setting_selects_dpm_solver_or_the_single_step_estimate(sampler):
    from ldm_ood.methods.ldm.pipeline import OODScorer, ScoringModels
    from ldm_ood.methods.ldm.similarity import mse

    torch.manual_seed(0)
    fs = build_first_stage(CFG.first_stage, spatial_dims=3).eval()
    models = ScoringModels(fs, _unet(), 1.0, 4, CFG.ldm, 3)
    cfg = CFG.score.model_copy(update={"sampler": sampler, "num_t_values": 4, "map_t_values": (250,)})
    scorer = OODScorer(models, cfg, similarity={"mse": mse}, bf16=False)
    x = torch.rand(1, 1, 16, 16, 16)
    met = scorer.measure(x, seeds=[3])
    assert scorer.settings["sampler"] == sampler and met.values["mse"].shape == (1, 4)
    grid = inference_grid(scorer.scheduler)
    if sampler == "one_step":  # every t as asked (125, 250, 375, 625, 875), one UNet call per start
        assert scorer.starts == (125, 250, 375, 625, 875) and scorer.calls.calls == 5
    else:  # DDIM's grid (999, 888, ..., 0); one batched call per grid step below the highest start
        assert scorer.starts == snap_to_grid((125, 250, 375, 625, 875), grid)
        assert scorer.calls.calls == int((grid <= max(scorer.starts)).sum())
    z = reconstruct(fs, models.unet, scorer.scheduler, x, scorer.starts, [3], multiple=4, sampler=sampler)
    ref = denoise_latents(models.unet, scorer.scheduler, z.z, scorer.starts,  # a 4³ latent: no padding
                          make_noise((4, 4, 4, 4), len(scorer.starts), [3]), "sequential", sampler=sampler)
    torch.testing.assert_close(z.latents, ref, rtol=1e-5, atol=1e-5)  # batched chains == one start at a time


def test_ddim_steps_to_the_next_timestep_of_its_own_grid():
    """10 DDIM steps: the grid is 999, 888, ..., 0 and each step lands on the next grid timestep.

    Hand chain: z_t -> x̂0 = (z_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t) -> sqrt(ᾱ_next) x̂0 + sqrt(1-ᾱ_next) ε
    (ᾱ after the last step = 1). MONAI's own step would go 999 -> 899, off its grid.
    """
    unet, sch = _unet(), _sched("ddim", 10)
    grid = inference_grid(sch)
    assert list(grid[:3]) == [999, 888, 777] and grid[-1] == 0
    z0 = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    noise = make_noise((4, 4, 4, 4), 1, seeds=[7])
    start = int(grid[1])
    out = denoise_latents(unet, sch, z0, (start,), noise, "batched")[:, 0]
    seq = denoise_latents(unet, sch, z0, (start,), noise, "sequential")[:, 0]
    ab = sch.alphas_cumprod.float()
    x = ab[start].sqrt() * z0 + (1 - ab[start]).sqrt() * noise[:, 0]
    chain = [int(t) for t in grid if t <= start]
    for k, t in enumerate(chain):
        with torch.no_grad():
            eps = unet(x, timesteps=torch.full((1,), t, dtype=torch.long))
        nxt = ab[chain[k + 1]] if k + 1 < len(chain) else torch.tensor(1.0)
        x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        x = nxt.sqrt() * x0 + (1 - nxt).sqrt() * eps
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seq, x, rtol=1e-5, atol=1e-5)
