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
from typing import Any, Callable, NamedTuple, Sequence

import torch
from monai.networks.nets import VQVAE, DecoderOnlyTransformer, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, PNDMScheduler
from rich.console import Console
from rich.markup import escape

from ..artifacts.checkpoint import load_weights
from ..artifacts.stage_meta import (
    AEMeta,
    EnsembleMeta,
    FanoganMeta,
    FirstStageMeta,
    LDMMeta,
    StageMeta,
    TransformerMeta,
    VAEMeta,
)
from ..config import Config, DiffusionConfig, build_config
from ..config.stages import STAGES
from ..errors import ModelNotTrainedError, NonFiniteModelError, StaleArtifactError
from ..runs import RunDir
from .diffusion import build_ddpm_scheduler, build_inference_scheduler, build_unet
from .fanogan import FAnoGAN, build_fanogan
from .first_stage import build_first_stage
from .transformer import LatentOrdering, build_ordering, build_transformer

_COMMAND = {name: s.command for name, s in STAGES.items()}
#: tensor names quoted in a NonFiniteModelError
SHOWN_TENSORS = 5


_META: dict[str, type[StageMeta]] = {"first_stage": FirstStageMeta, "ldm": LDMMeta, "transformer": TransformerMeta,
                                     "fanogan": FanoganMeta, "ae": AEMeta, "vae": VAEMeta, "ensemble": EnsembleMeta}


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
    if not run.done_path(stage).exists():
        Console(stderr=True).print(
            f"[yellow]warning: {escape(str(run.stage_dir(stage)))}: its training has not finished (no DONE: stopped or "
            f"killed?); using its best checkpoint so far. Finish it with `ldm-ood train {_COMMAND[stage]} --run "
            f"{escape(str(run.root))} --resume`")
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


def _load_checked(module: torch.nn.Module, run: RunDir, stage: str, meta: StageMeta) -> torch.nn.Module:
    """Weights verified against the sha256 in ``meta`` (:class:`~ldm_ood.errors.IntegrityError`), then finite."""
    load_weights(module, run.stage_dir(stage), sha256=meta.weights_sha256, redo=_retrain_hint(run, stage))
    check_finite_weights(module, run, stage)
    return module


def stage_sha256(run: RunDir, stage: str) -> str | None:
    """The sha256 of ``<stage>/model.safetensors`` as recorded when it was trained (None: not recorded)."""
    return _META[stage].read(run.stage_dir(stage)).weights_sha256 if run.model_config_path(stage).exists() else None


def upstream_hashes(run: RunDir, stages: Sequence[str]) -> dict[str, str]:
    """``{stage: sha256}`` of the run's trained ``stages`` whose hash is recorded (what a stage built
    on them records as ``StageMeta.inputs``, and a calibration as its inputs)."""
    out = {}
    for stage in stages:
        sha = stage_sha256(run, stage)
        if sha is not None:
            out[stage] = sha
    return out


def check_upstream(run: RunDir, stage: str, meta: StageMeta, force: bool = False) -> None:
    """Refuse a stage trained on another version of a stage it depends on (``meta.inputs``: the LDM's
    and the LTM's first stage) with :class:`~ldm_ood.errors.StaleArtifactError` saying what to
    retrain; ``force`` prints a warning instead. Unrecorded hashes (older runs) are not checked."""
    for upstream, recorded in meta.inputs.items():
        current = stage_sha256(run, upstream)
        if current is None or current == recorded:
            continue
        problem = (f"was trained on a {upstream.replace('_', ' ')} that has since changed (sha256 {recorded[:12]}… "
                   f"then, {current[:12]}… now): retrain it (`ldm-ood train {_COMMAND[stage]} --run {run.root}`)")
        if not force:
            raise StaleArtifactError(run.model_path(stage), problem + ", or pass --force to use it anyway")
        Console(stderr=True).print(f"[yellow]warning: {escape(str(run.model_path(stage)))}: {escape(problem)}; used anyway (--force)")


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
    return _frozen(_load_checked(model, run, "first_stage", meta), device)


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


