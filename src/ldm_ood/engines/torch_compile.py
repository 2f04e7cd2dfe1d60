"""``torch.compile`` with the inductor backend and frozen weights (``torch._inductor.config.freezing``).

Freezing folds the weights into the compiled graph as constants (under ``torch.no_grad``), which
lets inductor pre-pack convolution weights for oneDNN; the graph is compiled on the first call of
each new input shape (the batch axis becomes dynamic after a second batch size is seen). The
network's weights must not change afterwards (a new scoring session compiles again). bf16: the
compiled graph runs under bf16 autocast with channels-last inputs, as eager does.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from ..errors import EngineUnavailableError
from ..precision import autocast, set_layout
from .torch_eager import as_float_list, layout_inputs


def unavailable_reason() -> str | None:
    """Why inductor cannot compile for CPU here (it needs a C++ compiler), or None."""
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        return "torch.compile (inductor) needs a C++ compiler on the PATH for CPU code"
    return None


class CompiledEngine:
    """``torch.compile(module, backend="inductor")`` called with freezing on, under ``torch.no_grad``."""

    name = "compile"

    def __init__(self, module: nn.Module, precision: str, spatial_dims: int):
        reason = unavailable_reason()
        if reason:
            raise EngineUnavailableError(reason)
        self.precision, self.spatial_dims, self.bf16 = precision, spatial_dims, precision == "bf16"
        set_layout(module, spatial_dims, self.bf16)
        self.module = module
        self.compiled = torch.compile(module, backend="inductor")

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        import torch._inductor.config as inductor_config

        with torch.no_grad(), inductor_config.patch(freezing=True), autocast(inputs[0].device, self.bf16):
            try:
                return as_float_list(self.compiled(*layout_inputs(inputs, self.spatial_dims, self.bf16)))
            except torch._dynamo.exc.BackendCompilerFailed as err:
                raise EngineUnavailableError(f"torch.compile failed: {err}") from err
