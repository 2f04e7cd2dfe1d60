"""Training: a retrain killed (kill -9 / SIGTERM) in epoch 1 must leave the finished model; resume after
kill -9 is byte-exact; a failed first train does not block the corrected retry; --config without
--preset; preset and data mistakes.
"""

from __future__ import annotations

import re
import signal
from typing import Callable

from .common import LDM, Sandbox, Verdict, add, expect_error, expect_success, prepare, read_csv
from .harness import _sha, tree_state, wait_for

# ----------------------------------------------------------------------------- training interrupted

def _kill_in_epoch1(stage: str, sig: int) -> Callable[[Sandbox], Verdict]:
    """Retrain a finished stage without --resume and kill it in epoch 1: the old model must survive."""
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, LDM)
        d = sb.run / stage
        before = {n: _sha(d / n) for n in ("model.safetensors", "DONE", "config.json")}
        start = tree_state(sb.run)
        p = sb.spawn("train", stage.replace("_", "-"), "--run", "run")
        # the first change in the run folder (a file cleared, a staging folder, precision.json) = training started
        wait_for(lambda: tree_state(sb.run) != start or not p.running(), timeout=90, every=0.005)
        finished_early = not p.running()
        p.kill(sig)
        call = p.wait(timeout=60)
        v = Verdict()
        if finished_early or "done after" in call.text:
            return v.add(None, f"training ended (rc {call.rc}) before it could be killed; not judged")
        lost = [n for n, h in before.items() if not (d / n).exists() or _sha(d / n) != h]
        if lost:
            v.add("data_loss", f"after {signal.Signals(sig).name} in epoch 1: {stage}/{', '.join(lost)} gone or "
                               f"changed; left: {sorted(x.name for x in d.iterdir())}")
        else:
            v.add(None, f"after {signal.Signals(sig).name}: {stage} model, DONE and config.json intact")
        if call.traceback and sig == signal.SIGTERM:
            pass  # reported by the generic check
        return v
    return fn


add("train/retrain_ldm_kill9_epoch1", "the finished ldm model, DONE and config survive a kill -9 of a retrain",
    _kill_in_epoch1("ldm", signal.SIGKILL), "train")
add("train/retrain_first_stage_kill9_epoch1", "the finished first stage survives a kill -9 of its retrain",
    _kill_in_epoch1("first_stage", signal.SIGKILL), "train")
add("train/retrain_ldm_sigterm_epoch1", "the finished ldm model survives a SIGTERM of its retrain",
    _kill_in_epoch1("ldm", signal.SIGTERM), "train")


def _resume_after_kill(sb: Sandbox) -> Verdict:
    """New run: kill -9 the first-stage training after epoch 1, --resume: byte-identical to an uninterrupted run."""
    sb.use_data("3d")
    sb.allow(sb.root / "run")
    p = sb.spawn("train", "first-stage", "--run", "run", "--preset", "tiny", "--data", sb.data / "manifest.csv")
    metrics = sb.root / "run" / "first_stage" / "metrics.csv"
    wait_for(lambda: (metrics.exists() and len(read_csv(metrics).rows) >= 1) or not p.running(), timeout=120)
    early = not p.running()
    p.kill()
    p.wait(timeout=60)
    call = sb.cli("train", "first-stage", "--run", "run", "--resume", timeout=180)
    ref = _sha(sb.setup.run_dir("3d") / "first_stage" / "model.safetensors")

    def check() -> str | None:
        got = sb.root / "run" / "first_stage" / "model.safetensors"
        if not (sb.root / "run" / "first_stage" / "DONE").exists():
            return "no DONE after --resume"
        if _sha(got) != ref:
            return "resumed model differs from an uninterrupted run's"
        return None
    v = expect_success(call, check)
    return v.add(None, "(finished before the kill)" if early else "killed after epoch 1")


add("train/kill9_then_resume_byte_exact", "--resume after kill -9 finishes, byte-identical to an uninterrupted run",
    _resume_after_kill, "train")


