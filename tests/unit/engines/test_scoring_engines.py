"""``score.engine`` in paper 000 scoring: the networks run on the chosen engines and the raw metrics
equal those of PyTorch eager fp32 (within float32 rounding carried through the sampler)."""

from __future__ import annotations

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
