"""``resolve_config``: a YAML override changes exactly the fields it names on an existing run, keeps its
preset, is saved back, and names the finished stages / calibrations made with an old value."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ldm_ood.cli import app
from ldm_ood.config import ConfigError, load_config
from ldm_ood.runs import RunDir
from ldm_ood.training.api import resolve_config


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _without(dump: dict, *keys: str) -> dict:
    """``dump`` minus the nested field ``keys`` (e.g. "ldm", "optim", "max_epochs")."""
    out = yaml.safe_load(yaml.safe_dump(dump))  # deep copy
    node = out
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]
    return out


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.save_config(load_config(preset="tiny"))
    return run


@pytest.fixture
def over(tmp_path) -> Path:
    """Changes the tiny preset's ``ldm.optim.max_epochs`` (2)."""
    return _yaml(tmp_path / "over.yaml", {"ldm": {"optim": {"max_epochs": 7}}})


def _finish(run: RunDir, *stages: str) -> None:
    for stage in stages:
        run.done_path(stage).parent.mkdir(parents=True, exist_ok=True)
        run.done_path(stage).write_text("{}")


@pytest.mark.parametrize("epochs", [2, 7])  # 2: the tiny preset's own value, 7: a change
def test_override_changes_only_the_named_field_and_is_saved(run, tmp_path, epochs):
    saved = run.load_config()
    over = _yaml(tmp_path / "over.yaml", {"ldm": {"optim": {"max_epochs": epochs}}})
    config, warnings = resolve_config(run, over, None, "ldm")
    assert config.ldm.optim.max_epochs == epochs
    assert config.preset == "tiny" and config.ldm.optim.lr == saved.ldm.optim.lr == 1e-3
    field = ("ldm", "optim", "max_epochs")
    assert _without(config.model_dump(mode="json"), *field) == _without(saved.model_dump(mode="json"), *field)
    assert warnings == []  # nothing finished yet
    assert run.load_config() == config  # saved back
    assert not run.config_path.with_name("config.yaml.tmp").exists()
    again, warnings = resolve_config(run, over, None, "ldm")  # idempotent
    assert again == config and warnings == []
    assert resolve_config(run, None, None)[0] == config  # no override: the saved config


def test_same_preset_is_accepted_a_different_one_refused(run, over, tmp_path):
    _finish(run, "first_stage")  # the preset is fixed once the run has trained something
    config, _ = resolve_config(run, over, "tiny", "ldm")
    assert config.ldm.optim.max_epochs == 7 and config.preset == "tiny"
    assert resolve_config(run, None, "tiny")[0] == config
    with pytest.raises(ConfigError, match=r"preset 'cpu'.*preset 'tiny'.*preset of an existing run cannot change"):
        resolve_config(run, over, "cpu", "ldm")
    in_yaml = _yaml(tmp_path / "cpu.yaml", {"preset": "cpu", "ldm": {"optim": {"max_epochs": 3}}})
    with pytest.raises(ConfigError, match=r"cpu\.yaml: preset 'cpu'.*cannot change"):
        resolve_config(run, in_yaml, None, "ldm")
    assert run.load_config().ldm.optim.max_epochs == 7  # refused overrides leave the run alone


def test_new_run_is_preset_under_yaml(tmp_path, over):
    run = RunDir(tmp_path / "new")
    config, warnings = resolve_config(run, over, "tiny", "ldm")
    assert warnings == []
    assert config.ldm.optim.max_epochs == 7 and config.ldm.channels == (8, 16, 16)  # YAML on top of tiny
    assert run.load_config() == config
    with pytest.raises(ConfigError, match="pass --config or --preset"):
        resolve_config(RunDir(tmp_path / "none"), None, None)


