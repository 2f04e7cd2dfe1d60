"""Load a run's trained networks from ``<stage>/model.safetensors`` + ``<stage>/config.json``.

Each network is rebuilt from the configuration saved **with the weights** (the whole run config at
training time plus stage facts such as the LDM's latent scale factor), so later edits of the run's
``config.yaml`` cannot mismatch the architecture. Networks come back in ``eval()`` (MONAI's VQVAE
would update its EMA codebook in train mode) with gradients off.

Every loaded network is checked to be finite (:func:`check_finite_weights`): a parameter or buffer
holding NaN/Inf (e.g. a training run that diverged) raises :class:`~ldm_ood.errors.NonFiniteModelError`
naming ``<run>/<stage>/model.safetensors`` and the tensors, instead of turning every score into NaN
downstream. The LDM's latent ``scale_factor`` must be finite and > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from monai.networks.nets import VQVAE, DecoderOnlyTransformer, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from ..artifacts.checkpoint import load_weights
from ..artifacts.stage_meta import FirstStageMeta, LDMMeta, StageMeta, TransformerMeta
from ..config import Config, DiffusionConfig, build_config
from ..errors import ModelNotTrainedError, NonFiniteModelError
from ..runs import RunDir
from .diffusion import build_ddpm_scheduler, build_inference_scheduler, build_unet
from .first_stage import build_first_stage
from .transformer import LatentOrdering, build_ordering, build_transformer

_COMMAND = {"first_stage": "first-stage", "ldm": "ldm", "transformer": "transformer"}
#: tensor names quoted in a NonFiniteModelError
SHOWN_TENSORS = 5


_META: dict[str, type[StageMeta]] = {"first_stage": FirstStageMeta, "ldm": LDMMeta, "transformer": TransformerMeta}


def _stage_files(run: RunDir | str | Path, stage: str) -> tuple[RunDir, Any]:
    """``(run, the stage's typed record)``; ``ModelNotTrainedError`` when the weights or record are missing."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    model, cfg = run.model_path(stage), run.model_config_path(stage)
    for path in (model, cfg):
        if not path.exists():
            raise ModelNotTrainedError(
                f"{path}: no trained {stage.replace('_', ' ')} model; "
                f"train it with `ldm-ood train {_COMMAND[stage]} --run {run.root}`"
            )
    return run, _META[stage].read(run.stage_dir(stage))


def _retrain_hint(run: RunDir, stage: str) -> str:
    return (f"retrain the stage: `ldm-ood train {_COMMAND[stage]} --run {run.root}` starts it afresh "
            f"(benchmark / demo: delete {run.stage_dir(stage)} and rerun)")


def check_finite_weights(module: torch.nn.Module, run: RunDir | str | Path, stage: str) -> None:
    """Raise :class:`NonFiniteModelError` when a floating parameter or buffer of ``module`` (loaded
    from ``<run>/<stage>/model.safetensors``) holds a NaN or an Inf; the message names the file,
    how many tensors are affected and the first of them."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    state = module.state_dict()
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:SHOWN_TENSORS]) + (", ..." if len(bad) > SHOWN_TENSORS else "")
        raise NonFiniteModelError(
            run.model_path(stage),
            f"{len(bad)} of {len(state)} tensors hold NaN/Inf values ({shown}): the trained "
            f"{stage.replace('_', ' ')} is unusable; {_retrain_hint(run, stage)}",
        )


def _load_checked(module: torch.nn.Module, run: RunDir, stage: str) -> torch.nn.Module:
    load_weights(module, run.stage_dir(stage))
    check_finite_weights(module, run, stage)
    return module


def _scale_factor(run: RunDir, meta: LDMMeta) -> float:
    """The LDM's latent scale factor from its ``config.json``: finite and > 0, else NonFiniteModelError."""
    value = meta.scale_factor
    if not math.isfinite(value) or value <= 0:
        raise NonFiniteModelError(
            run.model_config_path("ldm"),
            f"latent scale_factor is {value!r} (must be finite and > 0): the first stage's "
            f"latents were NaN or constant when the LDM was trained; {_retrain_hint(run, 'ldm')}",
        )
    return value


def _frozen(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def saved_config(run: RunDir | str | Path, stage: str) -> Config:
    """The run configuration saved with the stage's weights."""
    run, meta = _stage_files(run, stage)
    return build_config(meta.config, source=str(run.model_config_path(stage)))


def load_first_stage(run: RunDir | str | Path, device: torch.device | str = "cpu") -> VQVAE:
    """The trained VQ-GAN / VQ-VAE (MONAI ``VQVAE``), eval mode, on ``device``."""
    run, meta = _stage_files(run, "first_stage")
    cfg = build_config(meta.config, source=str(run.model_config_path("first_stage")))
    model = build_first_stage(cfg.first_stage, meta.spatial_dims)
    return _frozen(_load_checked(model, run, "first_stage"), device)


@dataclass
class LatentDiffusion:
    """The trained latent DDPM: UNet (ε-prediction) and how latents are prepared for it.

    The UNet sees ``scale_factor · z`` zero-padded to multiples of ``latent_multiple``
    (``models.diffusion.pad_latent``); ``latent_spatial_shape`` is the unpadded latent grid.
    """

    unet: DiffusionModelUNet
    scale_factor: float
    latent_multiple: int
    config: DiffusionConfig
    latent_spatial_shape: tuple[int, ...]
    run_config: Config

    def ddpm_scheduler(self) -> DDPMScheduler:
        return build_ddpm_scheduler(self.config)

    def inference_scheduler(self, sampler: str, num_inference_steps: int) -> PNDMScheduler | DDIMScheduler:
        return build_inference_scheduler(self.config, sampler, num_inference_steps)


def load_ldm(run: RunDir | str | Path, device: torch.device | str = "cpu") -> LatentDiffusion:
    """The trained latent DDPM with its scale factor and latent padding multiple, eval mode."""
    run, meta = _stage_files(run, "ldm")
    cfg = build_config(meta.config, source=str(run.model_config_path("ldm")))
    scale_factor = _scale_factor(run, meta)
    unet = build_unet(cfg.ldm, meta.spatial_dims, meta.latent_channels)
    return LatentDiffusion(
        unet=_frozen(_load_checked(unet, run, "ldm"), device),
        scale_factor=scale_factor,
        latent_multiple=meta.latent_multiple,
        config=cfg.ldm,
        latent_spatial_shape=meta.latent_spatial_shape,
        run_config=cfg,
    )


class LatentTransformer(NamedTuple):
    """``(transformer, ordering, config)``: unpacks like the contract's tuple."""

    transformer: DecoderOnlyTransformer
    ordering: LatentOrdering
    config: Config


def load_transformer(run: RunDir | str | Path, device: torch.device | str = "cpu") -> LatentTransformer:
    """The trained LTM, the token ordering it was trained with, and the saved run config."""
    run, meta = _stage_files(run, "transformer")
    cfg = build_config(meta.config, source=str(run.model_config_path("transformer")))
    model = _load_checked(build_transformer(cfg.transformer, meta.num_tokens, meta.seq_len), run, "transformer")
    ordering = build_ordering(meta.ordering, meta.latent_spatial_shape, seed=meta.ordering_seed)
    return LatentTransformer(_frozen(model, device), ordering, cfg)
