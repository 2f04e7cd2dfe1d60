"""``score.engine`` in paper 000 scoring: the networks run on the chosen engines and the raw metrics
equal those of PyTorch eager fp32 (within float32 rounding carried through the sampler)."""

from __future__ import annotations

import json

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.engines.networks import EngineFirstStage, EngineTrunk, EngineUNet
from ldm_ood.methods.ldm.pipeline import OODScorer, ScoringModels
from ldm_ood.models.diffusion import build_unet
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.models.perceptual import AlexNetFeatures, load_lpips

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = load_config(preset="tiny")


def _models() -> ScoringModels:
    torch.manual_seed(0)
    fs = build_first_stage(CFG.first_stage, 3).eval()
    unet = build_unet(CFG.ldm, 3, CFG.first_stage.embedding_dim).eval()
    for p in unet.parameters():  # MONAI zero-initialises the output convolution: make ε non-zero
        if not p.detach().abs().sum():
            torch.nn.init.normal_(p, 0.0, 0.05)
    return ScoringModels(fs, unet, 0.8, 4, CFG.ldm, 3, load_lpips())


def test_tiny_preset_scores_in_eager_exactly_as_before():
    assert CFG.score.engine == "eager" and load_config(preset="cpu").score.engine == "auto"
    scorer = OODScorer(_models(), CFG.score, bf16=False, grid=(16, 16, 16))
    assert scorer.engine_choices == {} and scorer.net is scorer.models


def test_changing_the_engine_leaves_calibrations_valid():
    from ldm_ood.config.changes import changed_fields, invalidated_artifacts

    new = CFG.model_copy(update={"score": CFG.score.model_copy(update={"engine": "openvino"})})
    assert changed_fields(CFG, new) == ["score.engine"] and invalidated_artifacts(["score.engine"]) == {}
    assert "calibration/ldm" in invalidated_artifacts(["score.precision"])


def test_scoring_on_exported_engines_equals_eager_fp32(tmp_path):
    models = _models()
    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    ref = OODScorer(models, CFG.score, bf16=False).measure(x, [3, 4])
    cfg = CFG.score.model_copy(update={"engine": "onnxruntime"})
    scorer = OODScorer(models, cfg, bf16=False, grid=(16, 16, 16), artifact_dir=tmp_path)
    assert {k: (c.engine, c.precision) for k, c in scorer.engine_choices.items()} == {
        k: ("onnxruntime", "fp32") for k in ("encoder", "decoder", "unet", "lpips")}
    assert isinstance(scorer.net.first_stage, EngineFirstStage) and isinstance(scorer.net.unet, EngineUNet)
    assert isinstance(scorer.net.lpips_model.net, EngineTrunk)
    assert isinstance(models.lpips_model.net, AlexNetFeatures)  # the original LPIPS is untouched
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json"] * 4 + [".onnx"] * 4
    got = scorer.measure(x, [3, 4])
    for m in ("mse", "lpips"):
        torch.testing.assert_close(got.values[m], ref.values[m], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(got.mae_maps, ref.mae_maps, rtol=1e-3, atol=1e-4)


def test_score_command_path_runs_the_chosen_engines_and_keeps_the_calibration(tmp_path):
    """``score_ldm`` of a calibrated tiny 2D run with ``score.engine: onnxruntime``: the calibration stays
    valid, the exported files and ``engines/choices.json`` are in the run, and every score equals eager's."""
    from tiny_runs import build_tiny_2d_run

    from ldm_ood.errors import BatchError
    from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
    from ldm_ood.methods.records import read_records

    run, _ = build_tiny_2d_run(tmp_path)
    calibrate_ldm(run.root, progress=False)
    with pytest.raises(BatchError, match="bad"):  # the tiny run's unreadable case, after the others
        score_ldm(run.root, sets=["id"], progress=False)
    path = run.scores_path("ldm", "id")
    eager = {r["case_id"]: r for r in read_records(path)}
    path.unlink()
    cfg = run.load_config()
    cfg.score.engine = "onnxruntime"
    with pytest.raises(BatchError, match="bad"):
        score_ldm(run.root, sets=["id"], config=cfg, progress=False)
    engined = {r["case_id"]: r for r in read_records(path)}
    choices = json.loads((run.engines_dir / "choices.json").read_text())
    assert {k: c["engine"] for k, c in choices.items()} == dict.fromkeys(("encoder", "decoder", "unet", "lpips"),
                                                                         "onnxruntime")
    assert len(list(run.engines_dir.glob("*.onnx"))) == 4
    assert eager.keys() == engined.keys() and len(eager) == 3
    for case, row in eager.items():
        for col in ("pred_score", *(k for k in row if "@" in k)):
            assert float(engined[case][col]) == pytest.approx(float(row[col]), rel=1e-3, abs=1e-5), (case, col)


def test_an_engine_that_fails_at_run_time_hands_its_network_to_eager_loudly(tmp_path):
    models = _models()
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(6))
    ref = OODScorer(models, CFG.score, bf16=False).measure(x, [3])
    cfg = CFG.score.model_copy(update={"engine": "onnxruntime"})
    scorer = OODScorer(models, cfg, bf16=False, grid=(16, 16, 16), artifact_dir=tmp_path)
    guarded = scorer.net.unet.engine
    calls = []

    def broken(*inputs):  # e.g. inductor's stride guard on an input layout it was not probed with
        calls.append(1)
        raise AssertionError("expected size 32==32, stride 1==32768 at dim=1")

    guarded.engine = broken
    with pytest.warns(RuntimeWarning, match="engine of unet failed"):
        got = scorer.measure(x, [3])
    assert calls == [1] and guarded.failed.startswith("AssertionError") and guarded.name == "eager"
    for m in ("mse", "lpips"):
        torch.testing.assert_close(got.values[m], ref.values[m], rtol=1e-3, atol=1e-6)
