"""Building an engine for a network, checking it against PyTorch, and ``engine: auto``.

:func:`choose_engine` resolves ``score.engine`` for one network (:class:`~.networks.NetworkSpec`)
at the precision already chosen for it (``score.precision``, ``methods.inference_precision``):

* ``eager`` — PyTorch as before (exactly the behaviour without engines);
* ``compile`` | ``onnxruntime`` | ``openvino`` — that engine, checked on the probe input against
  eager fp32 within its tolerance (``engines.base``). An engine that is unavailable (package
  missing, no bf16 kernels, export failed) or that disagrees falls back to eager **with a loud
  warning** (``warnings.warn`` and the choice's ``reason``): scoring goes on, in PyTorch;
* ``auto`` — every engine is built and checked; those that agree are timed on the probe (median of
  ``repeats`` calls after one warm-up) and the fastest is kept. Eager always qualifies, so auto
  never picks an engine that failed its check and never does worse than eager on the probe. The
  measurement is cached per machine in ``$LDM_OOD_CACHE_DIR/engines.json`` (beside the precision
  cache) under a key of the machine (CPU model, bf16 ISA, torch version, torch threads), the
  installed engine versions, the network's parameter shapes, the probe shapes and the precision;
  a cached choice is still checked on the probe when it is built.

Exported files (ONNX, OpenVINO IR) live in ``artifact_dir`` (the run's ``engines/``; a read-only
model bundle uses the cache folder), keyed by the weights' sha256 (``engines.artifacts``). A
reused file whose probe check fails is rebuilt once; if the rebuilt one fails too, the engine is
rejected (:class:`~ldm_ood.errors.EngineMismatchError`), i.e. eager with a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts.atomic import atomic_write_text
from ..errors import EngineMismatchError, EngineUnavailableError, OutputError
from ..precision_policy import cache_path, machine_fingerprint, median_seconds, network_signature, read_cache
from . import onnx_runtime, openvino_engine
from .artifacts import Artifact, artifact_key, cached_artifact
from .base import ENGINES, Agreement, Engine, compare, tolerances
from .networks import NetworkSpec
from .torch_compile import CompiledEngine
from .torch_eager import EagerEngine

REQUESTS: tuple[str, ...] = ("auto", *ENGINES)
REPEATS = 3

_EXPORTERS = {"onnxruntime": onnx_runtime, "openvino": openvino_engine}


@dataclass
class EngineChoice:
    """The engine a network runs on, and why. ``measured``: per engine, its agreement with eager fp32
    (``rel_error``, ``max_abs_error``, ``max_rel_error``, ``ok``) and ``ms`` per probe call, or ``unavailable``."""

    network: str
    requested: str
    engine: str
    precision: str
    reason: str
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    cached: bool = False

    def line(self) -> str:
        return f"{self.network}: {self.engine} {self.precision} ({self.requested}: {self.reason})"

    def as_dict(self) -> dict:
        return asdict(self)


def engine_cache_path() -> Path:
    """``engines.json`` beside the precision cache (``precision_policy.cache_path``)."""
    return cache_path().with_name("engines.json")


def default_artifact_dir() -> Path:
    """Where exported files go when the run directory cannot hold them (a read-only bundle)."""
    return cache_path().parent / "engines"


def _export_version(name: str) -> str:
    return _EXPORTERS[name].version()


def _artifact(name: str, spec: NetworkSpec, precision: str, artifact_dir: Path, rebuild: bool) -> Artifact:
    mod = _EXPORTERS[name]
    shared_precision = "any" if name == "openvino" else precision  # one IR for both hints
    key = artifact_key(spec.module, spec.shapes, shared_precision, name, _export_version(name))
    meta = {"network": spec.name, "engine": name, "shapes": [list(s[1:]) for s in spec.shapes],
            "version": _export_version(name)}
    return cached_artifact(Path(artifact_dir), f"{spec.name}-{name}-{key}", mod.SUFFIXES,
                           lambda stem: mod.export(spec, stem), meta, rebuild)


def build_engine(name: str, spec: NetworkSpec, precision: str, artifact_dir: Path | None = None,
                 rebuild: bool = False) -> tuple[Engine, Artifact | None]:
    """``(engine, its exported artifact or None)`` for ``spec`` at ``precision``; not yet checked.

    Raises :class:`EngineUnavailableError` when the engine cannot run here."""
    if name == "eager":
        return EagerEngine(spec.module, precision, spec.spatial_dims), None
    if name == "compile":
        return CompiledEngine(spec.module, precision, spec.spatial_dims), None
    if name not in _EXPORTERS:
        raise ValueError(f"unknown engine {name!r}; one of {', '.join(ENGINES)}")
    reason = _EXPORTERS[name].unavailable_reason(precision)
    if reason:
        raise EngineUnavailableError(reason)
    art = _artifact(name, spec, precision, artifact_dir or default_artifact_dir(), rebuild)
    if name == "onnxruntime":
        return onnx_runtime.OnnxRuntimeEngine(art.paths[0], spec.input_names), art
    return openvino_engine.OpenVinoEngine(art.paths[0], precision), art


def reference_outputs(spec: NetworkSpec) -> list[torch.Tensor]:
    """Eager fp32 outputs on the probe: what every engine is compared with."""
    return EagerEngine(spec.module, "fp32", spec.spatial_dims)(*spec.example)


def checked_engine(name: str, spec: NetworkSpec, precision: str, artifact_dir: Path | None = None,
                   reference: list[torch.Tensor] | None = None) -> tuple[Engine, Agreement]:
    """:func:`build_engine` and its check on the probe against eager fp32 (:func:`reference_outputs`).

    A reused exported file that fails is rebuilt once (with a warning), unless the same file agrees at fp32
    (then the file is intact and only the bf16 hint is too inaccurate for this network); raises
    :class:`EngineMismatchError` (naming the file) when the engine still disagrees, and
    :class:`EngineUnavailableError` when building it or running it on the probe raises (e.g. an inductor
    stride guard), so every caller falls back or measures again instead of stopping."""
    reference = reference if reference is not None else reference_outputs(spec)
    try:
        engine, art = build_engine(name, spec, precision, artifact_dir)
        probe = engine(*spec.example)
    except (EngineUnavailableError, EngineMismatchError, ValueError):
        raise
    except Exception as err:  # a compiler or runtime fault on the probe: this engine cannot run this network
        first = (str(err).splitlines() or [""])[0][:300]
        raise EngineUnavailableError(f"{name} {precision} failed on the probe of {spec.name} "
                                     f"({type(err).__name__}: {first})") from err
    agreement = compare(probe, reference, precision)
    if not agreement.ok and art is not None and art.reused and not _agrees_in_fp32(name, spec, precision, artifact_dir,
                                                                                reference):
        warnings.warn(f"{art.paths[0]}: the cached {name} file of {spec.name} differs from PyTorch "
                      f"({agreement.describe()}); rebuilding it", stacklevel=2)
        engine, art = build_engine(name, spec, precision, artifact_dir, rebuild=True)
        agreement = compare(engine(*spec.example), reference, precision)
    if not agreement.ok:
        where = art.paths[0] if art is not None else None
        raise EngineMismatchError(where, f"{name} {precision} output of {spec.name} differs from PyTorch fp32: "
                                         f"{agreement.describe()}")
    return engine, agreement


def _agrees_in_fp32(name: str, spec: NetworkSpec, precision: str, artifact_dir: Path | None,
                    reference: list[torch.Tensor]) -> bool:
    """Whether the exported file of a ``precision`` engine that disagreed computes the network right in fp32."""
    if precision == "fp32":
        return False
    try:
        engine, _ = build_engine(name, spec, "fp32", artifact_dir)
    except EngineUnavailableError:
        return False
    return compare(engine(*spec.example), reference, "fp32").ok


def _facts(agreement: Agreement) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return float(f"{v:.4g}") if math.isfinite(v) else None

    return {"rel_error": num(agreement.rel_error), "max_abs_error": num(agreement.max_abs_error),
            "max_rel_error": num(agreement.max_rel_error), "ok": agreement.ok}


def _cache_key(spec: NetworkSpec, precision: str) -> str:
    versions = {}
    for name, mod in _EXPORTERS.items():
        versions[name] = None if mod.unavailable_reason() else mod.version()
    src = json.dumps([machine_fingerprint("cpu"), torch.get_num_threads(), versions, spec.name, precision,
                      tolerances(precision), network_signature([spec.module], *spec.shapes)], sort_keys=True)
    return hashlib.sha256(src.encode()).hexdigest()[:24]


def _write_engine_cache(key: str, choice: EngineChoice) -> None:
    path = engine_cache_path()
    data = read_cache(path)
    data[key] = {k: v for k, v in choice.as_dict().items() if k != "cached"}
    try:
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OutputError:
        pass  # a read-only cache folder: measured again next time


def _fallback(spec: NetworkSpec, precision: str, requested: str, why: str,
              measured=None) -> tuple[Engine, EngineChoice]:
    warnings.warn(f"engine {requested!r} not used for {spec.name}, running PyTorch eager instead: {why}", stacklevel=3)
    return (EagerEngine(spec.module, precision, spec.spatial_dims),
            EngineChoice(spec.name, requested, "eager", precision, f"fell back to eager: {why}", measured or {}))


def measure_engines(spec: NetworkSpec, precision: str, artifact_dir: Path | None = None, repeats: int = REPEATS,
                    names: tuple[str, ...] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Engine]]:
    """Every engine of ``names`` on ``spec``'s probe: ``({name: facts}, {name: engine that passed})``;
    facts are :func:`_facts` plus ``ms`` (median per call) or ``unavailable`` / ``mismatch`` (why);
    ``names``: default every engine."""
    reference = reference_outputs(spec)
    measured: dict[str, dict[str, Any]] = {}
    passed: dict[str, Engine] = {}
    for name in names or ENGINES:
        try:
            engine, agreement = checked_engine(name, spec, precision, artifact_dir, reference)
        except EngineUnavailableError as err:
            measured[name] = {"unavailable": str(err)}
            continue
        except EngineMismatchError as err:
            measured[name] = {"mismatch": str(err)}
            continue
        seconds = median_seconds(lambda: engine(*spec.example), repeats, torch.device("cpu"))
        measured[name] = {**_facts(agreement), "ms": round(1000 * seconds, 3)}
        passed[name] = engine
    return measured, passed


def choose_engine(requested: str, spec: NetworkSpec, precision: str, artifact_dir: Path | None = None,
                  repeats: int = REPEATS, use_cache: bool = True) -> tuple[Engine, EngineChoice]:
    """``(engine, choice)`` for ``requested`` (``auto | eager | compile | onnxruntime | openvino``); see the module."""
    if requested not in REQUESTS:
        raise ValueError(f"engine must be one of {', '.join(REQUESTS)}, got {requested!r}")
    if requested == "eager":
        return (EagerEngine(spec.module, precision, spec.spatial_dims),
                EngineChoice(spec.name, requested, "eager", precision, "set in the configuration"))
    if requested != "auto":
        try:
            engine, agreement = checked_engine(requested, spec, precision, artifact_dir)
        except (EngineUnavailableError, EngineMismatchError) as err:
            return _fallback(spec, precision, requested, str(err))
        return engine, EngineChoice(spec.name, requested, requested, precision,
                                    f"set in the configuration, {agreement.describe()}", {requested: _facts(agreement)})
    key = _cache_key(spec, precision)
    hit = read_cache(engine_cache_path()).get(key) if use_cache else None
    if isinstance(hit, dict) and hit.get("engine") in ENGINES:
        try:
            engine, _ = checked_engine(hit["engine"], spec, precision, artifact_dir)
            return engine, EngineChoice(**{**hit, "cached": True})
        except (EngineUnavailableError, EngineMismatchError, TypeError) as err:
            warnings.warn(f"cached engine choice for {spec.name} no longer holds ({err}); measuring again",
                          stacklevel=2)
    measured, passed = measure_engines(spec, precision, artifact_dir, repeats)
    if not passed:  # not even eager bf16 within the bf16 tolerance: precision's own choice stands, in eager
        engine, choice = _fallback(spec, precision, requested, "no engine matched PyTorch fp32", measured)
    else:
        best = min(passed, key=lambda n: measured[n]["ms"])
        speed = measured["eager"]["ms"] / measured[best]["ms"] if "eager" in passed else math.nan
        choice = EngineChoice(spec.name, requested, best, precision,
                              f"fastest measured ({measured[best]['ms']:.3g} ms per call, {speed:.2f}x eager)"
                              if best != "eager" else "eager measured fastest", measured)
        engine = passed[best]
    if use_cache:
        _write_engine_cache(key, choice)
    return engine, choice
