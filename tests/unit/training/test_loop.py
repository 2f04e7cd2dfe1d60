"""Generic loop: early stopping on validation loss, best checkpoint, metrics, resume, sampler."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from ldm_ood.artifacts.integrity import file_sha256
from ldm_ood.artifacts.stage_meta import LDMMeta
from ldm_ood.config import OptimConfig
from ldm_ood.runs import RunDir
from ldm_ood.training.distributed import DistContext, epoch_indices
from ldm_ood.training.loop import fit
from ldm_ood.training.metrics import read_metrics

TOY_META = LDMMeta(spatial_dims=1, config={}, scale_factor=1.0, latent_multiple=1, latent_spatial_shape=(4,), latent_channels=1)


class ScriptedTask:
    """A 1-parameter 'model' whose weight equals the epoch just trained; scripted validation losses."""

    stage = "ldm"
    loss_names = ("loss",)

    def __init__(self, val_losses):
        self.net = torch.nn.Linear(1, 1, bias=False)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.generator = torch.Generator()
        self.val_losses = val_losses
        self.epoch = 0
        self.batches = 0
        self.noise = []
        self.bf16 = False

    def use_bf16(self, flag):
        self.bf16 = flag

    def probe_loss(self, batch):
        return self.net(batch["x"][:, None]).square().mean()

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"net": self.opt}

    def model(self):
        return self.net

    def model_config(self):
        return TOY_META

    def train_step(self, batch, epoch):
        self.epoch = epoch
        self.batches += 1
        with torch.no_grad():
            self.net.weight.fill_(float(epoch))
        self.noise.append(torch.rand(1, generator=self.generator).item())
        return {"loss": float(batch["x"].mean())}

    def val_step(self, batch, generator):
        return self.val_losses[self.epoch - 1] * len(batch["x"]), len(batch["x"])

    def preview(self, batch, path):
        path.write_bytes(b"png")


def _ds(n):
    return [{"x": torch.tensor([float(i)])} for i in range(n)]


def _optim(**kw):
    base = dict(lr=0.1, batch_size=2, max_epochs=10, patience=2, val_every=1, preview_every=3, seed=3, precision="fp32")
    return OptimConfig(**{**base, **kw})


def test_early_stopping_keeps_best_validation_model(tmp_path):
    run = RunDir(tmp_path)
    task = ScriptedTask([1.0, 0.5, 0.7, 0.6, 0.4])
    res = fit(task, _ds(5), _ds(3), _optim(), run)
    # best at epoch 2; epochs 3, 4 do not improve -> patience 2 reached after epoch 4
    assert (res.epochs, res.best_epoch, res.reason) == (4, 2, "early_stopping")
    assert res.best_val_loss == pytest.approx(0.5)
    assert load_file(str(run.model_path("ldm")))["weight"].item() == 2.0  # weights of the best epoch
    rows = read_metrics(run.metrics_path("ldm"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["val_loss"] for r in rows] == pytest.approx([1.0, 0.5, 0.7, 0.6])
    assert rows[0]["loss"] == pytest.approx((0 + 1 + 2 + 3 + 4) / 5)  # sample-weighted mean over the epoch
    assert list(rows[0]) == ["epoch", "loss", "val_loss", "seconds", "lr", "bf16"] and rows[0]["lr"] == 0.1
    assert rows[0]["bf16"] == 0.0
    done = json.loads((run.stage_dir("ldm") / "DONE").read_text())
    precision = done.pop("precision")
    assert done == {"reason": "early_stopping", "epochs": 4, "best_val_loss": 0.5, "best_epoch": 2}
    assert precision["precision"] == "fp32" and precision["requested"] == "fp32"
    assert json.loads((run.stage_dir("ldm") / "precision.json").read_text()) == precision
    assert (run.previews_dir("ldm") / "epoch_0003.png").exists()
    sha = file_sha256(run.model_path("ldm"))  # the record carries the hash of the weights beside it
    assert LDMMeta.read(run.stage_dir("ldm")) == dataclasses.replace(TOY_META, weights_sha256=sha)


def test_val_every_and_samples_per_epoch(tmp_path):
    task = ScriptedTask([9.0] * 6)
    res = fit(task, _ds(10), _ds(2), _optim(max_epochs=6, val_every=3, patience=100, samples_per_epoch=4), RunDir(tmp_path))
    rows = read_metrics(RunDir(tmp_path).metrics_path("ldm"))
    assert res.reason == "max_epochs" and res.epochs == 6
    assert [r["val_loss"] == 9.0 for r in rows] == [False, False, True, False, False, True]
    assert task.batches == 6 * 2  # 4 samples per epoch, batch size 2


def test_resume_continues_after_last_epoch_without_duplicates(tmp_path):
    run = RunDir(tmp_path)
    full = ScriptedTask([1.0 / e for e in range(1, 7)])
    fit(full, _ds(4), _ds(2), _optim(max_epochs=6), RunDir(tmp_path / "full"))

    first = ScriptedTask(full.val_losses)
    fit(first, _ds(4), _ds(2), _optim(max_epochs=3), run)
    # simulate a crash after metrics were appended for epoch 4 but before state.pt was saved
    with run.metrics_path("ldm").open("a") as fh:
        fh.write("4,99,99,1,0.1\n")
    (run.stage_dir("ldm") / "DONE").unlink()
    second = ScriptedTask(full.val_losses)
    res = fit(second, _ds(4), _ds(2), _optim(max_epochs=6), run, resume=True)
    assert res.epochs == 6 and second.batches == 3 * 2
    rows = read_metrics(run.metrics_path("ldm"))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[3]["loss"] != 99
    # same noise draws as the uninterrupted run (generator re-seeded per epoch)
    assert first.noise + second.noise == full.noise
    # already finished: resume is a no-op
    again = fit(ScriptedTask(full.val_losses), _ds(4), _ds(2), _optim(max_epochs=6), run, resume=True)
    assert again.reason == "already_done" and again.epochs == 6


def test_fresh_start_clears_previous_stage(tmp_path):
    run = RunDir(tmp_path)
    fit(ScriptedTask([1.0, 2.0]), _ds(2), _ds(2), _optim(max_epochs=2), run)
    fit(ScriptedTask([3.0]), _ds(2), _ds(2), _optim(max_epochs=1), run)
    assert [r["epoch"] for r in read_metrics(run.metrics_path("ldm"))] == [1]


def test_epoch_indices_shard_cap_and_determinism():
    a = epoch_indices(10, epoch=1, seed=0)
    assert sorted(a) == list(range(10)) and a == epoch_indices(10, 1, 0) and a != epoch_indices(10, 2, 0)
    shards = [epoch_indices(7, 1, 0, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4  # padded to a multiple of the world size
    assert set(shards[0]) | set(shards[1]) == set(range(7))
    capped = [epoch_indices(10, 1, 0, cap=5, rank=r, world_size=2) for r in range(2)]
    assert sum(map(len, capped)) == 6 and len(set(capped[0] + capped[1])) == 5
    assert DistContext().is_main and not DistContext().distributed


class WarmupTask(ScriptedTask):
    """Logs an ``extra`` term only from epoch 2 on (like the adversarial terms after warm-up)."""

    loss_names = ("loss", "extra")

    def train_step(self, batch, epoch):
        out = super().train_step(batch, epoch)
        return {**out, "extra": 2.0 * epoch} if epoch >= 2 else out


def test_a_term_not_computed_in_an_epoch_is_blank_not_nan(tmp_path):
    run = RunDir(tmp_path)
    fit(WarmupTask([1.0, 0.9, 0.8]), _ds(4), _ds(2), _optim(max_epochs=3, patience=5), run)
    lines = run.metrics_path("ldm").read_text().splitlines()
    header = lines[0].split(",")
    extra = [line.split(",")[header.index("extra")] for line in lines[1:]]
    assert extra == ["", "4.0", "6.0"]


def test_epochs_before_the_first_selected_epoch_are_validated_but_never_best_nor_counted_for_early_stopping(tmp_path):
    run = RunDir(tmp_path)
    task = ScriptedTask([0.1, 0.2, 0.3, 5.0, 4.0, 4.5, 4.6, 1.0])  # a first phase (epochs 1-3), then a second
    task.first_selected_epoch = 4
    res = fit(task, _ds(4), _ds(2), _optim(max_epochs=8, patience=2), run)
    # counted from epoch 1, epoch 1 (0.1) would be best and patience would stop training after epoch 3
    assert (res.epochs, res.best_epoch, res.best_val_loss, res.reason) == (7, 5, 4.0, "early_stopping")
    assert load_file(str(run.model_path("ldm")))["weight"].item() == 5.0
    assert [r["val_loss"] for r in read_metrics(run.metrics_path("ldm"))] == pytest.approx([0.1, 0.2, 0.3, 5.0, 4.0, 4.5, 4.6])
