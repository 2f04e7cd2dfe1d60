"""ONNX Runtime on CPU: the network exported once to ONNX (``torch.onnx.export``, dynamic batch axis).

fp32 only: ONNX Runtime's CPU execution provider has no bf16 convolutions, so a bf16 request is
:class:`~ldm_ood.errors.EngineUnavailableError`. The ``.onnx`` file is a cached artifact
(:mod:`.artifacts`); the session uses as many intra-op threads as torch (``torch.get_num_threads``).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineUnavailableError
from .base import to_numpy
from .networks import NetworkSpec

SUFFIXES = (".onnx",)
OPSET = 17


def unavailable_reason(precision: str = "fp32") -> str | None:
    """Why this engine cannot run here in ``precision``, or None."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return "onnxruntime (and onnx) are not installed: pip install 'ldm-ood[engines]'"
    if precision != "fp32":
        return "ONNX Runtime's CPU execution provider has no bf16 kernels (fp32 only)"
    return None


def version() -> str:
    import onnxruntime

    return f"onnxruntime-{onnxruntime.__version__}/torch-{torch.__version__}/opset-{OPSET}"


def export(spec: NetworkSpec, stem: Path) -> None:
    """Write ``stem.onnx``: ``spec.module`` traced on its probe inputs, the batch axis of each tensor dynamic."""
    names = (*spec.input_names, *spec.output_names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(spec.module, spec.example, str(stem) + ".onnx", input_names=list(spec.input_names),
                              output_names=list(spec.output_names), dynamic_axes={n: {0: "batch"} for n in names},
                              opset_version=OPSET, dynamo=False)
        except Exception as err:  # an operator the exporter does not know
            raise EngineUnavailableError(f"ONNX export of {spec.name} failed: {type(err).__name__}: {err}") from err


class OnnxRuntimeEngine:
    """An ONNX Runtime CPU session of one exported network: ``engine(*inputs) -> [float32 tensors]``."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, path: Path, input_names: tuple[str, ...]):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.input_names = input_names
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # an unparsable (truncated, replaced) file
            raise EngineUnavailableError(f"{path}: ONNX Runtime cannot load it: {err}") from err

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = {n: to_numpy(x) for n, x in zip(self.input_names, inputs)}
        return [torch.from_numpy(np.asarray(y, dtype=np.float32)) for y in self.session.run(None, feeds)]

