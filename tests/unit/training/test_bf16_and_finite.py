"""bf16 training that stays finite, the non-finite guard, gradient clipping and the convolution guard.

The first-stage and LDM trainings below are the ones that went NaN under bf16 on AVX-512-bf16 CPUs
without AMX (the first stage at step 1: the discriminator's last convolution; the LDM's deepest
UNet level): forced to bf16 they must now end finite and close to fp32.
"""

import math

import numpy as np
import pytest
import torch

from ldm_ood.artifacts.checkpoint import load_state
from ldm_ood.config import load_config
from ldm_ood.errors import NonFiniteTrainingError, NonFiniteValue
from ldm_ood.precision import guard_small_convolutions, kernel_wider_than_input
from ldm_ood.runs import RunDir
from ldm_ood.training import losses
from ldm_ood.training.distributed import DistContext
from ldm_ood.training.finite import optimizer_step
from ldm_ood.training.first_stage import FirstStageTask, fit_first_stage
from ldm_ood.training.ldm import LDMTask
from ldm_ood.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.x = [torch.tensor(np.kron(rng.uniform(0, 1, (4, 4, 4)), np.ones((4, 4, 4))), dtype=torch.float32)[None]
                  for _ in range(n)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i]}


def _tiny(precision: str, **optim):
    return load_config(preset="tiny", overrides={"first_stage": {
        "perceptual_weight": 0.0, "optim": {"batch_size": 1, "precision": precision, **optim}}})


def _steps(task, batches, epoch=1):
    task.generator.manual_seed(0)
    return [task.train_step(b, epoch) for b in batches]


# --------------------------------------------------------------------------- convolution guard


