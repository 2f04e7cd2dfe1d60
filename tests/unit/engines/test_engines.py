"""Inference engines (``ldm_ood.engines``): each engine equals PyTorch eager fp32 within its stated
tolerance on the tiny networks, exported files are keyed by the weights and checked before reuse,
and ``engine: auto`` only ever picks an engine that passed its check."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.engines import onnx_runtime, openvino_engine, select
from ldm_ood.engines.artifacts import file_sha256
from ldm_ood.engines.base import FP32_TENSOR_TOLERANCE, FP32_TOLERANCE, tolerances
from ldm_ood.engines.networks import decoder_spec, encoder_spec, lpips_trunk_spec, unet_spec
from ldm_ood.engines.select import build_engine, checked_engine, choose_engine, reference_outputs
from ldm_ood.errors import EngineMismatchError, EngineUnavailableError
from ldm_ood.models.diffusion import build_unet
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.models.perceptual import load_lpips
from ldm_ood.precision_policy import INFER_TENSOR_TOLERANCE, INFER_TOLERANCE

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = load_config(preset="tiny")
GRID = (16, 16, 16)


def _random(module: torch.nn.Module) -> torch.nn.Module:
    """MONAI zero-initialises the UNet's output convolution: give every all-zero parameter random values
    so the outputs (and any engine's error) are not trivially zero."""
    torch.manual_seed(1)
    for p in module.parameters():
        if not p.detach().abs().sum():
            torch.nn.init.normal_(p, 0.0, 0.05)
    return module.eval()


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    fs = _random(build_first_stage(CFG.first_stage, 3))
    unet = _random(build_unet(CFG.ldm, 3, CFG.first_stage.embedding_dim))
    return {"first_stage": fs, "unet": unet, "lpips": load_lpips()}


def _spec(nets, network: str, batch: int = 2):
    if network == "unet":
        return unet_spec(nets["unet"], (CFG.first_stage.embedding_dim, 4, 4, 4), batch, timestep=300)
    if network == "encoder":
        return encoder_spec(nets["first_stage"], (1, *GRID), batch)
    if network == "decoder":
        return decoder_spec(nets["first_stage"], (1, *GRID), batch)
    return lpips_trunk_spec(nets["lpips"], GRID[1:], batch)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_tolerances_are_the_stated_ones():
    assert tolerances("fp32") == (FP32_TOLERANCE, FP32_TENSOR_TOLERANCE) == (1e-4, 1e-3)
    assert tolerances("bf16") == (INFER_TOLERANCE, INFER_TENSOR_TOLERANCE) == (0.02, 0.05)


EXPORTED = [(e, p) for e in ("onnxruntime", "openvino") for p in ("fp32", "bf16")
            if not (e == "onnxruntime" and p == "bf16")]


@pytest.mark.parametrize("network", ["unet", "encoder", "decoder", "lpips"])
@pytest.mark.parametrize("engine,precision", [("eager", "bf16"), *EXPORTED])
def test_engine_equals_eager_fp32_within_its_tolerance(nets, tmp_path, network, engine, precision):
    """On the probe and on another batch size (the batch axis is dynamic), every output tensor of the
    engine is within the precision's per-tensor tolerance of eager fp32, and all of them within the overall one."""
    spec = _spec(nets, network)
    eng, _ = build_engine(engine, spec, precision, tmp_path)
    overall, per_tensor = tolerances(precision)
    for s in (spec, spec.with_batch(3)):
        ref = select.reference_outputs(s)
        got = eng(*s.example)
        assert [g.shape for g in got] == [r.shape for r in ref] and all(g.dtype == torch.float32 for g in got)
        errs = [_rel(g, r) for g, r in zip(got, ref)]
        total = float(sum((g.double() - r.double()).square().sum() for g, r in zip(got, ref)).sqrt()
                      / sum(r.double().square().sum() for r in ref).sqrt())
        assert max(errs) <= per_tensor and total <= overall, (errs, total)
        if precision == "bf16":
            assert total > 0  # really ran in bf16 (eager fp32 would be exact)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_lpips_trunk_equals_eager_fp32(nets, precision):
    """torch.compile (inductor, frozen weights) of the LPIPS trunk: within the tolerance (the smallest
    network to compile; the UNet takes minutes on one thread, measured by the benchmark)."""
    spec = _spec(nets, "lpips")
    eng, agreement = checked_engine("compile", spec, precision)
    assert agreement.ok and eng.name == "compile"
    got, ref = eng(*spec.example), reference_outputs(spec)
    assert max(_rel(g, r) for g, r in zip(got, ref)) <= tolerances(precision)[1]


def test_onnxruntime_has_no_bf16(nets, tmp_path):
    with pytest.raises(EngineUnavailableError, match="bf16"):
        build_engine("onnxruntime", _spec(nets, "decoder"), "bf16", tmp_path)


def test_exported_file_is_rebuilt_when_the_weights_change(nets, tmp_path):
    fs = build_first_stage(CFG.first_stage, 3).eval()
    fs.load_state_dict(nets["first_stage"].state_dict())
    spec = decoder_spec(fs, (1, *GRID), 2)
    _, first = build_engine("onnxruntime", spec, "fp32", tmp_path)
    _, again = build_engine("onnxruntime", spec, "fp32", tmp_path)
    assert not first.reused and again.reused and again.paths == first.paths
    with torch.no_grad():
        next(fs.decoder.parameters()).add_(0.05)
    eng, changed = build_engine("onnxruntime", spec, "fp32", tmp_path)
    assert not changed.reused and changed.paths[0] != first.paths[0] and first.paths[0].exists()
    ref_new = reference_outputs(spec)[0]
    assert _rel(eng(*spec.example)[0], ref_new) <= FP32_TOLERANCE  # the new weights, not the cached file's
    manifest = json.loads(changed.manifest.read_text())
    old = json.loads(first.manifest.read_text())["sha256"][first.paths[0].name]
    assert manifest["sha256"][changed.paths[0].name] != old


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_tampered_cached_file_is_detected_and_rebuilt(nets, tmp_path, engine):
    spec = _spec(nets, "decoder")
    _, art = build_engine(engine, spec, "fp32", tmp_path)
    target = art.paths[-1]  # .onnx, or OpenVINO's weights .bin
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="sha256 differs"):
        eng, rebuilt = build_engine(engine, spec, "fp32", tmp_path)
    assert not rebuilt.reused and "sha256 differs" in rebuilt.problem
    assert _rel(eng(*spec.example)[0], reference_outputs(spec)[0]) <= FP32_TOLERANCE


