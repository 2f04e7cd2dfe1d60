"""Training never destroys a finished model; configurations never silently pick a preset (issue 12).

Each case is reproduced first: a finished tiny first stage, then a retrain that is killed (a
KeyboardInterrupt from the training step, as Ctrl-C or a kill would stop it), a swap interrupted
between its two renames, a ``--config`` without a preset, a first ``train`` that failed on its data.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ldm_ood.cli import app
from ldm_ood.config import ConfigError, load_config
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.errors import InputError
from ldm_ood.models.loading import load_first_stage
from ldm_ood.runs import RunDir
from ldm_ood.training import staging
from ldm_ood.training.api import train
from ldm_ood.training.first_stage import FirstStageTask
from ldm_ood.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

FINISHED = ("model.safetensors", "config.json", "DONE")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """4 train and 2 validation 16³ volumes and their manifest."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    cases = []
    for i in range(6):
        vol = np.kron(rng.uniform(-15, 100, (4, 4, 4)), np.ones((4, 4, 4))).astype(np.float32)
        cases.append(Case(f"c{i}", write_image(folder / f"c{i}.nii.gz", vol, np.eye(4)), set="id",
                          split="train" if i < 4 else "val"))
    return write_manifest(folder / "manifest.csv", cases)


def _config(path: Path, epochs: int = 1) -> Path:
    optim = {"max_epochs": epochs, "patience": 10, "preview_every": 100}
    path.write_text(yaml.safe_dump({"preset": "tiny", "first_stage": {"perceptual_weight": 0.0, "optim": optim}}))
    return path


def _finished(run: RunDir) -> dict[str, bytes]:
    return {name: (run.stage_dir("first_stage") / name).read_bytes() for name in FINISHED}


def _kill_in_epoch(monkeypatch, epoch: int) -> None:
    """The first training step of ``epoch`` raises KeyboardInterrupt (a kill mid-epoch)."""
    real = FirstStageTask.train_step

    def step(self, batch, e):
        if e == epoch:
            raise KeyboardInterrupt
        return real(self, batch, e)

    monkeypatch.setattr(FirstStageTask, "train_step", step)


@pytest.fixture
def trained(tmp_path, cohort) -> RunDir:
    """A run whose first stage finished (1 epoch)."""
    train(tmp_path / "run", "first-stage", config_path=_config(tmp_path / "one.yaml"), manifest=cohort)
    return RunDir(tmp_path / "run")


def _no_leftovers(run: RunDir) -> bool:
    return not run.staging_dir("first_stage").exists() and not run.retired_dir("first_stage").exists()


def test_a_retrain_killed_in_epoch_one_leaves_the_finished_model_untouched_and_usable(trained, monkeypatch, cohort):
    before = _finished(trained)
    _kill_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(trained.root, "first-stage", manifest=cohort)
    assert _finished(trained) == before  # model, its config.json and DONE: the same bytes
    assert [r["epoch"] for r in read_metrics(trained.metrics_path("first_stage"))] == [1]
    assert load_first_stage(trained).training is False  # still loadable for scoring
    staged = trained.staged()
    assert staged.stage_dir("first_stage").is_dir() and not staged.done_path("first_stage").exists()


def test_a_finished_retrain_replaces_the_old_model_at_the_end(trained, tmp_path, cohort):
    before = _finished(trained)
    res = train(trained.root, "first-stage", config_path=_config(tmp_path / "two.yaml", epochs=2), manifest=cohort)
    assert res.reason == "max_epochs" and res.epochs == 2 and res.model_path == trained.model_path("first_stage")
    after = _finished(trained)
    assert after["model.safetensors"] != before["model.safetensors"]
    assert '"epochs": 2' in after["DONE"].decode()
    assert [r["epoch"] for r in read_metrics(trained.metrics_path("first_stage"))] == [1, 2]
    assert _no_leftovers(trained)
    load_first_stage(trained)


def test_resume_continues_the_killed_retrain_not_the_finished_model(trained, tmp_path, cohort, monkeypatch):
    three = _config(tmp_path / "three.yaml", epochs=3)
    reference = RunDir(tmp_path / "reference")  # the same 3 epochs, uninterrupted
    train(reference.root, "first-stage", config_path=three, manifest=cohort)
    before = _finished(trained)
    _kill_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(trained.root, "first-stage", config_path=three, manifest=cohort)
    assert _finished(trained) == before
    assert [r["epoch"] for r in read_metrics(trained.staged().metrics_path("first_stage"))] == [1]
    monkeypatch.undo()
    res = train(trained.root, "first-stage", config_path=three, manifest=cohort, resume=True)
    assert res.reason == "max_epochs" and res.epochs == 3  # continued the retrain, not "already_done"
    got = read_metrics(trained.metrics_path("first_stage"))
    want = read_metrics(reference.metrics_path("first_stage"))
    assert [r["epoch"] for r in got] == [1, 2, 3]
    assert [r["val_loss"] for r in got] == [r["val_loss"] for r in want]
    assert trained.model_path("first_stage").read_bytes() == reference.model_path("first_stage").read_bytes()
    assert _no_leftovers(trained)