def load_ldm(run: RunDir | str | Path, device: torch.device | str = "cpu", force: bool = False) -> LatentDiffusion:
    """The trained latent DDPM with its scale factor and latent padding multiple, eval mode; refused
    when trained on another first stage than the run's (:func:`check_upstream`, ``force``)."""
    run, meta = _stage_files(run, "ldm")
    check_upstream(run, "ldm", meta, force)
    cfg = build_config(meta.config, source=str(run.model_config_path("ldm")))
    scale_factor = _scale_factor(run, meta)
    unet = build_unet(cfg.ldm, meta.spatial_dims, meta.latent_channels)
    return LatentDiffusion(
        unet=_frozen(_load_checked(unet, run, "ldm", meta), device),
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


def load_transformer(run: RunDir | str | Path, device: torch.device | str = "cpu", force: bool = False) -> LatentTransformer:
    """The trained LTM, the token ordering it was trained with, and the saved run config; refused
    when trained on another first stage than the run's (:func:`check_upstream`, ``force``)."""
    run, meta = _stage_files(run, "transformer")
    check_upstream(run, "transformer", meta, force)
    cfg = build_config(meta.config, source=str(run.model_config_path("transformer")))
    model = _load_checked(build_transformer(cfg.transformer, meta.num_tokens, meta.seq_len), run, "transformer", meta)
    ordering = build_ordering(meta.ordering, meta.latent_spatial_shape, seed=meta.ordering_seed)
    return LatentTransformer(_frozen(model, device), ordering, cfg)


def load_fanogan(run: RunDir | str | Path, device: torch.device | str = "cpu") -> FAnoGAN:
    """The trained f-AnoGAN (generator, critic and encoder in one module), eval mode, on ``device``."""
    run, meta = _stage_files(run, "fanogan")
    cfg = build_config(meta.config, source=str(run.model_config_path("fanogan")))
    model = build_fanogan(cfg.fanogan, meta.grid)
    return _frozen(_load_checked(model, run, "fanogan", meta), device)


def load_stage(run: RunDir | str | Path, stage: str, build: Callable[[Config], torch.nn.Module],
               device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Config]:
    """``(network, saved config)`` of a trained stage without stage facts of its own (the paper 001
    baselines ``ae`` and ``vae``): ``build(config)`` rebuilds it from the run configuration saved with
    its weights, which are checked (sha256, finite) and loaded; eval mode, gradients off, on ``device``.
    ``ModelNotTrainedError`` naming the training command when the stage has no model."""
    run, meta = _stage_files(run, stage)
    cfg = build_config(meta.config, source=str(run.model_config_path(stage)))
    return _frozen(_load_checked(build(cfg), run, stage, meta), device), cfg


def members_sha256(hashes: Sequence[str | None]) -> str:
    """The ensemble's ``weights_sha256``: sha256 of its members' weight hashes, one per line, in order."""
    import hashlib

    return hashlib.sha256("\n".join(h or "" for h in hashes).encode()).hexdigest()


def load_ensemble(run: RunDir | str | Path, device: torch.device | str = "cpu", force: bool = False) -> list[LatentTransformer]:
    """The trained ensemble's members (``<run>/ensemble/<folder>/transformer/``, in ``ensemble.orderings``
    order), each as :func:`load_transformer` gives it; refused when the ensemble was trained on another
    first stage than the run's (:func:`check_upstream`, ``force``) or a member is not the one recorded
    in ``ensemble/config.json`` (:class:`~ldm_ood.errors.IntegrityError`)."""
    from ..errors import IntegrityError

    run = run if isinstance(run, RunDir) else RunDir(run)
    path = run.model_config_path("ensemble")
    if not path.exists():
        raise ModelNotTrainedError(f"{path}: no trained ensemble; train it with `ldm-ood train ensemble --run {run.root}`")
    meta = EnsembleMeta.read(run.stage_dir("ensemble"))
    check_upstream(run, "ensemble", meta, force)
    members = []
    for folder, ordering in meta.members.items():
        member = load_transformer(RunDir(run.stage_dir("ensemble") / folder), device)
        if member.ordering.kind != ordering:
            raise IntegrityError(path, f"member {folder} reads its tokens in {member.ordering.kind!r}, recorded as "
                                       f"{ordering!r}; {_retrain_hint(run, 'ensemble')}")
        members.append(member)
    hashes = [stage_sha256(RunDir(run.stage_dir("ensemble") / f), "transformer") for f in meta.members]
    if meta.weights_sha256 is not None and members_sha256(hashes) != meta.weights_sha256:
        raise IntegrityError(path, f"its members are not the ones recorded when the ensemble finished; "
                                   f"{_retrain_hint(run, 'ensemble')}")
    return members
