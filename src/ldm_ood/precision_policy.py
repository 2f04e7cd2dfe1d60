"""Precision policy ``auto | fp32 | bf16``, measured per network and cached per machine.

``fp32`` and ``bf16`` are taken as given. ``auto`` (the default everywhere) runs a self-check of a
few seconds on the run's own network with the run's own input shape (:func:`choose_precision`):

1. the CPU (or GPU) must support bf16 natively (AMX or AVX-512 bf16 on x86; any CUDA device);
2. the probe (one forward pass for inference, forward + backward for training) runs in fp32 and
   under bf16 autocast from identical inputs; every bf16 result must be finite and agree with the
   fp32 one: relative L2 error over all its tensors together ≤ ``tolerance``, and for *each*
   tensor (output, or one parameter's gradient) ≤ ``tensor_tolerance``. The aggregate alone
   hides a wrong layer: the CPU weight-gradient fault in ``ldm_ood.precision`` gave 0.3 % overall
   and 80-100 % (or Inf) on the layers it hit, while ordinary bf16 rounding stays below ~20 % even
   on the parameters with the smallest gradients (measured on the demo-preset VQ-GAN: median 0.7 %);
3. bf16 must be at least ``min_speedup`` × faster (median of ``repeats`` timed calls each, after
   one warm-up).

Otherwise ``auto`` picks fp32 and says why in one line. The answer is cached in
``$LDM_OOD_CACHE_DIR/precision.json`` (default ``~/.cache/ldm-ood``, or ``$XDG_CACHE_HOME/ldm-ood``)
under a key of the machine (CPU model and bf16 flags, GPU name, torch version, which fixes its bundled oneDNN), the
network's parameter shapes, the input shape and the check's thresholds: the check runs once per
machine and network. Each :class:`PrecisionChoice` is recorded by the caller (a training stage's
``precision.json``, calibration and score files, ``summary.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

#: defaults of the self-check: a training gradient may differ more than an inference output
TRAIN_TOLERANCE = 0.05  # all gradients together
TRAIN_TENSOR_TOLERANCE = 0.5  # any one parameter's gradient
INFER_TOLERANCE = 0.02  # outputs
INFER_TENSOR_TOLERANCE = 0.05
MIN_SPEEDUP = 1.15
REPEATS = 3


@dataclass
class PrecisionChoice:
    """What a network runs in, and why. ``speedup`` = fp32 seconds / bf16 seconds of the probe."""

    network: str
    requested: str
    bf16: bool
    reason: str
    speedup: float | None = None
    rel_error: float | None = None  # all tensors together
    max_rel_error: float | None = None  # worst single tensor
    fp32_seconds: float | None = None
    bf16_seconds: float | None = None
    cached: bool = False

    @property
    def dtype(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def line(self) -> str:
        """One line for the terminal: ``"ldm (training): bf16 (auto: 1.9x faster, within 0.4 % of fp32)"``."""
        return f"{self.network}: {self.dtype} ({self.requested}: {self.reason})"

    def as_dict(self) -> dict:
        return {"precision": self.dtype, **asdict(self)}


# --------------------------------------------------------------------------- machine


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def machine_fingerprint(device: torch.device | str = "cpu") -> dict[str, str | bool]:
    """What the self-check's answer depends on besides the network: CPU/GPU, bf16 ISA, library versions."""
    device = torch.device(device)
    model, flags = _cpu_model_and_flags()
    out: dict[str, str | bool] = {
        "cpu": model,
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "torch": torch.__version__,
        "device": device.type,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def bf16_supported(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """``(supported, why)``: native bf16 arithmetic on ``device`` (emulated bf16 is slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return (torch.cuda.is_bf16_supported(), f"GPU {torch.cuda.get_device_name(device)}")
    fp = machine_fingerprint(device)
    if fp["amx_bf16"]:
        return True, "CPU with AMX"
    if fp["avx512_bf16"]:
        return True, "CPU with AVX-512 bf16, no AMX"
    return False, "this CPU has no native bf16 (neither AMX nor AVX-512 bf16)"


# --------------------------------------------------------------------------- cache


def cache_path() -> Path:
    """``precision.json`` in ``$LDM_OOD_CACHE_DIR``, else ``$XDG_CACHE_HOME/ldm-ood``, else ``~/.cache/ldm-ood``."""
    if os.environ.get("LDM_OOD_CACHE_DIR"):
        return Path(os.environ["LDM_OOD_CACHE_DIR"]) / "precision.json"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ldm-ood" / "precision.json"


def read_cache(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when missing or unreadable (a machine cache is only a shortcut)."""
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: measure again


def _write_cache(path: Path, key: str, choice: PrecisionChoice) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_cache(path)
        data[key] = {k: v for k, v in asdict(choice).items() if k != "cached"}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the check simply runs again next time


def network_signature(modules: Iterable[torch.nn.Module], *shapes: Sequence[int]) -> str:
    """Parameter names and shapes of ``modules`` plus the probe's input ``shapes``, hashed."""
    h = hashlib.sha256()
    for m in modules:
        h.update(type(m).__name__.encode())
        for name, p in m.named_parameters():
            h.update(f"{name}{tuple(p.shape)}".encode())
    h.update(repr([tuple(s) for s in shapes]).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the check


def relative_errors(test: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> list[float]:
    """‖a − b‖ / ‖b‖ per tensor pair (0 where both are zero, inf where only ``b`` is zero or ``a`` is not finite)."""
    out = []
    for a, b in zip(test, reference):
        a, b = a.detach().double(), b.detach().double()
        if not torch.isfinite(a).all():
            out.append(math.inf)
            continue
        nb, nd = b.norm().item(), (a - b).norm().item()
        out.append(0.0 if nd == 0 else (nd / nb if nb > 0 else math.inf))
    return out


def total_relative_error(test: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all tensors concatenated (inf when any ``a`` is not finite)."""
    num = den = 0.0
    for a, b in zip(test, reference):
        a, b = a.detach().double(), b.detach().double()
        if not torch.isfinite(a).all():
            return math.inf
        num += (a - b).square().sum().item()
        den += b.square().sum().item()
    return 0.0 if num == 0 else (math.sqrt(num / den) if den > 0 else math.inf)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` (CUDA synchronised around each)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Measurement:
    """One self-check: per-tensor and total relative errors of bf16 against fp32, and median seconds."""

    errors: list[float]
    total_error: float
    fp32_seconds: float
    bf16_seconds: float
    finite: bool


def measure(
    probe: Callable[[bool], Sequence[torch.Tensor]], device: torch.device, repeats: int = REPEATS
) -> Measurement:
    """Run ``probe(False)`` and ``probe(True)`` (one warm-up, then ``repeats`` timed calls each)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        ref = [t.detach().clone() for t in probe(False)]  # also the warm-up
        t32 = median_seconds(lambda: probe(False), repeats, device)
        test = [t.detach().clone() for t in probe(True)]
        t16 = median_seconds(lambda: probe(True), repeats, device)
    finite = all(bool(torch.isfinite(t).all()) for t in test)
    return Measurement(relative_errors(test, ref), total_relative_error(test, ref), t32, t16, finite)


def choose_precision(
    requested: str,
    network: str,
    probe: Callable[[bool], Sequence[torch.Tensor]],
    signature: str,
    device: torch.device | str = "cpu",
    tolerance: float = INFER_TOLERANCE,
    tensor_tolerance: float = INFER_TENSOR_TOLERANCE,
    min_speedup: float = MIN_SPEEDUP,
    repeats: int = REPEATS,
    use_cache: bool = True,
) -> PrecisionChoice:
    """Resolve ``requested`` (``auto | fp32 | bf16``) for ``network``; see the module docstring.

    ``probe(bf16)`` returns the tensors to compare (outputs, or loss and gradients); it must be
    deterministic for a given flag. ``signature`` identifies the network and input shapes
    (:func:`network_signature`).
    """
    device = torch.device(device)
    if requested == "fp32":
        return PrecisionChoice(network, requested, False, "set in the configuration")
    if requested == "bf16":
        return PrecisionChoice(network, requested, True, "set in the configuration")
    if requested != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    ok, why = bf16_supported(device)
    if not ok:
        return PrecisionChoice(network, requested, False, why)
    key_src = json.dumps([machine_fingerprint(device), network, signature, tolerance, tensor_tolerance, min_speedup],
                         sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    path = cache_path()
    if use_cache:
        hit = read_cache(path).get(key)
        if isinstance(hit, dict):
            try:
                return PrecisionChoice(**{**hit, "cached": True})
            except TypeError:
                pass  # an entry of another format: measure again
    try:
        m = measure(probe, device, repeats)
    except RuntimeError as err:  # a bf16 kernel that is missing or fails on this device
        choice = PrecisionChoice(network, requested, False, f"bf16 self-check failed ({type(err).__name__}: {err})")
    else:
        choice = _decide(network, requested, m, tolerance, tensor_tolerance, min_speedup, why)
    if use_cache:
        _write_cache(path, key, choice)
    return choice


def _json_number(v: float) -> float | None:
    """``v`` rounded, or None for Inf/NaN (JSON has neither)."""
    return round(v, 5) if math.isfinite(v) else None


def _decide(network: str, requested: str, m: Measurement, tolerance: float, tensor_tolerance: float,
            min_speedup: float, why: str) -> PrecisionChoice:
    worst = max(m.errors) if m.errors else 0.0
    speedup = m.fp32_seconds / m.bf16_seconds if m.bf16_seconds > 0 else math.inf
    facts = dict(speedup=round(speedup, 3), rel_error=_json_number(m.total_error), max_rel_error=_json_number(worst),
                 fp32_seconds=round(m.fp32_seconds, 4), bf16_seconds=round(m.bf16_seconds, 4))
    if not m.finite:
        return PrecisionChoice(network, requested, False, "bf16 self-check gave non-finite values", **facts)
    if m.total_error > tolerance or worst > tensor_tolerance:
        return PrecisionChoice(
            network, requested, False,
            f"bf16 differs from fp32 by {100 * m.total_error:.2g} % overall, {100 * worst:.2g} % on the worst tensor "
            f"(tolerances {100 * tolerance:.2g} % / {100 * tensor_tolerance:.2g} %)", **facts)
    if speedup < min_speedup:
        return PrecisionChoice(network, requested, False,
                               f"bf16 only {speedup:.2f}x as fast as fp32 (needs {min_speedup:.2f}x)", **facts)
    return PrecisionChoice(network, requested, True,
                           f"bf16 {speedup:.2f}x as fast as fp32, within {100 * m.total_error:.2g} % ({why})", **facts)
