"""Faults in the run directory: model files (NaN weights, flipped bytes, truncated, missing), stage
config.json and DONE, calibration files, config.yaml, and a malicious or truncated resume state.pt.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from .common import LDM, LTM, SEG, M, Sandbox, Verdict, add, expect_error, expect_success, prepare, read_csv, score


def _score_test(sb: Sandbox, m: M, **kw):
    return score(sb, m, "--data", sb.data / "test.csv", **kw)


def _changed_scores(sb: Sandbox, m: M) -> str:
    """'-1.25 → -0.52' for the first test case, against the clean reference."""
    ref = sb.setup.reference[f"{m.name}/test" if m.name != "segment" else "segment/id"]
    st = sb.csv(m.csv_rel())
    out = []
    for cid, r in ref.items():
        row = st.row(cid)
        if row is not None:
            out.append(f"{cid} {float(r['pred_score']):.4g} -> {row['pred_score'][:8]}")
    return "; ".join(out[:2]) or "no rows"


# ----------------------------------------------------------------------------- safetensors surgery

def _tensor_region(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return 8 + n, json.loads(data[8:8 + n])


def _nan_weights(path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    state = load_file(str(path))
    k = next(k for k, v in state.items() if v.dtype.kind == "f" and v.size > 8)
    state[k] = state[k].copy()
    state[k].flat[:5] = np.nan
    save_file(state, str(path))


def _flip_bytes(path: Path, n: int = 50) -> None:
    start, _ = _tensor_region(path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(12)
    for pos in rng.choice(np.arange(start, len(data)), size=n, replace=False):
        data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _model_fault(m: M, stage: str, fault: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        d = sb.run / stage
        target, problem = d / "model.safetensors", None
        if fault == "nan_weights":
            _nan_weights(target)
            problem = r"nan|non-finite|finite"
        elif fault == "flipped_50_bytes":
            _flip_bytes(target)
            problem = r"sha|checksum|corrupt|integrity|changed|modified|damaged"
        elif fault == "truncated_safetensors":
            _truncate(target)
            problem = r"truncat|corrupt|incomplete|unreadable|invalid"
        elif fault == "missing_model":
            target.unlink()
            problem = r"train"
        elif fault == "truncated_config_json":
            target = d / "config.json"
            _truncate(target)
            problem = r"json|truncat|corrupt|invalid|unreadable"
        elif fault == "invalid_config_json":
            target = d / "config.json"
            target.write_text('{"stage": "ldm", "config": [1, 2,, }')
            problem = r"json|corrupt|invalid|unreadable"
        elif fault == "wrong_architecture":
            other = "transformer" if stage != "transformer" else "ldm"
            src = sb.setup.run_dir("3d") / other / "model.safetensors"
            target.write_bytes(src.read_bytes())
            problem = r"shape|mismatch|architecture|key|missing|unexpected|does not match"
        sb.protected.discard(str(target.relative_to(sb.root)))
        call = _score_test(sb, m)
        v = expect_error(call, [target.name, stage], problem)
        if call.rc == 0:
            v.add(None, f"scores {_changed_scores(sb, m)}")
        return v
    return fn


for _m, _stage, _faults in (
        (LDM, "first_stage", ("nan_weights", "flipped_50_bytes", "truncated_safetensors")),
        (LDM, "ldm", ("nan_weights", "flipped_50_bytes", "truncated_safetensors", "missing_model",
                      "truncated_config_json", "invalid_config_json")),
        (LTM, "transformer", ("nan_weights", "flipped_50_bytes", "truncated_safetensors")),
        (SEG, "ldm", ("flipped_50_bytes", "truncated_safetensors"))):
    for _f in _faults:
        add(f"model/{_m.name}/{_stage}/{_f}", "non-zero exit; error names the model file (stage) and the problem",
            _model_fault(_m, _stage, _f), "model")


def _missing_done(m: M, stage: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        (sb.run / stage / "DONE").unlink()
        sb.release(f"run/{stage}/DONE")
        call = _score_test(sb, m)
        if call.rc == 0:
            if "DONE" in call.flat or re.search(r"not finished|unfinished|incomplete", call.flat, re.I):
                return Verdict().add(None, "rc 0 with a warning about the unfinished stage")
            return Verdict().add("silent", f"rc 0: the unfinished {stage} (no DONE) used without a word")
        return expect_error(call, [stage], r"DONE|finish|complete|train")
    return fn


add("model/ldm/ldm/missing_DONE", "score refuses (or warns) on a stage without DONE (an unfinished training)",
    _missing_done(LDM, "ldm"), "model")
add("model/ltm/transformer/missing_DONE", "score refuses (or warns) on a stage without DONE",
    _missing_done(LTM, "transformer"), "model")


# ----------------------------------------------------------------------------- calibration and config faults

def _run_fault(m: M, fault: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        cal = sb.run / "calibration"
        names, problem = [], None
        if fault == "ood_json_truncated":
            t = cal / "ood.json"
            _truncate(t)
            names, problem = ["ood.json"], r"json|truncat|corrupt|invalid|unreadable"
        elif fault == "ood_json_nan_threshold":
            t = cal / "ood.json"
            cal_json = json.loads(t.read_text())
            cal_json["threshold"] = float("nan")
            t.write_text(json.dumps(cal_json, indent=1))
            names, problem = ["ood.json"], r"nan|finite"
        elif fault == "voxel_stats_truncated":
            t = cal / "ood_voxel_stats.safetensors"
            _truncate(t)
            names, problem = ["ood_voxel_stats"], r"truncat|corrupt|invalid|unreadable"
        elif fault == "no_calibration":
            for p in cal.iterdir():
                p.unlink()
            names, problem = ["calibrate"], r"calibrat"
        elif fault == "ltm_json_missing":
            (cal / "ltm.json").unlink()
            names, problem = ["ltm.json"], r"calibrate"
        elif fault == "segment_json_invalid":
            (cal / "segment.json").write_text("{not json")
            names, problem = ["segment.json"], r"json|corrupt|invalid|unreadable"
        elif fault == "segment_thresholds_truncated":
            _truncate(cal / "segment_thresholds.safetensors")
            names, problem = ["segment_thresholds"], r"truncat|corrupt|invalid|unreadable"
        elif fault == "config_yaml_invalid":
            (sb.run / "config.yaml").write_text("data: {grid: [16, 16\nfirst_stage: ][\n")
            names, problem = ["config.yaml"], r"yaml|pars|invalid|line"
        elif fault == "config_yaml_bad_value":
            p = sb.run / "config.yaml"
            assert "num_inference_steps: 10" in p.read_text(), "fault not applicable"
            p.write_text(p.read_text().replace("num_inference_steps: 10", "num_inference_steps: -3"))
            names, problem = ["config.yaml", "num_inference_steps"], r"greater|positive|invalid|must"
        elif fault == "transformer_missing":
            import shutil

            shutil.rmtree(sb.run / "transformer")
            names, problem = ["transformer"], r"train"
        elif fault == "segment_on_3d_run":
            pass
        elif fault == "run_missing":
            pass
        sb.release("run/calibration", "run/transformer")
        if fault == "segment_on_3d_run":
            call = sb.cli("segment", "--run", "run", "--data", sb.data / "test.csv")
            return expect_error(call, [], r"2d|3d|spatial|segment")
        if fault == "run_missing":
            call = sb.cli(*m.command("nosuchrun"), "--data", sb.data / "test.csv")
            return expect_error(call, ["nosuchrun"], r"not found|no such|does not exist|config")
        call = _score_test(sb, m)
        if fault == "ltm_json_missing":  # documented: without a calibration, percentile and flag stay empty
            def empty_flags() -> str | None:
                st = read_csv(sb.root / m.csv_rel())
                full = [r["case_id"] for r in st.rows if r.get("flag") or r.get("percentile")]
                return f"flag/percentile written without a calibration: {full}" if full else None
            return expect_success(call, empty_flags)
        if m is SEG and fault == "no_calibration":  # documented: an uncalibrated variant is calibrated first
            return expect_success(call, lambda: None if (cal / "segment.json").exists() else "no segment.json made")
        return expect_error(call, names, problem)
    return fn


for _m, _faults in ((LDM, ("ood_json_truncated", "ood_json_nan_threshold", "voxel_stats_truncated", "no_calibration",
                           "config_yaml_invalid", "config_yaml_bad_value", "run_missing")),
                    (LTM, ("ltm_json_missing", "transformer_missing")),
                    (SEG, ("segment_json_invalid", "segment_thresholds_truncated", "no_calibration"))):
    for _f in _faults:
        _e = ("segment calibrates an uncalibrated variant first (documented), then segments" if
              (_m is SEG and _f == "no_calibration") else
              "scored with percentile and flag left empty (documented)" if _f == "ltm_json_missing" else
              "non-zero exit; error names the file (or what is missing)")
        add(f"runfile/{_m.name}/{_f}", _e, _run_fault(_m, _f), "model")


# ----------------------------------------------------------------------------- resume state

class _Pwn:
    """Unpickling this creates <case>/PWNED: the proof that a pickle in state.pt was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state_fault(kind: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, LDM)
        d = sb.run / "ldm"
        (d / "DONE").unlink()  # an unfinished stage: --resume reads state.pt
        sb.release("run/ldm")
        marker = sb.root / "PWNED"
        if kind == "malicious_pickle":
            (d / "state.pt").write_bytes(pickle.dumps({"epoch": 1, "x": _Pwn(str(marker))}, protocol=2))
        else:
            _truncate(d / "state.pt", 0.3)
        call = sb.cli("train", "ldm", "--run", "run", "--resume", timeout=120)
        v = expect_error(call, ["state.pt"], r"pickle|unsafe|weights_only|truncat|corrupt|invalid|unreadable")
        if marker.exists():
            v.add("outside_root", "the pickle in state.pt was executed (PWNED written)")
        return v
    return fn


add("model/state_pt/malicious_pickle", "train --resume refuses state.pt without executing it, naming the file",
    _state_fault("malicious_pickle"), "model")
add("model/state_pt/truncated", "train --resume: error naming state.pt (corrupt), no traceback",
    _state_fault("truncated"), "model")
