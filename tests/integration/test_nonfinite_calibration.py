"""A model producing NaN makes ``calibrate_ldm`` / ``calibrate_segment`` fail loudly and write nothing.

Tiny random nets whose UNet holds one NaN parameter (what a diverged bf16 training leaves), passed
in directly as the tests of the pipelines do (the load-time check of ``models.loading`` would refuse
them earlier when read from a run).
"""

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.errors import NonFiniteCalibrationError
from ldm_ood.methods.ldm.pipeline import ScoringModels, calibrate_ldm
from ldm_ood.methods.ldm.similarity import mse
from ldm_ood.methods.segment.batch import SegmentModels
from ldm_ood.methods.segment.pipeline import calibrate_segment
from ldm_ood.models.diffusion import build_ddpm_scheduler, build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets


def _nan_unet(cfg, dims):
    unet = build_unet(cfg.ldm, dims, cfg.first_stage.embedding_dim).eval()
    with torch.no_grad():
        unet.conv_in.conv.bias[0] = math.nan
    return unet


def test_calibrate_ldm_with_a_nan_ldm_raises_and_writes_no_calibration(tmp_path):
    cfg = load_config(preset="tiny", overrides={"score": {"num_inference_steps": 5, "num_t_values": 2,
                                                          "map_t_values": [250], "metrics": ["mse"]}})
    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        path = tmp_path / f"v{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(40, 5, (16, 16, 16)).astype(np.float32), np.eye(4)), str(path))
        cases.append(Case(f"v{i}", path, set="id", split="val"))
    manifest = write_manifest(tmp_path / "manifest.csv", cases)
    torch.manual_seed(0)
    models = ScoringModels(build_first_stage(cfg.first_stage, 3).eval(), _nan_unet(cfg, 3), 0.8,
                           latent_multiple(cfg.ldm), cfg.ldm, 3)
    run = RunDir(tmp_path / "run")
    run.save_config(cfg)
    with pytest.raises(NonFiniteCalibrationError) as err:
        calibrate_ldm(run.root, manifest, models=models, similarity={"mse": mse}, device="cpu", progress=False)
    msg = str(err.value)
    # t-values 250, 750 snap onto the 5-step grid at 200, 600; the map t 250 at 200
    assert msg.startswith(f"{run.ood_calibration_path}: calibration ldm: 3 of 3 validation scans gave non-finite "
                          "mse at t=200, t=600; 3 of 3 validation scans gave non-finite MAE map at t=200")
    assert "mean.mse (2 of 2 values)" in msg and "retrain it" in msg and "nothing was written" in msg
    assert not run.ood_calibration_path.exists() and not run.ood_voxel_stats_path.exists()


def test_calibrate_segment_with_a_nan_ldm_raises_and_writes_no_calibration(tmp_path):
    cfg = load_config(preset="tiny-2d", overrides={"segment": {
        "start_t": 6, "ddim_steps": 3, "kl_t_range": (400, 600), "kl_num_t": 2, "score_num_t": 3, "batch_size": 2}})
    rng = np.random.default_rng(0)
    cases = [Case(f"v{i}", write_image(tmp_path / f"v{i}.nii.gz", rng.normal(40, 5, (16, 16)).astype(np.float32)),
                  set="id", split="val") for i in range(3)]
    manifest = write_manifest(tmp_path / "manifest.csv", cases)
    torch.manual_seed(0)
    models = SegmentModels(build_first_stage(cfg.first_stage, 2).eval(), _nan_unet(cfg, 2), build_ddpm_scheduler(cfg.ldm),
                           0.8, latent_multiple(cfg.ldm), 2)
    run = RunDir(tmp_path / "run")
    run.save_config(cfg)
    with pytest.raises(NonFiniteCalibrationError) as err:
        calibrate_segment(run.root, manifest, variants=["c"], models=models, device="cpu")
    msg = str(err.value)
    assert msg.startswith(f"{run.segment_calibration_path}: calibration segment: 3 of 3 validation scans gave non-finite")
    assert "image score" in msg and "val_score_mean" in msg and "retrain it" in msg
    assert not run.segment_calibration_path.exists() and not run.segment_thresholds_path.exists()