@pytest.mark.parametrize("conv, shape", [
    (torch.nn.Conv3d(32, 16, 3, 1, 1), (2, 32, 2, 2, 2)),  # 3x3x3 kernel on a 2x2x2 map (UNet's deepest level)
    (torch.nn.Conv3d(32, 1, 4, 1, 1), (2, 32, 3, 3, 3)),  # the patch discriminator's last layer
    (torch.nn.ConvTranspose3d(32, 16, 4, 1, 1), (2, 32, 2, 2, 2)),
    (torch.nn.Conv2d(32, 16, 3, 2, 1), (2, 32, 1, 1)),
])
def test_guarded_convolution_weight_gradient_matches_fp32_on_maps_smaller_than_the_kernel(conv, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    ref = torch.autograd.grad(conv(x).square().mean(), conv.weight)[0]
    guard_small_convolutions(conv)
    assert type(conv).__name__.startswith("Bf16Safe")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.float32  # ran in fp32: the kernel is wider than the input
    got = torch.autograd.grad(y.float().square().mean(), conv.weight)[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_guard_keeps_bf16_where_the_kernel_fits_and_leaves_values_and_state_dict_unchanged():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 8, 3, 1, 1)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    x = torch.randn(1, 8, 6, 6, 6)
    ref = conv(x)
    guard_small_convolutions(conv)
    assert conv.state_dict().keys() == before.keys()
    torch.testing.assert_close(conv(x), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    assert kernel_wider_than_input(torch.zeros(1, 1, 2, 8, 8), (3, 3, 3))
    assert not kernel_wider_than_input(torch.zeros(1, 1, 3, 3, 3), (3, 3, 3))


# --------------------------------------------------------------------------- bf16 training stays finite


def test_tiny_first_stage_forced_to_bf16_stays_finite_and_follows_fp32():
    ds = _Images(4, 0)
    batches = [{"image": ds[i % 4]["image"][None]} for i in range(12)]  # NaN from step 1 before the fix
    runs = {}
    for precision in ("fp32", "bf16"):
        task = FirstStageTask(_tiny(precision), DistContext(), None)
        task.use_bf16(precision == "bf16")
        runs[precision] = (_steps(task, batches, epoch=1), task)
    for out in runs["bf16"][0]:
        assert all(math.isfinite(v) for v in out.values()), out
    assert all(torch.isfinite(p).all() for m in runs["bf16"][1].modules().values() for p in m.parameters())
    # same weights, data and noise: the bf16 losses follow the fp32 ones
    for a, b in zip(runs["bf16"][0], runs["fp32"][0]):
        assert a["recon"] == pytest.approx(b["recon"], rel=0.05)


def test_tiny_ldm_forced_to_bf16_stays_finite():
    cfg = load_config(preset="tiny", overrides={"ldm": {"optim": {"precision": "bf16"}}})
    fs = FirstStageTask(cfg, DistContext(), None).vqvae.eval()
    task = LDMTask(cfg, fs, 1.0, (4, 4, 4), DistContext())  # UNet levels 4, 2, 1: kernels wider than the maps
    task.use_bf16(True)
    z = torch.randn(2, cfg.first_stage.embedding_dim, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    outs = _steps(task, [{"latent": z}] * 30)
    assert all(math.isfinite(o["loss"]) and math.isfinite(o["grad_norm"]) for o in outs)
    assert all(torch.isfinite(p).all() for p in task.unet.parameters())


# --------------------------------------------------------------------------- non-finite guard


def test_optimizer_step_clips_to_the_norm_and_returns_the_norm_before_clipping():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=1.0)
    loss = (w * torch.tensor([3.0, 4.0, 0.0, 0.0])).sum()  # gradient (3, 4, 0, 0), norm 5
    norm = optimizer_step(loss, opt, [w], clip_norm=1.0)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(w.detach(), torch.tensor([-0.6, -0.8, 0.0, 0.0]))  # step of the clipped gradient


def test_optimizer_step_refuses_a_non_finite_gradient_without_stepping_and_names_the_term():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=1.0)
    loss = (w * torch.tensor([1.0, math.inf])).sum() * 0 + w.sum() * torch.tensor(math.nan)
    with pytest.raises(NonFiniteValue) as err:
        optimizer_step(loss, opt, [w], terms={"recon": 0.1, "spectral": math.nan})
    assert err.value.term == "spectral"
    torch.testing.assert_close(w.detach(), torch.ones(2))  # unchanged
    assert w.grad is None


def test_nan_in_one_loss_term_stops_training_names_it_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    cfg = _tiny("fp32", max_epochs=4, patience=10, preview_every=100)
    train, val = _Images(2, 0), _Images(1, 1)
    real_spectral = losses.spectral_loss
    calls = {"n": 0}

    def spectral_goes_nan(x, x_hat, spatial_dims):  # NaN from the first step of epoch 2 (2 steps per epoch)
        calls["n"] += 1
        value = real_spectral(x, x_hat, spatial_dims)
        return value * math.nan if calls["n"] > 2 else value

    monkeypatch.setattr(losses, "spectral_loss", spectral_goes_nan)
    with pytest.raises(NonFiniteTrainingError) as err:
        fit_first_stage(run, cfg, train, val)
    e = err.value
    assert (e.stage, e.epoch, e.step, e.term) == ("first_stage", 2, 1, "spectral")
    assert "first_stage" in str(e) and "epoch 2, step 1" in str(e) and "spectral" in str(e)
    assert not (run.stage_dir("first_stage") / "DONE").exists()
    state = load_state(run.state_path("first_stage"))
    assert state["epoch"] == 1 and math.isfinite(state["best_val_loss"])
    assert all(torch.isfinite(v).all() for v in state["modules"]["vqvae"].values() if v.is_floating_point())
    from ldm_ood.models.loading import load_first_stage

    assert all(torch.isfinite(p).all() for p in load_first_stage(run).parameters())  # the best model loads
    rows = read_metrics(run.metrics_path("first_stage"))
    assert [r["epoch"] for r in rows] == [1.0]

    monkeypatch.setattr(losses, "spectral_loss", real_spectral)  # the cause fixed: resume continues
    res = fit_first_stage(run, cfg, train, val, resume=True)
    assert res.epochs == 4 and (run.stage_dir("first_stage") / "DONE").exists()
    assert [r["epoch"] for r in read_metrics(run.metrics_path("first_stage"))] == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("stage, loss_name", [("ldm", "diffusion_loss"), ("transformer", "next_token_loss")])
def test_nan_loss_stops_ldm_and_ltm_training_at_the_step_and_keeps_epoch_one(tmp_path, monkeypatch, stage, loss_name):
    from ldm_ood.models.first_stage import build_first_stage
    from ldm_ood.training.ldm import fit_ldm
    from ldm_ood.training.transformer import fit_transformer

    run = RunDir(tmp_path / "run")
    opt = {"max_epochs": 3, "patience": 10, "preview_every": 100, "batch_size": 1}
    cfg = load_config(preset="tiny", overrides={"ldm": {"optim": opt}, "transformer": {"optim": opt}})
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, 3).eval()
    real = getattr(losses, loss_name)
    calls = {"n": 0}

    def goes_nan(*args):  # 2 training steps per epoch + 1 validation: NaN at epoch 2, step 2
        calls["n"] += 1
        value = real(*args)
        return value * math.nan if calls["n"] == 5 else value

    monkeypatch.setattr(losses, loss_name, goes_nan)
    fit = fit_ldm if stage == "ldm" else fit_transformer
    with pytest.raises(NonFiniteTrainingError) as err:
        fit(run, cfg, _Images(2, 0), _Images(1, 1), first_stage=fs)
    assert (err.value.stage, err.value.epoch, err.value.step, err.value.term) == (stage, 2, 2, "loss")
    assert load_state(run.state_path(stage))["epoch"] == 1
    assert not (run.stage_dir(stage) / "DONE").exists()
