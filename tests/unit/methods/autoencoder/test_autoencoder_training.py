"""``ldm-ood train ae`` / ``train vae`` on tiny-2d slices: the loss goes down and the stage files are written."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ldm_ood.artifacts.integrity import file_sha256
from ldm_ood.cli import app
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.methods.autoencoder.model import load_autoencoder
from ldm_ood.runs import RunDir
from ldm_ood.training.api import train
from ldm_ood.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def _head(rng, shape=(16, 16)):
    """A CT-like slice in HU: an ellipse of soft tissue (40 HU, noisy) in air (-1000 HU)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a, b = rng.uniform(4.5, 7.0, 2)
    inside = ((yy - 7.5) / a) ** 2 + ((xx - 7.5) / b) ** 2 <= 1
    return (np.where(inside, 40.0, -1000.0) + rng.normal(0, 3, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    cases = [Case(f"{split}{i}", write_image(root / f"{split}{i}.nii.gz", _head(rng)), set="id", split=split)
             for split, n in (("train", 24), ("val", 6)) for i in range(n)]
    return write_manifest(root / "manifest.csv", cases)


def test_training_a_tiny_ae_for_two_epochs_lowers_the_val_loss_and_writes_the_stage(tmp_path, manifest):
    cfg_path = tmp_path / "over.yaml"
    cfg_path.write_text("ae: {optim: {lr: 3.0e-3, max_epochs: 2, patience: 2, preview_every: 1}}\n")
    result = train(tmp_path / "run", "ae", config_path=cfg_path, preset="tiny-2d", manifest=manifest)
    run = RunDir(tmp_path / "run")
    rows = read_metrics(run.metrics_path("ae"))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and result.epochs == 2
    assert rows[1]["val_loss"] < rows[0]["val_loss"]
    assert rows[1]["loss"] < rows[0]["loss"]
    assert result.best_val_loss == pytest.approx(rows[1]["val_loss"])
    for name in ("model.safetensors", "config.json", "DONE"):
        assert (run.stage_dir("ae") / name).is_file(), name
    record = json.loads(run.model_config_path("ae").read_text())
    assert record["stage"] == "ae" and record["spatial_dims"] == 2
    assert record["weights_sha256"] == file_sha256(run.model_path("ae"))
    assert json.loads(run.done_path("ae").read_text())["epochs"] == 2
    assert (run.previews_dir("ae") / "epoch_0002.png").is_file()
    # the saved (best = last) weights load back into the network that was trained
    loaded = load_autoencoder(run, "ae")
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    for k, v in load_file(str(run.model_path("ae"))).items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_the_vae_trains_with_a_finite_kl_term(tmp_path, manifest):
    cfg_path = tmp_path / "over.yaml"
    cfg_path.write_text("vae: {optim: {max_epochs: 1}}\n")
    train(tmp_path / "run", "vae", config_path=cfg_path, preset="tiny-2d", manifest=manifest)
    run = RunDir(tmp_path / "run")
    row = read_metrics(run.metrics_path("vae"))[0]
    assert row["kl"] > 0 and np.isfinite(row["val_loss"]) and row["val_loss"] > 0
    assert row["loss"] == pytest.approx(row["recon"] + row["kl"], rel=1e-5)  # kl_weight = 1
    assert run.is_trained("vae") and json.loads(run.model_config_path("vae").read_text())["stage"] == "vae"
    assert not run.stage_dir("ae").exists()


def test_the_cli_has_a_train_command_per_baseline():
    out = CliRunner().invoke(app, ["train", "--help"]).output
    assert " ae " in out and " vae " in out
