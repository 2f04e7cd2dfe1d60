"""Latent DDPM: MONAI ``DiffusionModelUNet`` and schedulers (paper 000 §2.1/§3.2, paper 001 §2.2).

* UNet: 3 levels (128, 256, 256), 1 residual block per level, attention at the deepest level only.
* Noise schedule: T = 1000, ``scaled_linear_beta`` from 0.0015 to 0.0195, ε-prediction,
  ``clip_sample=False`` (latents are not in [-1, 1]).
* Inference schedulers: PLMS = MONAI ``PNDMScheduler(skip_prk_steps=True)``, or DDIM (whose grid and
  noise levels DPM-Solver++(2M) and the single-step estimate also use).
* ``DiffusionModelUNet`` needs every latent dimension divisible by 2**(levels-1): latents are
  zero-padded with :func:`pad_latent` and cropped back with :func:`crop_latent`.
* Beyond the paper (§4 future work): ``schedule_shift`` s > 1 lowers the SNR of every step,
  SNR'(t) = SNR(t) / s**2, for latents larger than the schedule was designed for (Hoogeboom 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from ..config import DiffusionConfig
from ..precision import autocast, to_channels_last


def build_unet(cfg: DiffusionConfig, spatial_dims: int, in_channels: int) -> DiffusionModelUNet:
    """Time-conditioned UNet predicting ε for latents of ``in_channels`` channels."""
    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=in_channels,
        num_res_blocks=cfg.num_res_blocks,
        channels=cfg.channels,
        attention_levels=cfg.attention_levels,
        norm_num_groups=cfg.norm_num_groups,
        num_head_channels=cfg.num_head_channels,
    )


def _schedule_args(cfg: DiffusionConfig) -> dict:
    return dict(
        num_train_timesteps=cfg.num_train_timesteps,
        schedule=cfg.schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
    )


def _shift(scheduler, shift: float | None):
    """Rescale ᾱ_t so that SNR(t) = ᾱ/(1-ᾱ) is divided by ``shift**2``; β, α recomputed to match."""
    if shift is None or shift == 1.0:
        return scheduler
    ab = scheduler.alphas_cumprod.double()
    log_snr = torch.log(ab) - torch.log1p(-ab) - 2.0 * math.log(shift)
    ab_new = torch.sigmoid(log_snr)
    prev = torch.cat([torch.ones(1, dtype=ab_new.dtype), ab_new[:-1]])
    alphas = ab_new / prev
    scheduler.alphas_cumprod = ab_new.float()
    scheduler.alphas = alphas.float()
    scheduler.betas = (1.0 - alphas).float()
    if hasattr(scheduler, "final_alpha_cumprod") and not getattr(scheduler, "set_alpha_to_one", True):
        scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    return scheduler


def build_ddpm_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """Training / ancestral-sampling scheduler (fixed-small variance, ε-prediction, no clipping)."""
    return _shift(DDPMScheduler(clip_sample=False, prediction_type="epsilon", **_schedule_args(cfg)), cfg.schedule_shift)


#: the inference samplers: PLMS, DDIM, DPM-Solver++(2M) and the single-step x̂_0 estimate
SAMPLERS = ("plms", "ddim", "dpmpp_2m", "one_step")


def build_inference_scheduler(
    cfg: DiffusionConfig, sampler: str, num_inference_steps: int
) -> PNDMScheduler | DDIMScheduler:
    """PLMS (``PNDMScheduler`` with PRK steps skipped) or DDIM on a grid of ``num_inference_steps``.

    ``dpmpp_2m`` gets DDIM's grid and noise levels (the solver is ``samplers.dpm_solver``); ``one_step``
    gets every training timestep as its grid (each start is used as is; ``num_inference_steps`` does
    not apply), its update is ``samplers.one_step``."""
    if sampler == "plms":
        sch = PNDMScheduler(skip_prk_steps=True, prediction_type="epsilon", **_schedule_args(cfg))
    elif sampler in ("ddim", "dpmpp_2m", "one_step"):
        sch = DDIMScheduler(clip_sample=False, prediction_type="epsilon", **_schedule_args(cfg))
    else:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    sch = _shift(sch, cfg.schedule_shift)
    sch.set_timesteps(cfg.num_train_timesteps if sampler == "one_step" else num_inference_steps)
    return sch


def latent_multiple(cfg: DiffusionConfig) -> int:
    """Each latent dimension must be a multiple of this for the UNet."""
    return 2 ** (len(cfg.channels) - 1)


def pad_latent(z: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial dims of ``z (B, C, *s)`` at the end up to multiples of ``multiple``.

    Returns the padded tensor and the original spatial shape for :func:`crop_latent`.
    """
    spatial = tuple(z.shape[2:])
    pads: list[int] = []
    for s in reversed(spatial):
        pads += [0, (-s) % multiple]
    if any(pads):
        z = F.pad(z, pads)
    return z, spatial


def crop_latent(z: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pad_latent`: ``(B, C, *padded) -> (B, C, *spatial)``."""
    return z[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def epsilon(unet: torch.nn.Module, x: torch.Tensor, timesteps: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """ε_θ(x, t) of the UNet in float32: ``x (B, C, *s)``, ``timesteps (B,)`` long; the UNet under bf16
    autocast when ``bf16``. Every sampler, the KL maps and LDM training call the network through this."""
    with autocast(x.device, bf16):
        return unet(x, timesteps=timesteps).float()


@dataclass
class CallCounter:
    """UNet usage: ``calls`` forward passes, ``evals`` chain-steps (sum of their batch sizes)."""

    calls: int = 0
    evals: int = 0


def predict_noise(
    unet: torch.nn.Module,
    x: torch.Tensor,
    timestep: int,
    bf16: bool,
    unet_batch: int | None = None,
    counter: CallCounter | None = None,
) -> torch.Tensor:
    """ε_θ(x, t) for latents ``x (k, C, *s)`` all at ``timestep``: fp32 ``(k, C, *s)``.

    One UNet call per ``unet_batch`` chains (all of them when None); bf16 autocast + channels-last.
    """
    sd = x.ndim - 2
    outs = []
    for chunk in x.split(unet_batch or x.shape[0]):
        t = torch.full((chunk.shape[0],), int(timestep), dtype=torch.long, device=x.device)
        outs.append(epsilon(unet, to_channels_last(chunk, sd) if bf16 else chunk, t, bf16))
        if counter is not None:
            counter.calls += 1
            counter.evals += chunk.shape[0]
    return torch.cat(outs).contiguous()
