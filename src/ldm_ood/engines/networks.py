"""The four scoring networks as tensor-only modules, their probe inputs, and the modules scoring calls.

An engine needs a module whose ``forward`` takes only tensors and returns a tensor or a list of
tensors (what ONNX export, OpenVINO conversion and ``torch.compile`` take). :class:`NetworkSpec` is
one such module with its probe inputs, built by:

* :func:`unet_spec` — MONAI ``DiffusionModelUNet``: ``(x (B, C, *s), timesteps (B,) long) -> ε (B, C, *s)``;
* :func:`encoder_spec` — the first stage's encoder: image ``(B, 1, *S)`` -> pre-quantisation latent
  ``(B, D, *S/f)`` (``models.first_stage.encoder_output``; the codebook search stays in PyTorch fp32);
* :func:`decoder_spec` — the first stage's decoder: quantised latent ``(B, D, *s)`` -> image ``(B, 1, *s·f)``;
* :func:`lpips_trunk_spec` — the LPIPS AlexNet trunk: prepared slices ``(B, 3, H, W)`` -> five taps
  (normalisation and heads stay in PyTorch fp32, ``models.perceptual``).

The batch axis is dynamic in every exported engine; the other axes are those of the probe. The
modules scoring runs (:class:`EngineUNet`, :class:`EngineFirstStage`, :func:`lpips_with_trunk`) call
the engine for inputs of the probe's shape (any batch) and the PyTorch network for any other
shape, so a network is never run on a shape its engine was not checked on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .base import Engine

_SEED = 0


@dataclass
class NetworkSpec:
    """A tensor-only ``module`` (eval), its probe ``example`` inputs and names.

    ``spatial_dims``: of the first input (its layout goes channels-last under bf16);
    ``input_names`` / ``output_names``: the exported graph's (one per input / output tensor).
    """

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    spatial_dims: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(x.shape) for x in self.example)

    def with_batch(self, batch: int) -> "NetworkSpec":
        """The same network with probe inputs of ``batch`` items (the first item repeated)."""
        ex = tuple(x[:1].expand(batch, *x.shape[1:]).contiguous() for x in self.example)
        return NetworkSpec(self.name, self.module, ex, self.spatial_dims, self.input_names, self.output_names)


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(_SEED)


class UNetCall(nn.Module):
    """``DiffusionModelUNet`` with positional tensors: ``(x (B, C, *s), timesteps (B,)) -> (B, C, *s)``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timesteps=timesteps)


class FirstStageCall(nn.Module):
    """One half of the VQ-VAE: ``part="encode"``: image ``(B, 1, *S)`` -> latent ``(B, D, *S/f)`` before
    quantisation; ``part="decode"``: quantised latent ``(B, D, *s)`` -> image ``(B, 1, *s·f)``."""

    def __init__(self, first_stage: nn.Module, part: str):
        super().__init__()
        self.first_stage, self.part = first_stage, part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.first_stage, self.part)(x)


def unet_spec(unet: nn.Module, latent: Sequence[int], batch: int, timestep: int = 500) -> NetworkSpec:
    """UNet on ``batch`` noisy latents of shape ``latent = (C, *s)`` (padded to the UNet's multiple) at ``timestep``."""
    x = torch.randn((batch, *latent), generator=_generator())
    t = torch.full((batch,), int(timestep), dtype=torch.long)
    return NetworkSpec("unet", UNetCall(unet).eval(), (x, t), len(latent) - 1, ("x", "timesteps"), ("eps",))


def encoder_spec(first_stage: nn.Module, image: Sequence[int], batch: int) -> NetworkSpec:
    """Encoder on ``batch`` random images of shape ``image = (1, *S)`` in [0, 1]."""
    x = torch.rand((batch, *image), generator=_generator())
    module = FirstStageCall(first_stage, "encode").eval()
    return NetworkSpec("encoder", module, (x,), len(image) - 1, ("image",), ("latent",))


