"""First-stage autoencoders built from MONAI's ``VQVAE``.

* VQ-GAN, paper 000 §2.1/§3.2: ``levels`` levels, each one strided convolution followed by
  ``num_res_layers`` residual blocks, ``channels`` channels per level; trained with L2 + codebook
  + perceptual + adversarial (``PatchDiscriminator``) + spectral losses (see ``training.losses``).
* VQ-VAE, paper 001 §2.1: the same network, EMA codebook updates, downsampling factor f = 2**levels,
  trained with ‖x − x̂‖ + codebook + β·commitment.

MONAI's VQVAE updates its EMA codebook whenever it is in train mode: callers keep it in ``eval()``
when it is not being trained (LDM training, scoring).

Precision: every function here takes ``bf16``; encoder and decoder then run under bf16 autocast
in channels-last layout, and the **nearest-codebook search always runs in float32** with autocast
off (MONAI disables autocast around its quantiser on CUDA only: on CPU the distances would be a
bf16 matmul and flip codes). Every path that quantises (training, LDM latents, LTM tokens,
scoring, healing, segmentation) goes through :func:`quantize_fp32`.
"""

from __future__ import annotations

import torch
from monai.networks.nets import VQVAE, PatchDiscriminator

from ..config import FirstStageConfig
from ..precision import autocast, to_channels_last


def build_first_stage(cfg: FirstStageConfig, spatial_dims: int, in_channels: int = 1) -> VQVAE:
    """MONAI ``VQVAE`` with ``cfg.levels`` downsamplings by 2 (stride 2, kernel 4)."""
    n = cfg.levels
    return VQVAE(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=in_channels,
        channels=(cfg.channels,) * n,
        num_res_layers=cfg.num_res_layers,
        num_res_channels=(cfg.num_res_channels,) * n,
        downsample_parameters=((2, 4, 1, 1),) * n,
        upsample_parameters=((2, 4, 1, 1, 0),) * n,
        num_embeddings=cfg.num_embeddings,
        embedding_dim=cfg.embedding_dim,
        commitment_cost=cfg.commitment_cost,
        decay=cfg.decay,
    )


def build_discriminator(cfg: FirstStageConfig, spatial_dims: int, in_channels: int = 1) -> PatchDiscriminator:
    """Patch discriminator of the VQ-GAN (paper 000 §2.1)."""
    return PatchDiscriminator(
        spatial_dims=spatial_dims,
        num_layers_d=cfg.disc_layers,
        channels=cfg.disc_channels,
        in_channels=in_channels,
        out_channels=1,
    )


def latent_shape(cfg: FirstStageConfig, grid: tuple[int, ...]) -> tuple[int, ...]:
    """``(embedding_dim, *grid / 2**levels)``: shape of one latent ``z`` (paper 000 §2.1)."""
    f = cfg.downsampling_factor
    return (cfg.embedding_dim, *(g // f for g in grid))


def encoder_output(model: VQVAE, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Unquantised encoder output ``(B, embedding_dim, *S/f)`` in float32."""
    with autocast(x.device, bf16):
        z = model.encode(to_channels_last(x, x.ndim - 2) if bf16 else x)
    return z.float()


def _decoder(model: VQVAE, q: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Image ``(B, C, *s·f)`` from a (quantised) latent, float32."""
    with autocast(q.device, bf16):
        x = model.decode(to_channels_last(q, q.ndim - 2) if bf16 else q)
    return x.float()


def quantize_fp32(model: VQVAE, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(quantised z, quantisation loss)``: MONAI's quantiser in float32 with autocast off."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        return model.quantize(z.float())


def indices_fp32(model: VQVAE, z: torch.Tensor) -> torch.Tensor:
    """Nearest-codebook indices ``(B, *s)`` of an encoder output, searched in float32."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        return model.quantizer.quantize(z.float())


def vq_forward(model: VQVAE, x: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂ (B, C, *S), quantisation loss)``: MONAI ``VQVAE.forward`` with the fp32 codebook search
    (differentiable; the first stage's training step)."""
    q, loss = quantize_fp32(model, encoder_output(model, x, bf16))
    return _decoder(model, q, bf16), loss


@torch.no_grad()
def vq_forward_with_indices(model: VQVAE, x: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x̂ (B, C, *S), quantisation loss, codebook indices (B, *S/f))`` of one encoder pass (validation)."""
    z = encoder_output(model, x, bf16)
    q, loss = quantize_fp32(model, z)
    return _decoder(model, q, bf16), loss, indices_fp32(model, z)


@torch.no_grad()
def encode(model: VQVAE, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Quantised (de-quantised embedding) latent ``z``: ``(B, C, *S) -> (B, embedding_dim, *S/f)`` float32."""
    return quantize_fp32(model, encoder_output(model, x, bf16))[0].contiguous()


@torch.no_grad()
def encode_indices(model: VQVAE, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Codebook indices: ``(B, C, *S) -> (B, *S/f)`` (long); the LTM's tokens."""
    return indices_fp32(model, encoder_output(model, x, bf16))


@torch.no_grad()
def decode(model: VQVAE, z: torch.Tensor, requantize: bool, bf16: bool = False) -> torch.Tensor:
    """Image from latent ``(B, embedding_dim, *s) -> (B, C, *s*f)`` float32.

    ``requantize=True`` snaps ``z`` to the nearest codebook vectors first (in float32; MONAI
    ``decode_stage_2_outputs``, what the reference code calls); ``False`` decodes ``z`` as is.
    """
    q = quantize_fp32(model, z)[0] if requantize else z
    return _decoder(model, q, bf16).contiguous()


@torch.no_grad()
def decode_indices(model: VQVAE, indices: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Image ``(B, C, *s·f)`` float32 of codebook indices ``(B, *s)``: their codebook vectors decoded
    (MONAI ``decode_samples``); the inverse of :func:`encode_indices` up to the autoencoder's error."""
    q = model.quantizer.embed(indices.long()).float()
    return _decoder(model, q, bf16).contiguous()
