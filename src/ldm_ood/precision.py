"""bf16 autocast, channels-last layout and the convolution guard that makes bf16 training safe on CPU.

Every training and inference path takes a ``bf16`` flag and uses :func:`autocast` /
:func:`to_channels_last`; whether that flag is on is decided per network by
``ldm_ood.precision_policy`` (``precision: auto | fp32 | bf16``).

**The bf16 convolution weight-gradient fault (root cause of NaN bf16 training on CPU).** With
torch 2.13.0 (oneDNN 3.12) on an AMD EPYC with AVX-512 bf16 and no AMX, the bf16 weight gradient of
a padded convolution (``Conv2d/3d``, ``ConvTranspose2d/3d``) is wrong whenever the kernel is wider
than the input along some spatial axis (e.g. a 3x3x3 kernel on a 2x2x2 map, or the 4x4x4 final
convolution of a patch discriminator on a 3x3x3 map): relative error 80-100 %, often Inf/NaN read
from uninitialised memory, and occasionally heap corruption (``double free``). Outputs and input
gradients are correct (error ≈ 0.3 %, as for any bf16 op). The deepest levels of the UNet and the
last discriminator layers are exactly such maps, so one optimizer step plants Inf/NaN in the
weights. :func:`guard_small_convolutions` runs those few convolutions in float32 during training
(they are the smallest maps of the network, so the cost is negligible) and leaves every other
convolution in bf16. ``benchmarks/bench_bf16_conv.py`` reproduces the fault and measures the guard.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def autocast(device: torch.device | str, enabled: bool) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``enabled``; a no-op otherwise."""
    device = torch.device(device)
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def kernel_wider_than_input(x: torch.Tensor, kernel_size: tuple[int, ...]) -> bool:
    """True when the kernel is wider than ``x (B, C, *S)`` along some spatial axis."""
    return any(s < k for s, k in zip(x.shape[2:], kernel_size))


class _Fp32WhenKernelWiderThanInput:
    """Mixin for ``torch.nn`` convolutions: fp32 where bf16 weight gradients are wrong on CPU (module docstring)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()
                and self.weight.requires_grad and kernel_wider_than_input(x, self.kernel_size)):
            with torch.autocast(device_type="cpu", enabled=False):
                return super().forward(x.float(), *args, **kwargs)
        return super().forward(x, *args, **kwargs)


_CONVOLUTIONS = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
_GUARDED: dict[type, type] = {}


def guard_small_convolutions(module: torch.nn.Module) -> torch.nn.Module:
    """Give every 2D/3D (transposed) convolution of ``module`` the fp32 fallback, in place.

    The classes are swapped for subclasses (``Bf16Safe<Conv3d>`` ...) with the same parameters,
    state dict and outputs; only convolutions whose kernel is wider than their input, under CPU
    autocast with gradients on, run in float32. Returns ``module``.
    """
    for m in module.modules():
        cls = type(m)
        if cls in _GUARDED.values() or not isinstance(m, _CONVOLUTIONS):
            continue
        if cls not in _GUARDED:
            _GUARDED[cls] = type(f"Bf16Safe{cls.__name__}", (_Fp32WhenKernelWiderThanInput, cls), {})
        m.__class__ = _GUARDED[cls]
    return module


def memory_format(spatial_dims: int) -> torch.memory_format:
    """``channels_last`` for 2D (NCHW) and ``channels_last_3d`` for 3D (NCDHW) tensors."""
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def to_channels_last(x: torch.Tensor | torch.nn.Module, spatial_dims: int):
    """Tensor ``(B, C, *spatial)`` or module in channels-last layout (values unchanged)."""
    return x.to(memory_format=memory_format(spatial_dims))


def set_layout(module: torch.nn.Module, spatial_dims: int, bf16: bool) -> torch.nn.Module:
    """The layout that goes with the precision: channels-last for bf16, contiguous for fp32 (in place)."""
    return module.to(memory_format=memory_format(spatial_dims) if bf16 else torch.contiguous_format)


def prepare_for_inference(module: torch.nn.Module, spatial_dims: int, bf16: bool) -> torch.nn.Module:
    """``eval()`` (keeps MONAI's VQ-VAE EMA codebook frozen) and channels-last when bf16 is on."""
    module.eval()
    if bf16:
        to_channels_last(module, spatial_dims)
    return module