def test_cached_file_of_another_network_fails_its_probe_check(nets, tmp_path):
    """A file whose manifest was rewritten to match (so its sha256 passes) but that computes something
    else is caught on first use by the probe comparison, and rebuilt."""
    spec = _spec(nets, "decoder")
    _, art = build_engine("onnxruntime", spec, "fp32", tmp_path)
    other = build_first_stage(CFG.first_stage, 3).eval()  # other random weights, same graph
    onnx_runtime.export(decoder_spec(other, (1, *GRID), 2), tmp_path / "other")
    art.paths[0].write_bytes((tmp_path / "other.onnx").read_bytes())
    meta = json.loads(art.manifest.read_text())
    meta["sha256"][art.paths[0].name] = file_sha256(art.paths[0])
    art.manifest.write_text(json.dumps(meta))
    assert build_engine("onnxruntime", spec, "fp32", tmp_path)[1].reused  # the manifest check passes ...
    with pytest.warns(UserWarning, match="differs from PyTorch"):
        eng, agreement = checked_engine("onnxruntime", spec, "fp32", tmp_path)  # ... the probe check does not
    assert agreement.ok and agreement.rel_error <= FP32_TOLERANCE


def test_auto_never_picks_an_engine_that_fails_its_check(nets, tmp_path, monkeypatch):
    """ONNX Runtime made 2 % off (and instant): auto reports it as a mismatch and picks among the others."""
    original = onnx_runtime.OnnxRuntimeEngine.__call__
    monkeypatch.setattr(onnx_runtime.OnnxRuntimeEngine, "__call__",
                        lambda self, *x: [y * 1.02 for y in original(self, *x)])
    spec = _spec(nets, "decoder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng, choice = choose_engine("auto", spec, "fp32", tmp_path, repeats=1, use_cache=False)
    assert "mismatch" in choice.measured["onnxruntime"]
    passed = {k: v for k, v in choice.measured.items() if v.get("ok")}
    assert {"eager", "openvino"} <= set(passed) and "onnxruntime" not in passed
    assert choice.engine == min(passed, key=lambda k: passed[k]["ms"]) and eng.name == choice.engine
    assert _rel(eng(*spec.example)[0], reference_outputs(spec)[0]) <= FP32_TOLERANCE


def test_auto_measures_once_per_machine(nets, tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_OOD_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec(nets, "encoder")
    names = ("eager", "onnxruntime", "openvino")
    monkeypatch.setattr(select, "ENGINES", names)
    _, first = choose_engine("auto", spec, "fp32", tmp_path, repeats=1)
    assert not first.cached and set(first.measured) == set(names)
    assert first.engine == min(first.measured, key=lambda k: first.measured[k]["ms"])
    calls = []
    monkeypatch.setattr(select, "measure_engines", lambda *a, **k: calls.append(1))
    eng, second = choose_engine("auto", spec, "fp32", tmp_path, repeats=1)
    assert second.cached and second.engine == first.engine and eng.name == first.engine and not calls
    assert json.loads((tmp_path / "cache" / "engines.json").read_text())


def test_missing_package_is_unavailable_never_a_crash(nets, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnxruntime", "openvino") else real(name, *a))
    spec = _spec(nets, "encoder")
    with pytest.warns(UserWarning, match="not installed"):
        eng, choice = choose_engine("openvino", spec, "fp32", tmp_path)
    assert eng.name == "eager" and choice.engine == "eager" and "not installed" in choice.reason
    monkeypatch.setattr(select, "ENGINES", ("eager", "onnxruntime", "openvino"))
    eng, choice = choose_engine("auto", spec, "fp32", tmp_path, repeats=1, use_cache=False)
    assert choice.engine == "eager" and "not installed" in choice.measured["onnxruntime"]["unavailable"]
    assert "not installed" in openvino_engine.unavailable_reason()


def _off_by_one(module, name):
    original = getattr(module, name).__call__
    return lambda self, *x: [y + 1 for y in original(self, *x)]


def _raises(module, name):  # as torch.compile's stride guard did on a cached choice's recompile
    def broken(self, *x):
        raise AssertionError("expected size 32==32, stride 1==32768 at dim=1")
    return broken


@pytest.mark.parametrize("engine, module, cls, fault, error, message", [
    ("openvino", openvino_engine, "OpenVinoEngine", _off_by_one, EngineMismatchError, "differs from PyTorch fp32"),
    ("onnxruntime", onnx_runtime, "OnnxRuntimeEngine", _raises, EngineUnavailableError,
     "failed on the probe of decoder .AssertionError: expected size"),
])
def test_forced_engine_that_disagrees_or_raises_falls_back_to_eager_loudly(
        nets, tmp_path, monkeypatch, engine, module, cls, fault, error, message):
    monkeypatch.setattr(getattr(module, cls), "__call__", fault(module, cls))
    spec = _spec(nets, "decoder")
    with pytest.raises(error, match=message):
        checked_engine(engine, spec, "fp32", tmp_path)
    with pytest.warns(UserWarning, match="running PyTorch eager instead"):
        eng, choice = choose_engine(engine, spec, "fp32", tmp_path)
    assert eng.name == "eager" and choice.engine == "eager"


def test_bf16_hint_too_inaccurate_rejects_the_engine_without_rebuilding_an_intact_file(nets, tmp_path, monkeypatch):
    """The OpenVINO IR serves both hints: when only bf16 disagrees (as OpenVINO bf16 does on the cpu
    preset's UNet), the file agrees in fp32, so it is kept and only the bf16 engine is rejected."""
    spec = _spec(nets, "decoder")
    _, art = build_engine("openvino", spec, "fp32", tmp_path)
    written = {p: p.stat().st_mtime_ns for p in (*art.paths, art.manifest)}
    original = openvino_engine.OpenVinoEngine.__call__
    monkeypatch.setattr(openvino_engine.OpenVinoEngine, "__call__", lambda self, *x: [
        y * (1.1 if self.precision == "bf16" else 1.0) for y in original(self, *x)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rebuilding" warning
        with pytest.raises(EngineMismatchError, match="openvino bf16 output of decoder differs"):
            checked_engine("openvino", spec, "bf16", tmp_path)
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert checked_engine("openvino", spec, "fp32", tmp_path)[1].ok
