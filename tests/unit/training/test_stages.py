"""Stage trainers (tiny nets, in-memory data) and the loaders of models/loading.py."""

import json

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.errors import ModelNotTrainedError
from ldm_ood.models.diffusion import latent_multiple
from ldm_ood.models.first_stage import build_first_stage, encode, encode_indices
from ldm_ood.models.loading import load_first_stage, load_ldm, load_transformer
from ldm_ood.runs import RunDir
from ldm_ood.training.distributed import DistContext
from ldm_ood.training.first_stage import FirstStageTask, fit_first_stage
from ldm_ood.training.ldm import fit_ldm, latent_scale_factor
from ldm_ood.training.loop import fit
from ldm_ood.training.metrics import read_metrics
from ldm_ood.training.reconstruction_metrics import ssim
from ldm_ood.training.transformer import fit_transformer


class Images(torch.utils.data.Dataset):
    def __init__(self, n, grid, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, *grid, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "case_id": f"case{i}"}


def _tiny2d(**optim):
    opt = {"max_epochs": 1, "preview_every": 100, **optim}
    return load_config(preset="tiny-2d", overrides={
        "data": {"grid": (24, 24)},
        "first_stage": {"optim": opt}, "ldm": {"optim": opt}, "transformer": {"optim": opt},
    })


@pytest.fixture(scope="module")
def trained_first_stage(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("run"))
    cfg = _tiny2d()
    torch.manual_seed(0)
    fit_first_stage(run, cfg, Images(4, (24, 24), 0), Images(2, (24, 24), 1))
    return run, cfg


def test_vqgan_3d_trains_with_all_losses_and_previews(tmp_path):
    run = RunDir(tmp_path)
    cfg = load_config(preset="tiny", overrides={"first_stage": {"optim": {"max_epochs": 1, "preview_every": 1}}})
    task = FirstStageTask(cfg, DistContext(), lpips_model=__import__("ldm_ood.models.perceptual", fromlist=["x"]).load_lpips())
    before = {k: v.clone() for k, v in task.disc.state_dict().items()}
    res = fit(task, Images(2, (16, 16, 16), 0), Images(2, (16, 16, 16), 1), cfg.first_stage.optim, run)
    row = read_metrics(run.metrics_path("first_stage"))[0]
    for k in ("recon", "vq", "perceptual", "spectral", "adv_g", "adv_d", "val_loss"):
        assert row[k] == row[k] and row[k] >= 0, k  # logged, finite
    assert any(not torch.equal(before[k], v) for k, v in task.disc.state_dict().items())  # D was trained
    assert (run.previews_dir("first_stage") / "epoch_0001.png").exists()
    # saved weights (best = only epoch) load bit-exactly into a fresh network
    loaded = load_first_stage(run)
    assert not loaded.training
    for k, v in task.vqvae.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert res.best_val_loss == pytest.approx(row["val_loss"])


