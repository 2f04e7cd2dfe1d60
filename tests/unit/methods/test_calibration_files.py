"""Calibrations refuse non-finite statistics before writing, never write NaN, and scoring refuses
an old calibration file holding NaN (the shared check in ``scoring.common``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.errors import NonFiniteCalibrationError
from ldm_ood.methods.calibration_files import (
    nonfinite_values,
    require_finite_calibration,
    require_finite_file,
    write_calibration_json,
)
from ldm_ood.methods.ldm.calibration import fit_calibration
from ldm_ood.methods.ldm.maps import VoxelStats
from ldm_ood.methods.ldm.pipeline import load_ldm_calibration
from ldm_ood.methods.ltm.likelihood import LTMNetworks
from ldm_ood.methods.ltm.pipeline import calibrate_ltm, load_ltm_calibration
from ldm_ood.methods.segment.calibration import load_calibration
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.models.transformer import build_ordering, build_transformer
from ldm_ood.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets
NAN = float("nan")


# ----------------------------------------------------------------------------- the shared check


def test_nonfinite_values_counts_every_number_of_nested_statistics():
    data = {
        "mean": {"mse": [1.0, NAN], "lpips": [0.1, 0.2]},
        "threshold": math.inf,
        "case_ids": ["a", "b"], "settings": {"sampler": "plms", "bf16": False, "steps": 5},
        "voxel_std": torch.tensor([[1.0, NAN], [NAN, 2.0]]),
        "residual_threshold": None,
        "arr": np.array([NAN, NAN, 1.0]),
        "val_scores": {"a": NAN, "b": 1.0, "c": NAN, "d": 2.0},
        "small": {"x": NAN, "y": 1.0},
    }
    assert nonfinite_values(data) == {"mean.mse": (1, 2), "threshold": (1, 1), "voxel_std": (2, 4), "arr": (2, 3),
                                      "val_scores": (2, 4), "small.x": (1, 1)}
    assert nonfinite_values({"mean": [0.0, 1.0], "std": [0.0], "thr": {"a": torch.zeros(3)}}) == {}


def test_require_finite_calibration_names_method_statistic_and_case_counts(tmp_path):
    path = tmp_path / "calibration" / "ood.json"
    mse = np.array([[1.0, NAN], [2.0, math.inf], [3.0, 4.0]])  # 2 of 3 scans bad, both at t=600
    with pytest.raises(NonFiniteCalibrationError) as err:
        require_finite_calibration("ldm", path, {"mean": {"mse": [2.0, NAN]}, "threshold": NAN},
                                   {"mse": mse, "lpips": np.ones((3, 2))}, columns={"mse": ["t=200", "t=600"]},
                                   cause="the LDM or first stage produces NaN; retrain it")
    assert isinstance(err.value, ValueError) and err.value.path == path
    assert str(err.value) == (
        f"{path}: calibration ldm: 2 of 3 validation scans gave non-finite mse at t=600; "
        "non-finite statistics: mean.mse (1 of 2 values), threshold: the LDM or first stage produces NaN; "
        "retrain it; nothing was written"
    )
    # per-case values of any shape: a case is non-finite when any of its entries is
    maps = np.ones((4, 2, 3, 3))
    maps[1, 0, 2, 2] = NAN
    with pytest.raises(NonFiniteCalibrationError, match=r"calibration segment: 1 of 4 validation scans gave non-finite KL map"):
        require_finite_calibration("segment", path, {}, {"KL map": maps}, cause="x")
    assert not path.exists()


def test_finite_calibration_with_zero_std_passes(tmp_path):
    # a std of 0 (one validation case, LTM / segmentation) is finite: the LDM floors its stds itself
    require_finite_calibration("ltm", tmp_path / "ltm.json", {"mean": 3.0, "std": 0.0, "values": [3.0]},
                               {"NLL": np.array([3.0])}, cause="x")
    cal = fit_calibration(["a"], {"mse": np.array([[0.5, 0.5]])}, [200, 600], [200], 0.05)
    assert min(cal.std["mse"]) > 0  # floored, never 0


def test_write_calibration_json_never_writes_nan(tmp_path):
    path = tmp_path / "c" / "x.json"
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_calibration_json(path, {"mean": NAN})
    assert not path.exists()
    write_calibration_json(path, {"mean": 1.5, "ids": ["a"]})
    assert json.loads(path.read_text()) == {"mean": 1.5, "ids": ["a"]}


# ----------------------------------------------------------------------------- old files with NaN


def test_scoring_refuses_old_calibration_files_with_nan(tmp_path):
    run = RunDir(tmp_path / "run")
    run.ensure(run.calibration_dir)
    # LDM: json.dumps writes NaN literals by default, as the old code did
    cal = fit_calibration(["a", "b"], {"mse": np.array([[NAN, 1.0], [NAN, 2.0]])}, [200, 600], [200], 0.05)
    run.ood_calibration_path.write_text(cal.to_json())
    VoxelStats((200,), torch.zeros(1, 2, 2), torch.ones(1, 2, 2)).save(run.ood_voxel_stats_path)
    with pytest.raises(NonFiniteCalibrationError) as err:
        load_ldm_calibration(run)
    msg = str(err.value)
    assert msg.startswith(f"{run.ood_calibration_path}: calibration holds non-finite values (mean.mse (1 of 2 values)")
    assert f"recalibrate: `ldm-ood calibrate --method ldm --run {run.root}`" in msg
    # finite calibration, NaN voxel statistics
    good = fit_calibration(["a", "b"], {"mse": np.array([[0.0, 1.0], [1.0, 2.0]])}, [200, 600], [200], 0.05)
    run.ood_calibration_path.write_text(good.to_json())
    VoxelStats((200,), torch.full((1, 2, 2), NAN), torch.ones(1, 2, 2)).save(run.ood_voxel_stats_path)
    with pytest.raises(NonFiniteCalibrationError, match=r"ood_voxel_stats.safetensors: .*mean \(4 of 4 values\)"):
        load_ldm_calibration(run)
    VoxelStats((200,), torch.zeros(1, 2, 2), torch.ones(1, 2, 2)).save(run.ood_voxel_stats_path)
    assert load_ldm_calibration(run)[0].t_values == [200, 600]

    # LTM
    run.ltm_calibration_path.write_text(json.dumps({"mean": NAN, "std": NAN, "threshold": NAN, "fpr": 0.05,
                                                    "values": [NAN, 1.0], "case_ids": ["a", "b"], "orderings": ["raster_scan"]}))
    with pytest.raises(NonFiniteCalibrationError, match=r"ltm.json: .*values \(1 of 2 values\).*--method ltm"):
        load_ltm_calibration(run)

    # segmentation: JSON and KL thresholds
    run.segment_calibration_path.write_text(json.dumps({"val_scores": {"a": NAN}, "variants": {"c": {"residual_threshold": NAN}}}))
    with pytest.raises(NonFiniteCalibrationError, match=r"segment.json: .*\(val_scores.a, variants.c.residual_threshold\)"):
        load_calibration(run)


def test_require_finite_file_is_silent_for_finite_data(tmp_path):
    require_finite_file(tmp_path / "x.json", {"a": [1.0, 2.0], "b": None, "c": "text"}, "ldm-ood calibrate")


# ----------------------------------------------------------------------------- a calibration end to end


def test_calibrate_ltm_with_a_nan_transformer_raises_and_writes_nothing(tmp_path):
    cfg = load_config(preset="tiny")  # 16^3 grid -> 4^3 = 64 tokens
    v = cfg.first_stage.num_embeddings
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, spatial_dims=3).eval()
    transformer = build_transformer(cfg.transformer, v + 1, 64).eval()
    with torch.no_grad():
        next(iter(transformer.parameters())).fill_(NAN)  # as a diverged bf16 training leaves it
    net = LTMNetworks(fs, [transformer], [build_ordering("raster_scan", (4, 4, 4))], bos=v)
    rng = np.random.default_rng(0)
    cases = [Case(f"v{i}", write_image(tmp_path / f"v{i}.nii.gz", rng.uniform(-20, 120, (16, 16, 16)).astype(np.float32)),
                  set="id", split="val") for i in range(3)]
    manifest = write_manifest(tmp_path / "manifest.csv", cases)
    run = RunDir(tmp_path / "run")
    with pytest.raises(NonFiniteCalibrationError) as err:
        calibrate_ltm(run.root, manifest, config=cfg, networks=net, preprocessor=Preprocessor(cfg.data), device="cpu",
                      progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{run.ltm_calibration_path}: calibration ltm: 3 of 3 validation scans gave non-finite NLL")
    assert "retrain it" in msg and "nothing was written" in msg
    assert not run.ltm_calibration_path.exists()
