"""The f-AnoGAN stage: both phases in one training, its files and metrics, the best model, resume between phases."""

import json

import pytest
import torch

from ldm_ood.artifacts.checkpoint import load_state
from ldm_ood.artifacts.integrity import file_sha256
from ldm_ood.artifacts.stage_meta import FanoganMeta
from ldm_ood.config import load_config
from ldm_ood.config.stages import stage_info
from ldm_ood.models.fanogan import build_fanogan, izi_f
from ldm_ood.models.loading import load_fanogan
from ldm_ood.runs import RunDir
from ldm_ood.training.fanogan import FanoganTask, fit_fanogan
from ldm_ood.training.loop import seeded
from ldm_ood.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (16, 16)
GAN_COLUMNS = ("critic", "wasserstein", "gp", "generator", "grad_norm_critic", "grad_norm_generator")
ENCODER_COLUMNS = ("izi_f", "residual", "feature", "grad_norm_encoder")


class Discs(torch.utils.data.Dataset):
    """Bright discs of random radius on a dark background, ``{"image": (1, 16, 16)}``."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        r = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2).sqrt()
        radius = 3 + 3 * torch.rand(n, 1, 1, generator=g)
        self.x = ((r < radius).float() * 0.7 + 0.05 * torch.rand(n, 16, 16, generator=g))[:, None]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "case_id": f"c{i}"}


def _config():
    return load_config(preset="tiny-2d", overrides={"fanogan": {
        "gan_epochs": 2, "encoder_epochs": 2, "encoder_lr": 1e-2,
        "optim": {"batch_size": 4, "patience": 5, "preview_every": 2, "seed": 1}}})


def _val_izi_f(model, ds, kappa):
    with torch.no_grad():
        return izi_f(model.eval(), ds.x).score(kappa).mean().item()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("fanogan"))
    cfg = _config()
    res = fit_fanogan(run, cfg, Discs(16, 0), Discs(6, 1))
    return run, cfg, res


def test_two_plus_two_epochs_write_the_stage_and_the_encoder_phase_lowers_the_izi_f_loss(trained):
    run, cfg, res = trained
    stage = run.stage_dir("fanogan")
    assert stage_info("fanogan").command == "fanogan" and stage == run.root / "fanogan"
    for name in ("model.safetensors", "config.json", "DONE", "state.pt", "metrics.csv"):
        assert (stage / name).is_file(), name
    meta = FanoganMeta.read(stage)
    assert meta.weights_sha256 == file_sha256(run.model_path("fanogan"))
    assert (meta.grid, meta.gan_epochs, meta.spatial_dims) == (GRID, 2, 2)
    done = json.loads(run.done_path("fanogan").read_text())
    assert (done["epochs"], done["reason"]) == (4, "max_epochs") and done["best_epoch"] in (3, 4)

    rows = read_metrics(run.metrics_path("fanogan"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for r in rows[:2]:  # GAN phase: its columns, none of the encoder's; loss = the critic loss
        assert all(r[k] == r[k] for k in GAN_COLUMNS) and all(r[k] != r[k] for k in ENCODER_COLUMNS)
        assert r["loss"] == pytest.approx(r["critic"]) and r["lr"] == cfg.fanogan.optim.lr
    for r in rows[2:]:
        assert all(r[k] == r[k] for k in ENCODER_COLUMNS) and all(r[k] != r[k] for k in GAN_COLUMNS)
        assert r["loss"] == pytest.approx(r["izi_f"]) and r["lr"] == cfg.fanogan.encoder_lr

    # the saved model is the best encoder epoch: its izi_f on the validation slices is the best val loss
    model = load_fanogan(run)
    val = Discs(6, 1)
    assert _val_izi_f(model, val, cfg.fanogan.kappa) == pytest.approx(res.best_val_loss, rel=1e-5)
    assert res.best_val_loss == pytest.approx(min(r["val_loss"] for r in rows[2:]))
    # ... and lower than with the encoder as it was before the encoder phase (G and D as trained)
    with seeded(cfg.fanogan.optim.seed):
        initial = build_fanogan(cfg.fanogan, GRID).encoder
    model.encoder.load_state_dict(initial.state_dict())
    assert res.best_val_loss < 0.9 * _val_izi_f(model, val, cfg.fanogan.kappa)


def test_a_resume_after_the_gan_phase_continues_with_the_encoder_phase(trained, tmp_path, monkeypatch):
    reference, cfg, _ = trained
    run = RunDir(tmp_path)

    def stop(self, x):
        raise KeyboardInterrupt  # the process dies in the first encoder epoch

    with monkeypatch.context() as patch:
        patch.setattr(FanoganTask, "_encoder_step", stop)
        with pytest.raises(KeyboardInterrupt):
            fit_fanogan(run, cfg, Discs(16, 0), Discs(6, 1))
    assert not run.model_path("fanogan").exists()  # no GAN-phase checkpoint was kept as the best model
    state = load_state(run.state_path("fanogan"))
    assert state["epoch"] == 2 and [r["epoch"] for r in read_metrics(run.metrics_path("fanogan"))] == [1, 2]

    # the GAN phase's validation loss is the critic's Wasserstein estimate E[D(x_val)] − E[D(G(z))]
    gan = build_fanogan(cfg.fanogan, GRID).eval()
    for name in ("generator", "critic"):
        getattr(gan, name).load_state_dict(state["modules"][name])
    gen = torch.Generator().manual_seed(cfg.fanogan.optim.seed + 999_983)  # the loop's validation seed
    val = Discs(6, 1).x
    with torch.no_grad():
        estimates = [gan.critic(b) - gan.critic(gan.generator(torch.randn(len(b), cfg.fanogan.latent_dim, generator=gen)))
                     for b in val.split(cfg.fanogan.optim.batch_size)]
    row = read_metrics(run.metrics_path("fanogan"))[1]
    assert row["val_loss"] == pytest.approx(torch.cat(estimates).mean().item(), rel=1e-5)

    res = fit_fanogan(run, cfg, Discs(16, 0), Discs(6, 1), resume=True)
    rows = read_metrics(run.metrics_path("fanogan"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(r["izi_f"] == r["izi_f"] for r in rows[2:])
    assert res.epochs == 4 and res.best_epoch in (3, 4)
    resumed, uninterrupted = load_fanogan(run).state_dict(), load_fanogan(reference).state_dict()
    for k, v in resumed.items():  # the same networks as the uninterrupted training, G and D as after epoch 2
        assert torch.equal(v, uninterrupted[k]), k
    for name in ("generator", "critic"):
        for k, v in state["modules"][name].items():
            assert torch.equal(resumed[f"{name}.{k}"], v), (name, k)


def test_presets_carry_the_section_and_paper_2d_has_schlegl_et_al_settings():
    from ldm_ood.config import PRESETS, build_config, preset_dict
    from ldm_ood.models.fanogan import levels_for

    for name in PRESETS:
        cfg = build_config(preset_dict(name))
        if name.endswith("-2d"):  # the networks fit every 2D preset grid (16² .. 64²)
            assert levels_for(cfg.data.grid) >= 2
    paper = build_config(preset_dict("paper-2d")).fanogan
    assert (paper.latent_dim, paper.channels, paper.n_critic, paper.gp_weight, paper.kappa) == (128, 64, 5, 10.0, 1.0)
    assert paper.betas == (0.0, 0.9) and (paper.optim.lr, paper.optim.batch_size) == (1e-4, 64)
    assert (paper.encoder_optimizer, paper.encoder_lr) == ("rmsprop", 5e-5)
    assert paper.optim.patience >= paper.encoder_epochs  # the reference code does not stop early


def test_a_run_without_the_stage_names_the_command_that_trains_it(tmp_path):
    from ldm_ood.errors import ModelNotTrainedError

    with pytest.raises(ModelNotTrainedError, match=f"ldm-ood train fanogan --run {tmp_path}"):
        load_fanogan(tmp_path)


def test_3d_runs_are_refused_before_training():
    from ldm_ood.config import ConfigError
    from ldm_ood.training.distributed import DistContext

    with pytest.raises(ConfigError, match="2D baseline"):
        FanoganTask(load_config(preset="tiny"), DistContext())
