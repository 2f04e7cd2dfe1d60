"""First-stage autoencoders built from MONAI's ``VQVAE``.

* VQ-GAN, paper 000 §2.1/§3.2: ``levels`` levels, each one strided convolution followed by
  ``num_res_layers`` residual blocks, ``channels`` channels per level; trained with L2 + codebook
  + perceptual + adversarial (``PatchDiscriminator``) + spectral losses (see ``training.losses``).
* VQ-VAE, paper 001 §2.1: the same network, EMA codebook updates, downsampling factor f = 2**levels,
  trained with ‖x − x̂‖ + codebook + β·commitment.

MONAI's VQVAE updates its EMA codebook whenever it is in train mode: callers keep it in ``eval()``
when it is not being trained (LDM training, scoring).
"""

from __future__ import annotations

import torch
from monai.networks.nets import VQVAE, PatchDiscriminator

from ..config import FirstStageConfig


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


@torch.no_grad()
def encode(model: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """Quantised (de-quantised embedding) latent ``z``: ``(B, C, *S) -> (B, embedding_dim, *S/f)``."""
    return model.encode_stage_2_inputs(x)


@torch.no_grad()
def encode_indices(model: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """Codebook indices: ``(B, C, *S) -> (B, *S/f)`` (long); the LTM's tokens."""
    return model.index_quantize(x)


@torch.no_grad()
def decode(model: VQVAE, z: torch.Tensor, requantize: bool) -> torch.Tensor:
    """Image from latent ``(B, embedding_dim, *s) -> (B, C, *s*f)``.

    ``requantize=True`` snaps ``z`` to the nearest codebook vectors first (MONAI
    ``decode_stage_2_outputs``, what the reference code calls); ``False`` decodes ``z`` as is.
    """
    return model.decode_stage_2_outputs(z) if requantize else model.decode(z)
