"""PyTorch eager: the network as written, fp32, or bf16 autocast in channels-last (``ldm_ood.precision``)."""

from __future__ import annotations

import torch
from torch import nn

from ..precision import autocast, set_layout, to_channels_last


def as_float_list(out) -> list[torch.Tensor]:
    """A network's output (a tensor, or a list/tuple of them) as a list of contiguous float32 tensors."""
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    return [o.float().contiguous() for o in outs]


def layout_inputs(inputs: tuple[torch.Tensor, ...], spatial_dims: int, bf16: bool) -> tuple[torch.Tensor, ...]:
    """Under bf16, the inputs shaped ``(B, C, *spatial)`` in channels-last; the others unchanged."""
    if not bf16:
        return inputs
    return tuple(to_channels_last(x, spatial_dims) if x.ndim == spatial_dims + 2 else x for x in inputs)


class EagerEngine:
    """``module(*inputs)`` under ``torch.no_grad``; ``precision="bf16"``: bf16 autocast and channels-last
    (module and inputs), as every scoring path runs it; outputs float32."""

    name = "eager"

    def __init__(self, module: nn.Module, precision: str, spatial_dims: int):
        self.module, self.precision, self.spatial_dims = module, precision, spatial_dims
        self.bf16 = precision == "bf16"

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        set_layout(self.module, self.spatial_dims, self.bf16)  # the module may be shared with another precision
        with torch.no_grad(), autocast(inputs[0].device, self.bf16):
            return as_float_list(self.module(*layout_inputs(inputs, self.spatial_dims, self.bf16)))
