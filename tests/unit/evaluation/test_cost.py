"""FLOP accounting of the scoring path (``evaluation.cost``) against hand formulas and one whole-path count."""

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.evaluation.cost import (
    ComponentMeter,
    ComponentUsage,
    achieved,
    best_peak,
    count_flops,
    elementwise_flops,
)
from ldm_ood.methods.ldm.pipeline import OODScorer, ScoringModels
from ldm_ood.methods.ldm.reconstruct import inference_grid, unet_evaluations
from ldm_ood.models.diffusion import build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.models.perceptual import load_lpips

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_flops_are_two_per_multiply_add():
    n, i, o = 7, 13, 5
    flops, _ = count_flops(torch.nn.Linear(i, o), torch.randn(n, i))
    assert flops == 2 * n * i * o


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_conv3d_flops_follow_the_output_size(stride, padding):
    n, ci, co, k, s = 2, 3, 4, 3, 9
    out = (s + 2 * padding - k) // stride + 1
    flops, y = count_flops(torch.nn.Conv3d(ci, co, k, stride=stride, padding=padding), torch.randn(n, ci, s, s, s))
    assert y.shape == (n, co, out, out, out)
    assert flops == 2 * n * co * out**3 * ci * k**3


def _tiny_models():
    cfg = load_config(preset="tiny")
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, 3).eval()
    unet = build_unet(cfg.ldm, 3, cfg.first_stage.embedding_dim).eval()
    return cfg, ScoringModels(fs, unet, 0.8, latent_multiple(cfg.ldm), cfg.ldm, 3, load_lpips())


def test_the_components_add_up_to_the_whole_path_and_the_unet_runs_its_evaluation_count():
    cfg, models = _tiny_models()
    score = cfg.score.model_copy(update={"num_t_values": 3, "num_inference_steps": 5, "map_t_values": (200,)})
    scorer = OODScorer(models, score, bf16=False)
    x = torch.rand(2, 1, *cfg.data.grid)
    whole, _ = count_flops(scorer.measure, x, [1, 2])
    meter = ComponentMeter()
    with meter.watch(models):
        scorer.measure(x, [1, 2])
    assert "forward" not in models.unet.__dict__ and "encode" not in models.first_stage.__dict__  # unwatched after
    assert meter.totals()[1] == whole  # every counted FLOP of the path is in one component
    u = meter.usage
    assert u["unet"].items == 2 * unet_evaluations(scorer.starts, inference_grid(scorer.scheduler), "plms")
    z = torch.randn(1, cfg.first_stage.embedding_dim, 4, 4, 4)
    one_call, _ = count_flops(models.unet, z, torch.tensor([100]))
    assert u["unet"].flops == u["unet"].items * one_call
    assert u["encode"].items == 2 and u["decode"].items == 2 * len(scorer.starts)
    # 2.5D LPIPS: the input's 3·16 slices once, and those of each of the 3 score reconstructions
    assert u["lpips"].items == 2 * (3 * 16) * (1 + len(scorer.t_values))


def test_achieved_flops_and_percent_of_peak_by_hand():
    usage = {"unet": ComponentUsage(calls=4, items=8, seconds=2.0, flops=8_000), "lpips": ComponentUsage(1, 1, 1.0, 1_000)}
    peak = {"fp32": {"peak": {"2": 4_000.0}}, "bf16": {"peak": {"2": 10_000.0}}}
    out = achieved(usage, {"unet": "bf16", "lpips": "fp32"}, peak, threads=2, scans=2, total_seconds=4.0)
    c = out["components"]
    assert c["unet"]["achieved_flops_per_s"] == 4_000 and c["unet"]["percent_of_peak"] == 40.0
    assert c["lpips"]["percent_of_peak"] == 25.0 and c["unet"]["flops_per_scan"] == 4_000
    w = out["whole_path"]  # 9000 FLOPs in 4 s against the fp32 peak (not every component is bf16)
    assert w["achieved_flops_per_s"] == 2_250 and w["percent_of_peak"] == pytest.approx(56.25)
    assert w["other_seconds_per_scan"] == 0.5 and w["flops_per_scan"] == 4_500


def test_elementwise_flops_by_hand():
    assert elementwise_flops(voxels=1000, channels=1, n_mse=50, n_maps=4) == 3 * 1000 * 54


def test_the_best_peak_is_the_entrywise_maximum():
    a = {"fp32": {"matmul": {"1": 5.0, "2": 9.0}, "peak": {"1": 5.0, "2": 9.0}}}
    b = {"fp32": {"matmul": {"1": 6.0, "2": 7.0}, "peak": {"1": 6.0, "2": 7.0}}, "bf16": {"peak": {"1": 3.0}}}
    assert best_peak(a, b) == {"fp32": {"matmul": {"1": 6.0, "2": 9.0}, "peak": {"1": 6.0, "2": 9.0}},
                               "bf16": {"peak": {"1": 3.0}}}