def test_a_crash_between_the_two_renames_is_finished_on_the_next_start(trained, tmp_path, cohort, monkeypatch):
    before = _finished(trained)
    real, calls = staging._move, []

    def move(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # after <stage> -> <stage>.old, before <stage>.staging -> <stage>
            raise OSError("killed between the renames")
        real(src, dst)

    monkeypatch.setattr(staging, "_move", move)
    with pytest.raises(OSError, match="between the renames"):
        train(trained.root, "first-stage", config_path=_config(tmp_path / "two.yaml", epochs=2), manifest=cohort)
    old, new = trained.retired_dir("first_stage"), trained.staging_dir("first_stage")
    assert not trained.stage_dir("first_stage").exists()
    assert {n: (old / n).read_bytes() for n in FINISHED} == before  # the old model, moved aside intact
    retrained = (new / "model.safetensors").read_bytes()
    monkeypatch.undo()
    res = train(trained.root, "first-stage", resume=True)
    assert res.reason == "already_done" and res.epochs == 2
    assert trained.model_path("first_stage").read_bytes() == retrained
    assert _no_leftovers(trained)


@pytest.mark.parametrize("state", ["old_only", "old_and_unfinished_staging", "old_and_new_in_place",
                                   "finished_staging_not_moved"])
def test_recover_finishes_or_rolls_back_each_interrupted_state(tmp_path, state):
    run = RunDir(tmp_path)
    live, new, old = run.stage_dir("ldm"), run.staging_dir("ldm"), run.retired_dir("ldm")
    for folder, text in ((old if state != "finished_staging_not_moved" else live, "old"), (new, "new")):
        folder.mkdir()
        (folder / "model.safetensors").write_text(text)
        (folder / "DONE").write_text("{}")
    if state == "old_only":
        new.rename(tmp_path / "elsewhere")
    if state == "old_and_unfinished_staging":
        (new / "DONE").unlink()
    if state == "old_and_new_in_place":
        new.rename(live)
    line = staging.recover(run, "ldm")
    expected = "old" if state in ("old_only", "old_and_unfinished_staging") else "new"
    assert (live / "model.safetensors").read_text() == expected and line.startswith("ldm: ")
    assert not old.exists()
    assert new.exists() == (state == "old_and_unfinished_staging")  # an unfinished retrain stays resumable
    assert staging.recover(run, "ldm") is None  # nothing left to repair


def test_a_config_without_a_preset_is_complete_or_an_error_naming_the_preset(tmp_path, cohort):
    partial = tmp_path / "partial.yaml"
    partial.write_text("ldm: {optim: {max_epochs: 3}}\n")
    with pytest.raises(ConfigError, match=r"partial\.yaml: names no preset.*--preset NAME.*`preset: NAME`"):
        load_config(partial)
    run = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match="names no preset"):
        train(run.root, "first-stage", config_path=partial, manifest=cohort)
    assert not run.config_path.exists()
    result = CliRunner().invoke(app, ["config", "--config", str(partial)])
    assert result.exit_code == 1 and "names no preset" in result.output  # printed cpu's values before
    complete = load_config(preset="tiny").model_dump(mode="json")
    del complete["preset"]
    (tmp_path / "complete.yaml").write_text(yaml.safe_dump(complete))
    cfg = load_config(tmp_path / "complete.yaml")
    assert cfg.preset == "custom" and cfg.data.grid == (16, 16, 16) and cfg.first_stage.channels == 8
    (tmp_path / "extends.yaml").write_text("extends: tiny\nldm: {optim: {max_epochs: 3}}\n")
    cfg = load_config(tmp_path / "extends.yaml")
    assert (cfg.preset, cfg.data.grid, cfg.ldm.optim.max_epochs) == ("tiny", (16, 16, 16), 3)
    named = _config(tmp_path / "named.yaml")  # `preset: tiny` in the file, no --preset
    printed = yaml.safe_load(CliRunner().invoke(app, ["config", "--config", str(named)]).output)
    assert printed["preset"] == "tiny" and printed["data"]["grid"] == [16, 16, 16]


def test_a_failed_first_train_does_not_block_a_corrected_retry(tmp_path, cohort):
    run = RunDir(tmp_path / "run")
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,path,split\nx,nope.nii.gz,train\n")
    with pytest.raises(InputError, match="does not exist"):
        train(run.root, "first-stage", preset="cpu", manifest=bad)
    assert run.load_config().preset == "cpu" and run.load_config().data.manifest is None  # bad data not kept
    res = train(run.root, "first-stage", config_path=_config(tmp_path / "one.yaml"), manifest=cohort)
    assert res.epochs == 1 and run.is_trained("first_stage")
    saved = run.load_config()
    assert saved.preset == "tiny" and saved.data.manifest == cohort.resolve() and saved.data.grid == (16, 16, 16)
    with pytest.raises(ConfigError, match="different configuration"):  # trained now: the preset is fixed
        train(run.root, "first-stage", preset="cpu", manifest=cohort)
    (tmp_path / "other.yaml").write_text("extends: cpu\n")
    with pytest.raises(ConfigError, match=r"other\.yaml \(extends\): preset 'cpu'.*different configuration"):
        train(run.root, "first-stage", config_path=tmp_path / "other.yaml", manifest=cohort)
    assert run.load_config() == saved
