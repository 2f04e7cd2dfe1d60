"""Loading a run's networks refuses NaN/Inf weights and an unusable LDM scale factor, loudly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ldm_ood.artifacts.checkpoint import save_model
from ldm_ood.artifacts.integrity import file_sha256
from ldm_ood.cli import app
from ldm_ood.config import load_config
from ldm_ood.errors import IntegrityError, NonFiniteModelError, StaleArtifactError
from ldm_ood.models.diffusion import build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.models.loading import load_first_stage, load_ldm, load_transformer
from ldm_ood.models.transformer import build_transformer
from ldm_ood.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets


@pytest.fixture
def run(tmp_path) -> RunDir:
    """A 2D run with a tiny first stage, LDM and transformer saved as training saves them."""
    cfg = load_config(preset="tiny-2d")
    run = RunDir(tmp_path / "run")
    run.save_config(cfg)
    dump = cfg.model_dump(mode="json")
    torch.manual_seed(0)
    save_model(run.stage_dir("first_stage"), build_first_stage(cfg.first_stage, 2),
               {"stage": "first_stage", "spatial_dims": 2, "config": dump})
    save_model(run.stage_dir("ldm"), build_unet(cfg.ldm, 2, cfg.first_stage.embedding_dim), {
        "stage": "ldm", "spatial_dims": 2, "scale_factor": 0.8, "latent_multiple": latent_multiple(cfg.ldm),
        "latent_spatial_shape": [4, 4], "latent_channels": cfg.first_stage.embedding_dim, "config": dump})
    v = cfg.first_stage.num_embeddings
    save_model(run.stage_dir("transformer"), build_transformer(cfg.transformer, v + 1, 16), {
        "stage": "transformer", "spatial_dims": 2, "num_tokens": v + 1, "seq_len": 16, "latent_spatial_shape": [4, 4],
        "ordering": "raster_scan", "ordering_seed": 0, "config": dump})
    for stage in ("first_stage", "ldm", "transformer"):  # finished, as training leaves them
        run.done_path(stage).write_text('{"reason": "max_epochs"}')
    return run


def _poison(run: RunDir, stage: str, n: int = 1, value: float = math.nan, rehash: bool = True) -> list[str]:
    """Put ``value`` into one element of the first ``n`` floating tensors of ``<stage>/model.safetensors``;
    ``rehash``: record the new file's sha256, as a training run that diverged would have saved it."""
    path = run.model_path(stage)
    state = load_file(str(path))
    names = [k for k, t in state.items() if t.is_floating_point()][:n]
    for k in names:
        state[k].view(-1)[0] = value
    save_file(state, str(path))
    if rehash:
        record = json.loads(run.model_config_path(stage).read_text())
        run.model_config_path(stage).write_text(json.dumps({**record, "weights_sha256": file_sha256(path)}))
    return names


def test_finite_models_load(run):
    assert isinstance(load_first_stage(run), torch.nn.Module)
    assert load_ldm(run).scale_factor == pytest.approx(0.8)
    assert load_transformer(run).ordering.kind == "raster_scan"


@pytest.mark.parametrize("stage, loader", [("first_stage", load_first_stage), ("ldm", load_ldm),
                                           ("transformer", load_transformer)])
def test_one_nan_parameter_raises_naming_the_file_and_tensor(run, stage, loader):
    (name,) = _poison(run, stage)
    n_tensors = len(load_file(str(run.model_path(stage))))
    with pytest.raises(NonFiniteModelError) as err:
        loader(run)
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and err.value.path == run.model_path(stage)
    assert msg.startswith(f"{run.root / stage / 'model.safetensors'}: 1 of {n_tensors} tensors hold NaN/Inf values")
    assert f"({name})" in msg and "retrain the stage" in msg


def test_count_and_first_names_of_several_bad_tensors(run):
    names = _poison(run, "ldm", n=7, value=math.inf)
    with pytest.raises(NonFiniteModelError, match=r": 7 of \d+ tensors hold NaN/Inf") as err:
        load_ldm(run)
    shown = str(err.value).split("NaN/Inf values (")[1].split(")")[0].split(", ")
    assert len(shown) == 6 and shown[-1] == "..." and set(shown[:5]) <= set(names)  # the first 5 named


@pytest.mark.parametrize("stage, loader", [("first_stage", load_first_stage), ("ldm", load_ldm)])
def test_weights_changed_after_training_are_refused_naming_the_file(run, stage, loader):
    path = run.model_path(stage)
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 50, len(data)):  # 50 flipped bytes in the tensor data
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="differs from .* recorded in .*config.json when it was written") as err:
        loader(run)
    assert err.value.path == path and "retrain the stage" in str(err.value)
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated: also named, never a raw safetensors error
    with pytest.raises(IntegrityError, match=str(path)):
        loader(run)


def test_a_truncated_record_is_refused_naming_it(run):
    path = run.model_config_path("ldm")
    path.write_text(path.read_text()[:40])
    with pytest.raises(IntegrityError, match=f"{path}: not a readable model record"):
        load_ldm(run)


def test_an_ldm_on_a_retrained_first_stage_is_stale_unless_forced(run, capsys):
    record = json.loads(run.model_config_path("ldm").read_text())
    first = json.loads(run.model_config_path("first_stage").read_text())["weights_sha256"]
    run.model_config_path("ldm").write_text(json.dumps({**record, "inputs": {"first_stage": first}}))
    assert load_ldm(run).scale_factor == pytest.approx(0.8)  # trained on the run's first stage
    torch.manual_seed(1)  # retrain the first stage: new weights, new hash
    cfg = load_config(preset="tiny-2d")
    save_model(run.stage_dir("first_stage"), build_first_stage(cfg.first_stage, 2),
               {"stage": "first_stage", "spatial_dims": 2, "config": cfg.model_dump(mode="json")})
    with pytest.raises(StaleArtifactError, match="trained on a first stage that has since changed") as err:
        load_ldm(run)
    assert err.value.path == run.model_path("ldm") and "ldm-ood train ldm" in str(err.value) and "--force" in str(err.value)
    assert load_ldm(run, force=True).scale_factor == pytest.approx(0.8)
    assert "used anyway (--force)" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("scale", [math.nan, 0.0, -1.0, math.inf])
def test_ldm_scale_factor_must_be_finite_and_positive(run, scale):
    import json

    path = run.model_config_path("ldm")
    meta = json.loads(path.read_text())
    meta["scale_factor"] = scale
    path.write_text(json.dumps(meta))
    with pytest.raises(NonFiniteModelError, match="scale_factor") as err:
        load_ldm(run)
    assert str(err.value).startswith(f"{path}: latent scale_factor is {scale!r}")


def test_cli_prints_one_message_and_exits_1(run):
    _poison(run, "ldm")
    result = CliRunner().invoke(app, ["calibrate", "--run", str(run.root)])
    assert result.exit_code == 1
    text = "".join(result.output.split())  # rich wraps long lines, even inside words
    assert text.startswith("error:") and "ldm/model.safetensors:1of" in text and "retrainthestage" in text
    assert "Traceback" not in result.output


def test_an_unfinished_stage_is_used_with_a_warning_saying_how_to_finish_it(run, capsys):
    run.done_path("ldm").unlink()
    assert load_ldm(run).scale_factor == pytest.approx(0.8)
    err = " ".join(capsys.readouterr().err.split())
    assert "its training has not finished (no DONE" in err and "ldm-ood train ldm --run" in err and "--resume" in err
