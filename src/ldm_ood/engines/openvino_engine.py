"""OpenVINO on CPU: the network converted once (``openvino.convert_model``), run with an fp32 or bf16
inference-precision hint (``INFERENCE_PRECISION_HINT`` ``f32`` / ``bf16``).

The converted model's batch axis is made dynamic and saved as OpenVINO IR (``.xml`` + ``.bin``,
weights kept in fp32), a cached artifact (:mod:`.artifacts`); the precision is a compile-time hint,
so one IR serves both. OpenVINO picks bf16 kernels itself only where the CPU has them (AVX-512 bf16
or AMX); elsewhere the bf16 hint runs in fp32.
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

SUFFIXES = (".xml", ".bin")
HINTS = {"fp32": "f32", "bf16": "bf16"}


def unavailable_reason(precision: str = "fp32") -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed: pip install 'ldm-ood[engines]'"
    if precision not in HINTS:
        return f"no OpenVINO precision hint for {precision!r}"
    return None


def version() -> str:
    import openvino

    return f"openvino-{openvino.get_version()}/torch-{torch.__version__}"


def export(spec: NetworkSpec, stem: Path) -> None:
    """Write ``stem.xml`` / ``stem.bin``: ``spec.module`` converted on its probe inputs, batch axis dynamic."""
    import openvino as ov

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            model = ov.convert_model(spec.module, example_input=spec.example)
            model.reshape({inp: ov.PartialShape([-1, *x.shape[1:]]) for inp, x in zip(model.inputs, spec.example)})
            ov.save_model(model, str(stem) + ".xml", compress_to_fp16=False)
        except Exception as err:  # an operator the converter does not know
            why = f"{type(err).__name__}: {err}"
            raise EngineUnavailableError(f"OpenVINO conversion of {spec.name} failed: {why}") from err


class OpenVinoEngine:
    """A network compiled by OpenVINO for CPU at ``precision``: ``engine(*inputs) -> [float32 tensors]``."""

    name = "openvino"

    def __init__(self, xml: Path, precision: str):
        import openvino as ov

        self.precision = precision
        try:
            model = ov.Core().read_model(str(xml))
            self.compiled = ov.Core().compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        except Exception as err:  # an unparsable (truncated, replaced) file
            raise EngineUnavailableError(f"{xml}: OpenVINO cannot load it: {err}") from err
        self.request = self.compiled.create_infer_request()

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        res = self.request.infer([to_numpy(x) for x in inputs])
        return [torch.from_numpy(np.array(res[o], dtype=np.float32)) for o in self.compiled.outputs]