def test_vqvae_2d_validation_loss_is_l1_plus_vq(trained_first_stage):
    run, cfg = trained_first_stage
    model = load_first_stage(run)
    x = Images(2, (24, 24), 1).x
    with torch.no_grad():
        x_hat, vq = model(x)
    expected = ((x - x_hat).abs().mean() + vq).item()
    row = read_metrics(run.metrics_path("first_stage"))[-1]
    assert row["val_loss"] == pytest.approx(expected, rel=1e-5)
    # the quality columns are those of the saved (only) epoch's model on the validation images
    mse = ((x.double() - x_hat.double()) ** 2).flatten(1).mean(1)
    assert row["val_psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    assert row["val_ssim"] == pytest.approx(float(ssim(x, x_hat).mean()), rel=1e-5, abs=1e-7)
    with torch.no_grad():
        idx = encode_indices(model, x)
    counts = torch.bincount(idx.flatten(), minlength=cfg.first_stage.num_embeddings)
    assert row["val_dead_codes"] == int((counts == 0).sum())
    assert 1 <= row["val_perplexity"] <= cfg.first_stage.num_embeddings - row["val_dead_codes"] + 1e-9
    assert set(json.loads(run.model_config_path("first_stage").read_text())) >= {"config", "spatial_dims"}


def test_ldm_uses_frozen_first_stage_and_stores_scale_factor(trained_first_stage, tmp_path):
    run, cfg = trained_first_stage
    fs = load_first_stage(run)
    codebook = {k: v.clone() for k, v in fs.state_dict().items()}
    train = Images(4, (24, 24), 0)
    fit_ldm(run, cfg, train, Images(2, (24, 24), 1), first_stage=fs)
    for k, v in fs.state_dict().items():  # EMA codebook untouched: first stage stayed in eval()
        assert torch.equal(codebook[k], v), k
    with torch.no_grad():
        z = encode(fs, train.x)
    assert z.shape == (4, cfg.first_stage.embedding_dim, 6, 6)
    ldm = load_ldm(run)
    assert ldm.scale_factor == pytest.approx(1.0 / z.std().item(), rel=1e-6)
    assert ldm.scale_factor == pytest.approx(latent_scale_factor(z))
    assert ldm.latent_multiple == latent_multiple(cfg.ldm) == 4 and ldm.latent_spatial_shape == (6, 6)
    assert not ldm.unet.training and ldm.ddpm_scheduler().num_train_timesteps == 1000
    meta = json.loads(run.model_config_path("ldm").read_text())
    assert meta["scale_factor"] == pytest.approx(ldm.scale_factor)
    # the padded latent (8x8) goes through the UNet
    zp = torch.nn.functional.pad(z * ldm.scale_factor, (0, 2, 0, 2))
    with torch.no_grad():
        assert ldm.unet(zp, timesteps=torch.tensor([10] * 4)).shape == zp.shape


def test_transformer_trains_on_ordered_tokens(trained_first_stage):
    run, cfg = trained_first_stage
    res = fit_transformer(run, cfg, Images(4, (24, 24), 0), Images(2, (24, 24), 1))
    transformer, ordering, saved = load_transformer(run)
    fs = load_first_stage(run)
    idx = encode_indices(fs, Images(2, (24, 24), 1).x)
    from ldm_ood.models.transformer import tokens_to_sequence

    seq = tokens_to_sequence(idx, ordering, cfg.first_stage.num_embeddings)
    with torch.no_grad():
        logits = transformer(seq[:, :-1])
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), seq[:, 1:]).item()
    assert ce == pytest.approx(res.best_val_loss, rel=1e-5)
    assert ordering.spatial_shape == (6, 6) and saved.transformer == cfg.transformer


def test_missing_models_name_path_and_command(tmp_path):
    for fn, cmd in ((load_first_stage, "first-stage"), (load_ldm, "ldm"), (load_transformer, "transformer")):
        with pytest.raises(ModelNotTrainedError, match=f"ldm-ood train {cmd} --run {tmp_path}") as err:
            fn(tmp_path)
        assert "model.safetensors" in str(err.value)


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    from ldm_ood.artifacts.checkpoint import load_weights, save_model
    from ldm_ood.models.diffusion import build_unet
    from ldm_ood.models.transformer import build_transformer

    cfg = load_config(preset="tiny")
    builders = {
        "vq": (lambda: build_first_stage(cfg.first_stage, 3), lambda m: m(torch.rand(1, 1, 16, 16, 16, generator=g))[0]),
        "unet": (lambda: build_unet(cfg.ldm, 3, 4), lambda m: m(torch.randn(1, 4, 4, 4, 4, generator=g), timesteps=torch.tensor([7]))),
        "ltm": (lambda: build_transformer(cfg.transformer, 17, 8), lambda m: m(torch.randint(0, 17, (1, 9), generator=g))),
    }
    for name, (build, run_model) in builders.items():
        torch.manual_seed(1)
        a = build().eval()
        save_model(tmp_path / name, a, {"name": name})
        torch.manual_seed(2)
        b = load_weights(build(), tmp_path / name).eval()
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), (name, k)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            out_a = run_model(a)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            out_b = run_model(b)
        assert torch.equal(out_a, out_b), name


def test_random_patch_is_a_seeded_crop_of_the_batch():
    cfg = load_config(preset="tiny", overrides={"first_stage": {"train_patch": (8, 8, 4), "perceptual_weight": 0.0}})
    task = FirstStageTask(cfg, DistContext())
    x = torch.arange(2 * 16 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16, 16)
    task.generator.manual_seed(3)
    p = task._random_patch(x)
    assert p.shape == (2, 1, 8, 8, 4)
    # the crop is a contiguous block of x at one location, the same for every item of the batch
    i, j, k = (int(v) for v in torch.nonzero(x[0, 0] == p[0, 0, 0, 0, 0])[0])
    assert torch.equal(p, x[:, :, i:i + 8, j:j + 8, k:k + 4])
    task.generator.manual_seed(3)
    assert torch.equal(task._random_patch(x), p)
