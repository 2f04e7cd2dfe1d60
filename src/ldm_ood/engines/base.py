"""What every inference engine is: a network behind a tensor-in, tensors-out call, and its tolerance.

An engine runs one of the scoring networks (:mod:`.networks`: the UNet, the first stage's encoder
and decoder, the LPIPS trunk) on CPU tensors and returns float32 tensors:
``engine(*inputs) -> list[Tensor]``. The engines (``ENGINES``):

* ``eager`` — PyTorch as written (:mod:`.torch_eager`), fp32 or bf16 autocast in channels-last;
* ``compile`` — ``torch.compile`` (inductor, weights frozen into the graph; :mod:`.torch_compile`);
* ``onnxruntime`` — the network exported to ONNX, run by ONNX Runtime's CPU execution provider,
  fp32 only (:mod:`.onnx_runtime`);
* ``openvino`` — the network converted to OpenVINO, compiled for CPU with an fp32 or bf16
  inference-precision hint (:mod:`.openvino_engine`).

**Tolerances** (``within_tolerance``): an engine's outputs on the probe input are compared with
PyTorch eager fp32 on the same input by relative L2 error ‖a − b‖ / ‖b‖, over all its output
tensors together and for each output tensor alone:

* fp32 engines: ≤ ``FP32_TOLERANCE`` = 1e-4 overall and ≤ ``FP32_TENSOR_TOLERANCE`` = 1e-3 per
  tensor (only the order of float32 sums may differ: measured ≤ 1e-6);
* bf16 engines: the project's bf16 inference tolerances (``precision_policy.INFER_TOLERANCE`` = 2 %
  overall, ``INFER_TENSOR_TOLERANCE`` = 5 % per tensor), the same the ``precision: auto`` check uses.

Every output must also be finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch

from ..precision_policy import INFER_TENSOR_TOLERANCE, INFER_TOLERANCE, relative_errors, total_relative_error

ENGINES: tuple[str, ...] = ("eager", "compile", "onnxruntime", "openvino")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

FP32_TOLERANCE = 1e-4
FP32_TENSOR_TOLERANCE = 1e-3


def tolerances(precision: str) -> tuple[float, float]:
    """``(overall, per tensor)`` relative L2 tolerance against eager fp32 of an engine running in ``precision``."""
    if precision == "fp32":
        return FP32_TOLERANCE, FP32_TENSOR_TOLERANCE
    if precision == "bf16":
        return INFER_TOLERANCE, INFER_TENSOR_TOLERANCE
    raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")


@dataclass
class Agreement:
    """How an engine's outputs compare with eager fp32's: relative L2 errors and max abs / rel errors."""

    rel_error: float  # all tensors together
    max_tensor_rel_error: float  # worst single tensor
    max_abs_error: float  # largest |a - b| over all elements
    max_rel_error: float  # largest |a - b| / max|b| per tensor (the worst tensor)
    finite: bool
    precision: str
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        tol, tensor_tol = tolerances(self.precision)
        self.ok = self.finite and self.rel_error <= tol and self.max_tensor_rel_error <= tensor_tol

    def describe(self) -> str:
        tol, tensor_tol = tolerances(self.precision)
        if not self.finite:
            return "non-finite outputs"
        return (f"relative error {self.rel_error:.2g} overall, {self.max_tensor_rel_error:.2g} on the worst tensor "
                f"(tolerances {tol:.2g} / {tensor_tol:.2g})")


def compare(test: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], precision: str) -> Agreement:
    """:class:`Agreement` of ``test`` with ``reference`` (eager fp32), judged at ``precision``'s tolerance."""
    if len(test) != len(reference) or any(a.shape != b.shape for a, b in zip(test, reference)):
        raise ValueError(f"engine outputs {[tuple(a.shape) for a in test]} do not match "
                         f"{[tuple(b.shape) for b in reference]}")
    finite = all(bool(torch.isfinite(a).all()) for a in test)
    per = relative_errors(test, reference)
    max_abs = max_rel = 0.0
    for a, b in zip(test, reference):
        d = (a.double() - b.double()).abs()
        if d.numel():
            m = float(d.max()) if finite else math.inf
            max_abs = max(max_abs, m)
            scale = float(b.double().abs().max())
            max_rel = max(max_rel, m / scale if scale > 0 else (0.0 if m == 0 else math.inf))
    return Agreement(total_relative_error(test, reference), max(per) if per else 0.0, max_abs, max_rel, finite,
                     precision)


class Engine(Protocol):
    """A network behind one call: ``engine(*inputs) -> [float32 tensors]`` (the network's outputs, in order)."""

    name: str
    precision: str

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]: ...


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A contiguous CPU array of ``x`` for an exported engine: floating tensors as float32, integer ones as int64."""
    x = x.detach().cpu()
    return np.ascontiguousarray((x.float() if x.is_floating_point() else x.long()).contiguous().numpy())