def decoder_spec(first_stage: nn.Module, image: Sequence[int], batch: int) -> NetworkSpec:
    """Decoder on ``batch`` quantised latents: the codebook vectors of a random image of shape ``image = (1, *S)``."""
    from ..models.first_stage import encode

    x = torch.rand((1, *image), generator=_generator())
    q = encode(first_stage, x).expand(batch, *([-1] * len(image))).contiguous()
    module = FirstStageCall(first_stage, "decode").eval()
    return NetworkSpec("decoder", module, (q,), len(image) - 1, ("latent",), ("image",))


def lpips_trunk_spec(lpips_model: nn.Module, slice_shape: Sequence[int], batch: int) -> NetworkSpec:
    """LPIPS trunk on ``batch`` random slices ``(H, W)`` prepared as LPIPS prepares them (3 channels, scaled)."""
    x = lpips_model._prepare(torch.rand((batch, 1, *slice_shape), generator=_generator())).contiguous()
    names = tuple(f"tap{i}" for i in range(len(lpips_model.lins)))
    return NetworkSpec("lpips", lpips_model.net, (x,), 2, ("slices",), names)


# --------------------------------------------------------------------------- what scoring calls


def _matches(x: torch.Tensor, shape: tuple[int, ...]) -> bool:
    return tuple(x.shape[1:]) == shape


class EngineUNet(nn.Module):
    """The UNet with its ε call through ``engine`` for latents shaped like the probe's ``(C, *s)``.

    ``forward(x, timesteps)`` as MONAI's; other shapes, ``context`` or ``class_labels`` go to the UNet."""

    def __init__(self, unet: nn.Module, engine: Engine, latent: Sequence[int]):
        super().__init__()
        self.inner, self.engine, self.latent = unet, engine, tuple(latent)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None, class_labels=None) -> torch.Tensor:
        if context is not None or class_labels is not None or not _matches(x, self.latent):
            return self.inner(x, timesteps=timesteps, context=context, class_labels=class_labels)
        return self.engine(x, timesteps.to(torch.long).expand(x.shape[0]))[0]


class EngineFirstStage(nn.Module):
    """The VQ-VAE with ``encode`` / ``decode`` through their engines (None: PyTorch) for inputs shaped
    like the probes' (``image`` = ``(1, *S)``, ``latent`` = ``(D, *s)``); quantiser and everything else are
    the VQ-VAE's own (``models.first_stage`` calls ``encode``, ``decode``, ``quantize``, ``quantizer``)."""

    def __init__(self, first_stage: nn.Module, encoder: Engine | None, decoder: Engine | None,
                 image: Sequence[int], latent: Sequence[int]):
        super().__init__()
        self.inner = first_stage
        self.encoder_engine, self.decoder_engine = encoder, decoder
        self.image, self.latent = tuple(image), tuple(latent)

    @property
    def quantizer(self) -> nn.Module:
        return self.inner.quantizer

    def quantize(self, z: torch.Tensor):
        return self.inner.quantize(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder_engine is None or not _matches(x, self.image):
            return self.inner.encode(x)
        return self.encoder_engine(x)[0]

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        if self.decoder_engine is None or not _matches(q, self.latent):
            return self.inner.decode(q)
        return self.decoder_engine(q)[0]

    def forward(self, x: torch.Tensor):
        return self.inner(x)


class EngineTrunk(nn.Module):
    """The LPIPS AlexNet trunk through ``engine`` for prepared slices shaped ``slices = (3, H, W)``."""

    def __init__(self, trunk: nn.Module, engine: Engine, slices: Sequence[int]):
        super().__init__()
        self.inner, self.engine, self.slices = trunk, engine, tuple(slices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not _matches(x, self.slices):
            return self.inner(x)
        return self.engine(x)


def lpips_with_trunk(lpips_model: nn.Module, engine: Engine, slices: Sequence[int]) -> nn.Module:
    """A shallow copy of ``lpips_model`` (same weights, the original untouched) whose trunk runs through ``engine``."""
    out = copy.copy(lpips_model)
    out._modules = dict(lpips_model._modules)
    out._modules["net"] = EngineTrunk(lpips_model.net, engine, slices)
    return out
