"""The networks of paper 001 Table 1's AE (spatial) and VAE (dense) baselines (Baur et al. 2021), from MONAI.

* ``ae`` — MONAI ``AutoEncoder``: strided convolutions down to a **spatial bottleneck** (the encoder's
  last feature map, ``channels[-1]`` × grid / ``prod(strides)``; no dense layer), mirrored by
  transposed convolutions; linear output.
* ``vae`` — MONAI ``VarAutoEncoder``: the same encoder, its last feature map flattened into a
  **dense** Gaussian latent ``(μ, log σ²)`` of ``latent_size``, decoded through a dense layer and
  the mirrored convolutions; sigmoid output (images are in [0, 1]).

Both take and return ``(B, 1, *grid)``. :func:`reconstruct` is what calibration and segmentation
use: ``x̂`` of a batch, the VAE decoding its posterior mean μ (no sampling, so maps are
deterministic). :class:`TrainingPass` is the training forward (the VAE's reparameterised sample
``z = μ + ε σ`` with ``ε`` drawn by the caller from an explicit generator) and
:func:`autoencoder_loss` the objective of both (Baur et al.: L1 reconstruction, + β · KL for the VAE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from monai.networks.nets import AutoEncoder, VarAutoEncoder

from ...config import Config, ConfigError
from ...config.schema import AutoencoderConfig, VAEConfig
from ...precision import autocast, set_layout
from ...runs import RunDir
from ...training.losses import reconstruction_loss

#: the two baselines: their stage, config section, method and calibration name
KINDS: tuple[str, ...] = ("ae", "vae")
_NORMS = {"batch": "BATCH", "instance": "INSTANCE"}


def section(config: Config, kind: str) -> AutoencoderConfig:
    """``config.ae`` or ``config.vae``."""
    if kind not in KINDS:
        raise ConfigError(f"unknown autoencoder baseline {kind!r}; one of {', '.join(KINDS)}")
    return getattr(config, kind)


def build_autoencoder(kind: str, cfg: AutoencoderConfig, grid: Sequence[int]) -> torch.nn.Module:
    """The ``ae`` (MONAI ``AutoEncoder``) or ``vae`` (``VarAutoEncoder``) of ``cfg`` for images
    ``(B, 1, *grid)``; ``ConfigError`` when the grid is not divisible by ``prod(cfg.strides)`` (the
    transposed convolutions would not give the input's shape back)."""
    grid = tuple(int(g) for g in grid)
    factor = cfg.downsampling_factor
    if any(g % factor for g in grid):
        raise ConfigError(f"data.grid {grid} is not divisible by the product of {kind}.strides {cfg.strides} "
                          f"= {factor}")
    common = dict(spatial_dims=len(grid), out_channels=1, channels=cfg.channels, strides=cfg.strides,
                  kernel_size=cfg.kernel_size, up_kernel_size=cfg.kernel_size, num_res_units=cfg.num_res_units,
                  norm=_NORMS[cfg.norm])
    if kind == "ae":
        return AutoEncoder(in_channels=1, **common)
    if kind == "vae":
        assert isinstance(cfg, VAEConfig)
        return VarAutoEncoder(in_shape=(1, *grid), latent_size=cfg.latent_size, use_sigmoid=True,
                              use_mean_at_inference=True, **common)
    raise ConfigError(f"unknown autoencoder baseline {kind!r}; one of {', '.join(KINDS)}")


def is_variational(model: torch.nn.Module) -> bool:
    return isinstance(model, VarAutoEncoder)


def set_autoencoder_layout(model: torch.nn.Module, spatial_dims: int, bf16: bool) -> torch.nn.Module:
    """Channels-last under bf16 (``precision.set_layout``) for the AE; the VAE stays contiguous, as
    MONAI's ``VarAutoEncoder`` flattens its last feature map with ``view``, which a channels-last
    tensor does not allow."""
    return set_layout(model, spatial_dims, bf16 and not is_variational(model))


def reconstruct(model: torch.nn.Module, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """``x̂ (B, 1, *grid)`` float32 of ``x (B, 1, *grid)`` without gradients: the AE's forward, the
    VAE's decoder at the posterior mean μ (deterministic). ``model`` should be in ``eval()``."""
    with torch.no_grad(), autocast(x.device, bf16):
        if is_variational(model):
            mu, _ = model.encode_forward(x)
            out = model.decode_forward(mu, model.use_sigmoid)
        else:
            out = model(x)
    return out.float()


class TrainingPass(torch.nn.Module):
    """``forward(x, eps) -> (x̂, μ, log σ²)`` of the wrapped network (what DDP wraps, so the VAE's
    encode / sample / decode runs as one forward). AE: ``(x̂, None, None)``. VAE:
    ``z = μ + eps · exp(½ log σ²)`` with ``eps (B, latent_size)`` given by the caller, or ``z = μ``
    when ``eps`` is None."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        if not is_variational(self.net):
            return self.net(x), None, None
        mu, logvar = self.net.encode_forward(x)
        z = mu if eps is None else mu + eps.to(mu.dtype) * torch.exp(0.5 * logvar)
        return self.net.decode_forward(z, self.net.use_sigmoid), mu, logvar


@dataclass
class AutoencoderLoss:
    """``total = recon + kl_weight · kl`` (scalars); ``kl`` is None for the AE."""

    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor | None = None

    @property
    def terms(self) -> dict[str, float]:
        out = {"recon": float(self.recon.detach())}
        if self.kl is not None:
            out["kl"] = float(self.kl.detach())
        return out


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per case, ``(B,)``: ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1) over the latent."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1.0).sum(dim=1)


def autoencoder_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l1", mu: torch.Tensor | None = None,
                     logvar: torch.Tensor | None = None, kl_weight: float = 0.0) -> AutoencoderLoss:
    """The baselines' objective on ``x, x̂ (B, 1, *grid)`` (Baur et al. 2021).

    ``recon``: mean absolute (``"l1"``) or squared (``"l2"``) error over cases and voxels. With
    ``mu, logvar (B, latent)`` (VAE): ``kl`` = batch mean of :func:`kl_divergence` divided by the
    number of voxels per image, so ``recon + 1 · kl`` is Baur et al.'s per-image Σ|x − x̂| + KL
    divided by that constant (the same optimum; Adam is invariant to the scale).
    """
    recon = reconstruction_loss(x, x_hat, kind)
    if mu is None or logvar is None:
        return AutoencoderLoss(recon, recon)
    kl = kl_divergence(mu, logvar).mean() / x[0].numel()
    return AutoencoderLoss(recon + kl_weight * kl, recon, kl)


def load_autoencoder(run: RunDir | str | Path, kind: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The run's trained ``ae`` / ``vae`` (``<run>/<kind>/model.safetensors``), rebuilt from the
    configuration saved with it, checked, in ``eval()``; ``ModelNotTrainedError`` naming
    ``ldm-ood train <kind>`` when it is missing."""
    from ...models.loading import load_stage

    def build(cfg: Config) -> torch.nn.Module:
        return build_autoencoder(kind, section(cfg, kind), cfg.data.grid)

    model, _ = load_stage(run, kind, build, device)
    return model