def test_bad_value_names_field_and_file_and_keeps_the_run(run, tmp_path):
    bad = _yaml(tmp_path / "bad.yaml", {"ldm": {"optim": {"lr": -1}}})
    with pytest.raises(ConfigError, match=r"bad\.yaml(.|\n)*ldm\.optim\.lr: Input should be greater than 0"):
        resolve_config(run, bad, None, "ldm")
    unknown = _yaml(tmp_path / "unknown.yaml", {"score": {"num_t": 3}})
    with pytest.raises(ConfigError, match=r"unknown\.yaml(.|\n)*score\.num_t"):
        resolve_config(run, unknown, None)
    assert run.load_config() == load_config(preset="tiny")


def test_stale_artifacts_follow_the_section_dependencies(run, tmp_path):
    _finish(run, "first_stage", "ldm")
    run.ensure(run.calibration_dir)
    run.ood_calibration_path.write_text("{}")
    saved = run.load_config()
    wider = saved.model_copy(update={"first_stage": saved.first_stage.model_copy(update={"channels": 16})})
    fields = ["first_stage.channels"]
    assert run.stale_artifacts(saved, wider) == {"first_stage": fields, "ldm": fields, "calibration/ldm": fields}
    _finish(run, "transformer")
    run.ltm_calibration_path.write_text("{}")
    assert list(run.stale_artifacts(saved, wider)) == [
        "first_stage", "ldm", "transformer", "calibration/ldm", "calibration/ltm"]
    synth = saved.model_copy(update={"synth": saved.synth.model_copy(update={"n_train": 7})})
    assert run.stale_artifacts(saved, synth) == {}
    fpr = saved.model_copy(update={"score": saved.score.model_copy(update={"fpr": 0.1})})
    assert run.stale_artifacts(saved, fpr) == {"calibration/ldm": ["score.fpr"], "calibration/ltm": ["score.fpr"]}


def test_warnings_name_fields_stages_and_commands(run, tmp_path):
    _finish(run, "first_stage", "ldm")
    run.ensure(run.calibration_dir)
    run.ood_calibration_path.write_text("{}")
    over = _yaml(tmp_path / "fs.yaml", {"first_stage": {"channels": 16}})
    config, warnings = resolve_config(run, over, None, "first_stage")
    assert config.first_stage.channels == 16
    assert len(warnings) == 2  # first_stage itself is about to be retrained
    assert warnings[0].startswith("first_stage.channels changed: finished stage ldm")
    assert f"ldm-ood train ldm --run {run.root}" in warnings[0]
    assert str(run.ood_calibration_path) in warnings[1]
    assert f"ldm-ood calibrate --run {run.root} --method ldm" in warnings[1]
    # the stage's own section changed while it is finished: --resume will not retrain it
    epochs = _yaml(tmp_path / "ep.yaml", {"ldm": {"optim": {"max_epochs": 5}}})
    _, warnings = resolve_config(run, epochs, None, "ldm", resume=True)
    assert len(warnings) == 2 and "stage ldm is already finished" in warnings[0]
    assert "--resume will not retrain it" in warnings[0] and "ldm.optim.max_epochs" in warnings[0]
    # optimisation-only fields still make a finished stage stale for the others
    _, warnings = resolve_config(run, _yaml(tmp_path / "ep6.yaml", {"ldm": {"optim": {"max_epochs": 6}}}),
                                 None, "transformer")
    assert warnings[0].startswith("ldm.optim.max_epochs changed: finished stage ldm")


def test_cli_train_merges_onto_the_run_and_warns(run, over, tmp_path):
    _finish(run, "ldm")
    result = CliRunner().invoke(app, ["train", "transformer", "--run", str(run.root), "--config", str(over),
                                      "--preset", "tiny"])
    assert result.exit_code == 1 and "no training data" in result.output  # fails later, after the merge
    assert "warning: ldm.optim.max_epochs changed: finished stage ldm" in result.output
    assert run.load_config().ldm.optim.max_epochs == 7
    result = CliRunner().invoke(app, ["train", "ldm", "--run", str(run.root), "--preset", "cpu"])
    assert result.exit_code == 1 and "preset of an existing run cannot change" in result.output
