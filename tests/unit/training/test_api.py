"""``train()`` end to end on a NIfTI manifest, its errors, and resume after SIGKILL mid-training."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ldm_ood.config import ConfigError
from ldm_ood.errors import InputError
from ldm_ood.runs import RunDir
from ldm_ood.training.api import train
from ldm_ood.training.metrics import read_metrics


def _config(path: Path, manifest: Path | None = None, **first_stage_optim) -> Path:
    optim = {"max_epochs": 1, "preview_every": 100, **first_stage_optim}
    cfg = {"preset": "tiny", "first_stage": {"perceptual_weight": 0.0, "optim": optim},
           "ldm": {"optim": {"max_epochs": 1, "preview_every": 100}}}
    if manifest is not None:
        cfg["data"] = {"manifest": str(manifest)}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_first_stage_then_ldm_from_manifest(tmp_path, cohort):
    run = tmp_path / "run"
    res = train(run, "first-stage", config_path=_config(tmp_path / "c.yaml"), manifest=cohort)
    assert res.stage == "first_stage" and res.epochs == 1 and res.model_path.exists()
    assert RunDir(run).is_trained("first_stage")
    saved = RunDir(run).load_config()
    assert saved.data.manifest == cohort.resolve()  # remembered for the next stages
    res = train(run, "ldm")  # config and data from the run
    assert res.stage == "ldm" and RunDir(run).is_trained("ldm")


def test_train_errors_are_clear(tmp_path, cohort):
    with pytest.raises(ConfigError, match="unknown stage"):
        train(tmp_path / "r0", "nope", preset="tiny")
    with pytest.raises(ConfigError, match="pass --config or --preset"):
        train(tmp_path / "r1", "first-stage", manifest=cohort)
    with pytest.raises(ConfigError, match="no training data"):
        train(tmp_path / "r2", "first-stage", preset="tiny")
    with pytest.raises(ConfigError, match="needs a trained first stage.*ldm-ood train first-stage"):
        train(tmp_path / "r3", "ldm", preset="tiny", manifest=cohort)
    lines = cohort.read_text().splitlines()
    only_test = cohort.parent / "test_only.csv"  # same folder: relative paths still resolve
    only_test.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.endswith(",test")]) + "\n")
    with pytest.raises(InputError, match="no training cases"):
        train(tmp_path / "r4", "first-stage", preset="tiny", manifest=only_test)
    with pytest.raises(InputError, match="does not exist"):
        bad = cohort.parent / "missing.csv"
        bad.write_text("case_id,path,split\nx,nope.nii.gz,train\n")
        train(tmp_path / "r5", "first-stage", preset="tiny", manifest=bad)
    train(tmp_path / "r6", "first-stage", config_path=_config(tmp_path / "c.yaml"), manifest=cohort)
    with pytest.raises(ConfigError, match="different configuration"):
        train(tmp_path / "r6", "first-stage", preset="cpu", manifest=cohort)


def _train_cmd(run: Path, cfg: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "ldm_ood", "train", "first-stage", "--run", str(run),
           "--config", str(cfg)]
    return cmd + (["--resume"] if resume else [])


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "1"}


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, cohort):
    epochs = 30
    cfg = _config(tmp_path / "c.yaml", manifest=cohort, max_epochs=epochs, patience=100)
    # uninterrupted reference
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref, cfg, False), check=True, env=_env(), capture_output=True, timeout=600)
    # killed after >= 1 completed epoch, mid-training
    run = tmp_path / "run"
    metrics = RunDir(run).metrics_path("first_stage")
    proc = subprocess.Popen(_train_cmd(run, cfg, False), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # header + one epoch
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (RunDir(run).stage_dir("first_stage") / "DONE").exists()
    killed_at = len(read_metrics(metrics))
    assert 1 <= killed_at < epochs
    subprocess.run(_train_cmd(run, cfg, True), check=True, env=_env(), capture_output=True, timeout=600)
    got, want = read_metrics(metrics), read_metrics(RunDir(ref).metrics_path("first_stage"))
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want] == list(range(1, epochs + 1))
    # resumed training reproduces the uninterrupted run (weights, optimizers, D, EMA codebook, RNG)
    assert [r["val_loss"] for r in got] == pytest.approx([r["val_loss"] for r in want], rel=1e-4)
    assert (RunDir(run).stage_dir("first_stage") / "DONE").exists()
