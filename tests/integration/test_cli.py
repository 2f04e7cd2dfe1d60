"""The CLI is a thin layer: every command is listed with help, and errors come out as one message."""

import yaml
from typer.testing import CliRunner

from ldm_ood.cli import app

runner = CliRunner()
COMMANDS = ["synth", "corrupt", "config", "calibrate", "score", "segment", "serve", "evaluate", "report", "benchmark", "demo",
            "train", "export"]


def test_help_lists_every_command_with_one_line_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    train = runner.invoke(app, ["train", "--help"])
    for stage in ("first-stage", "ldm", "transformer"):
        assert stage in train.output


def test_config_prints_valid_yaml_of_preset():
    result = runner.invoke(app, ["config", "--preset", "paper"])
    assert result.exit_code == 0
    cfg = yaml.safe_load(result.output)
    assert cfg["ldm"]["channels"] == [128, 256, 256] and cfg["data"]["grid"] == [176, 208, 176]


def test_bad_config_value_fails_with_field_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nldm:\n  num_train_timesteps: 1\n")
    result = runner.invoke(app, ["config", "--config", str(bad)])
    assert result.exit_code == 1
    assert "ldm.num_train_timesteps" in result.output and "greater than or equal to 2" in result.output


def test_every_command_function_is_importable_from_the_package():
    import ldm_ood

    for name in ldm_ood.__all__[1:]:
        assert callable(getattr(ldm_ood, name)), name