def _failed_then_retry(kind: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        sb.use_data("3d")
        sb.allow(sb.root / "run")
        over = sb.data / "one.yaml"
        over.write_text("first_stage: {optim: {max_epochs: 1}}\n")
        if kind == "missing_manifest":
            bad = ["--data", sb.data / "nosuch.csv"]
        elif kind == "no_val_rows":
            text = (sb.data / "manifest.csv").read_text().replace(",val\n", ",train\n")
            bad = ["--data", sb.write_manifest(text, "noval.csv")]
        else:  # bad config value
            bad_cfg = sb.data / "bad.yaml"
            bad_cfg.write_text("first_stage: {channels: -3}\n")
            bad = ["--data", sb.data / "manifest.csv", "--config", bad_cfg]
        first = sb.cli("train", "first-stage", "--run", "run", "--preset", "tiny", *bad)
        second = sb.cli("train", "first-stage", "--run", "run", "--preset", "tiny", "--config", over, "--data",
                        sb.data / "manifest.csv", timeout=120)
        v = expect_error(first, [], None)
        if "silent" in v.flags:
            return v

        def check() -> str | None:
            done = sb.root / "run" / "first_stage" / "DONE"
            if not done.exists():
                return "retry did not finish"
            cfg = (sb.root / "run" / "config.yaml").read_text()
            if "max_epochs: 1" not in cfg:
                return "the corrected retry's config was not applied"
            return None
        return merge_retry(v, expect_success(second, check))
    return fn


def merge_retry(first: Verdict, second: Verdict) -> Verdict:
    out = Verdict(set(first.flags) | set(second.flags), f"first: {first.evidence}")
    out.add(None, f"retry: {second.evidence}")
    return out


for _k in ("missing_manifest", "no_val_rows", "bad_config"):
    add(f"train/failed_first_train_then_retry/{_k}", "a failed first train leaves nothing that blocks the corrected "
        "retry", _failed_then_retry(_k), "train")


def _config_without_preset(sb: Sandbox) -> Verdict:
    sb.use_data("3d")
    sb.allow(sb.root / "run")
    over = sb.data / "over.yaml"
    over.write_text("first_stage: {optim: {max_epochs: 1}}\n")
    p = sb.spawn("train", "first-stage", "--run", "run", "--config", over, "--data", sb.data / "manifest.csv")
    wait_for(lambda: not p.running(), timeout=25)
    running = p.running()
    p.kill()
    call = p.wait(timeout=30)
    cfg = sb.root / "run" / "config.yaml"
    preset = re.search(r"(?m)^preset: *(\S+)", cfg.read_text()).group(1) if cfg.exists() else None
    if not running and call.rc not in (0, None, -9):
        return expect_error(call, [], r"preset")
    if re.search(r"preset", call.flat, re.I):
        return Verdict().add(None, f"warned about the preset (config.yaml preset {preset})")
    channels = re.search(r"(?m)^  channels: *(\S+)", cfg.read_text()).group(1) if cfg.exists() else "?"
    return Verdict().add("silent", f"training started without a preset and without a word: config.yaml preset "
                                   f"{preset!r}, first_stage.channels {channels} (tiny: 8)")


add("train/config_without_preset", "--config on a new run without --preset: refused or a warning naming the preset "
    "used", _config_without_preset, "train")


def _preset_in_yaml(sb: Sandbox) -> Verdict:
    sb.use_data("3d")
    sb.allow(sb.root / "run")
    over = sb.data / "over.yaml"
    over.write_text("preset: tiny\ntransformer: {optim: {max_epochs: 1}}\n")
    call = sb.cli("train", "first-stage", "--run", "run", "--config", over, "--data", sb.data / "manifest.csv",
                  timeout=120)

    def check() -> str | None:
        cfg = (sb.root / "run" / "config.yaml").read_text()
        return None if re.search(r"(?m)^preset: *tiny", cfg) else "config.yaml does not say preset tiny"
    return expect_success(call, check)


add("train/config_naming_its_preset", "a --config YAML with 'preset: tiny' trains the tiny preset",
    _preset_in_yaml, "train")


def _train_misc(kind: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        sb.use_data("3d")
        if kind == "preset_change":
            sb.use_run("3d")
            call = sb.cli("train", "ldm", "--run", "run", "--preset", "cpu")
            return expect_error(call, ["preset"], r"cpu|tiny")
        if kind == "resume_finished":
            sb.use_run("3d")
            call = sb.cli("train", "ldm", "--run", "run", "--resume")
            return expect_success(call)
        sb.allow(sb.root / "run")
        if kind == "unknown_preset":
            call = sb.cli("train", "first-stage", "--run", "run", "--preset", "tinyy", "--data",
                          sb.data / "manifest.csv")
            return expect_error(call, ["tinyy"], r"preset|unknown")
        if kind == "ldm_without_first_stage":
            call = sb.cli("train", "ldm", "--run", "run", "--preset", "tiny", "--data", sb.data / "manifest.csv")
            return expect_error(call, ["first"], r"first.stage")
        if kind == "nii_as_data":
            call = sb.cli("train", "first-stage", "--run", "run", "--preset", "tiny", "--data",
                          sb.data / "id/train/head-train-000.nii.gz")
            return expect_error(call, ["head-train-000.nii.gz"], r"manifest|csv|utf|text|folder")
        raise ValueError(kind)
    return fn


for _k, _e in (("preset_change", "error naming the run's preset"), ("resume_finished", "'already finished', rc 0"),
               ("unknown_preset", "error naming the unknown preset"),
               ("ldm_without_first_stage", "error: train the first stage first"),
               ("nii_as_data", "error: a scan is not a manifest")):
    add(f"train/{_k}", _e, _train_misc(_k), "train")

