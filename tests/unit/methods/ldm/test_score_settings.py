"""Named score settings (``score.setting``) and the UNet evaluations per scan they cost, by hand."""

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.methods.ldm.pipeline import OODScorer, ScoringModels
from ldm_ood.methods.ldm.reconstruct import inference_grid, unet_evaluations
from ldm_ood.methods.ldm.similarity import mse
from ldm_ood.models.diffusion import build_inference_scheduler, build_unet
from ldm_ood.models.first_stage import build_first_stage

pytestmark = pytest.mark.usefixtures("one_thread")


def _scorer(setting, preset="paper"):
    cfg = load_config(preset=preset, overrides={"score": {"setting": setting}})
    models = ScoringModels(torch.nn.Identity(), torch.nn.Identity(), 1.0, 4, cfg.ldm, 3)
    return cfg, OODScorer(models, cfg.score, similarity={"mse": mse}, bf16=False)


def test_fast_setting_expands_to_44_unet_evaluations_per_scan():
    cfg, s = _scorer("fast", preset="cpu")  # the cpu preset's own 10 starts × 25 steps are replaced
    assert (cfg.score.sampler, cfg.score.num_inference_steps, cfg.score.num_t_values) == ("ddim", 10, 10)
    assert not cfg.score.sequential and cfg.score.precision == "auto"
    grid = inference_grid(s.scheduler)
    assert list(grid) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    # starts 50, 150, ..., 950 snap to the grid level below: 0, 111, 111, 222, ..., 888; maps 100..400 -> 0..333
    assert s.starts == (0, 111, 222, 333, 444, 555, 666, 777, 888)
    # a chain from 111·k calls the UNet at 111·k, ..., 111, 0: k + 1 times; start 0 never
    assert unet_evaluations(s.starts, grid, "ddim") == sum(k + 1 for k in range(1, 9)) == 44


def test_paper_and_default_settings_run_2654_unet_evaluations_per_scan():
    for setting, sequential, precision in (("paper", True, "fp32"), ("default", False, "auto")):
        cfg, s = _scorer(setting, preset="cpu")
        assert (cfg.score.num_t_values, cfg.score.num_inference_steps, cfg.score.sampler) == (50, 100, "plms")
        assert (cfg.score.sequential, cfg.score.precision, s.execution) == (
            sequential, precision, "reference" if sequential else "batched")
        # starts 10, 30, ..., 990 (chain from t calls t/10 + 1 times) and maps 100, 200, 300, 400
        hand = sum(t // 10 + 1 for t in range(10, 1000, 20)) + sum(t // 10 + 1 for t in (100, 200, 300, 400))
        assert hand == 2550 + 104 == unet_evaluations(s.starts, inference_grid(s.scheduler), "plms")


def test_a_setting_sets_its_fields_on_assignment_and_refuses_unknown_names():
    cfg = load_config(preset="cpu")
    cfg.score.setting = "paper"
    assert (cfg.score.num_t_values, cfg.score.sequential) == (50, True)
    with pytest.raises(ValueError):
        load_config(preset="cpu", overrides={"score": {"setting": "fastest"}})


def test_one_step_counts_one_evaluation_per_noised_start():
    grid = inference_grid(build_inference_scheduler(load_config(preset="tiny").ldm, "one_step", 1))
    assert unet_evaluations((0, 125, 250), grid, "one_step") == 2


def test_the_counted_evaluations_of_a_real_scan_equal_the_hand_count():
    cfg = load_config(preset="tiny", overrides={"score": {"setting": "fast", "map_t_values": [250]}})
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, 3).eval()
    unet = build_unet(cfg.ldm, 3, cfg.first_stage.embedding_dim).eval()
    s = OODScorer(ScoringModels(fs, unet, 1.0, 4, cfg.ldm, 3), cfg.score, similarity={"mse": mse}, bf16=False)
    s.measure(torch.rand(2, 1, *cfg.data.grid), [0, 1])
    assert s.calls.evals == 2 * unet_evaluations(s.starts, inference_grid(s.scheduler), "ddim")
