"""One batch of paper 001 segmentation: score, KL mask, healing, decoding and residual map (§3, §4.1).

A batch of preprocessed images ``x (B, 1, *grid)`` in [0, 1] goes through (same code in 2D and 3D):

1. ``z_0 = s · E(x)`` (quantised latent times the LDM's scale factor; :func:`latents`);
2. the image-level score: mean L_{t-1} over the whole Markov chain (every t in [1, T-1] by default,
   or ``segment.score_num_t`` evenly spaced t; §4.1; :func:`image_score`), and the same on the
   ``segment.score_subsample_num_t`` t-values of those draws;
3. the KL map ``v (B, *latent)`` (mean over t ∈ ``kl_t_range`` and channels; :func:`kl_map_of`) and
   the latent mask ``m = v >= threshold`` with per-position thresholds;
4. healing from ``start_t`` (:func:`.healing.heal`), decoding ``x̂' = D(z'_0 / s)``
   (re-quantised: snapped to the codebook, as the reference code decodes);
5. the anomaly map of :mod:`.variants`.

Randomness is per case (:func:`case_seeds`), one stream per step, so results do not depend on how
cases are batched, and variants a and b heal with the same noise. :func:`segment_context` is the
run loading shared by calibration and segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import time

import torch

from ...config import Config, SegmentConfig
from ...models.first_stage import decode, encode
from ...precision import prepare_for_inference
from ...precision_policy import PrecisionChoice
from ...runs import RunDir
from ...samplers.noise import case_seed
from .. import inference_precision
from ..context import Context, Preprocessing, load_context
from ..inference_precision import first_stage_probe, unet_probe
from .healing import heal
from .kl import chain_kl, kl_map, kl_mask, kl_terms, score_t_values, subsample_score
from .variants import VariantSpec, residual_map, upsample_mask

#: random streams of one case: image score KL, mask KL, healing
SCORE_STREAM, MASK_STREAM, HEAL_STREAM = 0, 1, 2


@dataclass
class SegmentModels:
    """What segmentation needs from a run: first stage, UNet, schedule and latent preparation."""

    first_stage: torch.nn.Module
    unet: torch.nn.Module
    scheduler: Any
    scale_factor: float
    multiple: int
    spatial_dims: int
    bf16: bool = False  # the UNet's precision
    requantize: bool = True
    first_stage_bf16: bool | None = None  # None: as the UNet
    precision: dict[str, PrecisionChoice] = field(default_factory=dict)  # what was chosen, and why

    @property
    def decoder_bf16(self) -> bool:
        return self.bf16 if self.first_stage_bf16 is None else self.first_stage_bf16

    @classmethod
    def from_run(cls, run: RunDir, device: torch.device, precision: str, grid: Sequence[int], batch: int,
                 force: bool = False) -> "SegmentModels":
        """The run's networks, each in the precision ``precision`` (auto | fp32 | bf16) resolves to
        on ``batch`` images of ``grid`` (:mod:`.inference_precision`); ``force``: an LDM trained on
        another first stage is used anyway."""
        from ...models.loading import load_first_stage, load_ldm

        fs, ldm = load_first_stage(run, device), load_ldm(run, device, force)
        dims = len(ldm.latent_spatial_shape)
        choices = inference_precision.resolve(precision, {
            "first_stage": (fs, lambda: first_stage_probe(fs, grid, batch, device)),
            "unet": (ldm.unet, lambda: unet_probe(ldm.unet, fs, grid, ldm.latent_multiple, batch, 500, device)),
        }, device, "segmentation")
        inference_precision.report(choices, run)
        for net, name in ((fs, "first_stage"), (ldm.unet, "unet")):
            prepare_for_inference(net, dims, choices[name].bf16)
        return cls(fs, ldm.unet, ldm.ddpm_scheduler(), ldm.scale_factor, ldm.latent_multiple, dims,
                   choices["unet"].bf16, first_stage_bf16=choices["first_stage"].bf16, precision=choices)


@dataclass
class BatchOutput:
    """Results of :func:`segment_batch` for ``B`` images."""

    healed: torch.Tensor  # (B, 1, *grid) decoded healed image x̂'
    anomaly_map: torch.Tensor  # (B, 1, *grid)
    score: ImageScore | None  # mean KL over the chain (§4.1) and its subsample, (B,) each
    kl_map: torch.Tensor | None = None  # (B, *latent) v
    latent_mask: torch.Tensor | None = None  # (B, *latent) bool m


def segment_context(
    run_dir: str | Path, config: Config | None, models: SegmentModels | None, preprocessor: Preprocessing | None,
    device: str | torch.device | None, force: bool = False,
) -> tuple[Context, SegmentModels]:
    """Run, config, device and preprocessor (:func:`..context.load_context`) and the run's models unless given."""
    ctx = load_context(run_dir, config, preprocessor, device)
    if models is None:
        seg = ctx.cfg.segment
        models = SegmentModels.from_run(ctx.run, ctx.device, seg.precision, ctx.cfg.data.grid, seg.batch_size, force)
    return ctx, models


def case_seeds(case_ids: Sequence[str], seed: int) -> list[int]:
    """One seed per case from ``seed`` and the case id: results do not depend on how cases are batched."""
    return [case_seed(seed, c) for c in case_ids]


def _generators(seeds: Sequence[int], stream: int, device: torch.device | str) -> list[torch.Generator]:
    """Independent per-case generators for each random stream (0: score KL, 1: mask KL, 2: healing),
    so e.g. variants a and b heal with the same noise whether or not a KL mask was computed."""
    return [torch.Generator(device=device).manual_seed((s * 3 + stream) % (2**63)) for s in seeds]


@torch.no_grad()
def latents(models: SegmentModels, x: torch.Tensor) -> torch.Tensor:
    """``z_0 = s · E(x)``: ``(B, 1, *grid) -> (B, C, *latent)`` float32."""
    return encode(models.first_stage, x, models.decoder_bf16) * models.scale_factor


def _score_t(models: SegmentModels, cfg: SegmentConfig) -> list[int]:
    return score_t_values(len(models.scheduler.alphas_cumprod), cfg.score_num_t)


@dataclass
class ImageScore:
    """Image-level scores ``(B,)`` of a batch (§4.1): over ``score_num_t`` and, from the same draws, over the
    ``score_subsample_num_t`` subsample (None when not asked for or not among the draws); ``seconds`` taken."""

    score: torch.Tensor
    subsample: torch.Tensor | None
    seconds: float


@torch.no_grad()
def image_score(models: SegmentModels, z0: torch.Tensor, cfg: SegmentConfig, seeds: Sequence[int],
                max_batch: int = 256) -> ImageScore:
    """Image-level scores of latents ``z0 (B, C, *latent)``: mean L_{t-1} over the chain (§4.1) and its subsample."""
    t0 = time.perf_counter()
    ts = _score_t(models, cfg)
    per_t = chain_kl(models.unet, z0, models.scheduler, ts, multiple=models.multiple, max_batch=max_batch,
                     bf16=models.bf16, generator=_generators(seeds, SCORE_STREAM, z0.device))
    sub = None
    if cfg.score_subsample_num_t is not None:
        sub = subsample_score(per_t, ts, score_t_values(len(models.scheduler.alphas_cumprod), cfg.score_subsample_num_t))
    return ImageScore(per_t.mean(1), sub, time.perf_counter() - t0)


@torch.no_grad()
def kl_map_of(models: SegmentModels, z0: torch.Tensor, t_values: Sequence[int], seeds: Sequence[int],
              max_batch: int = 256) -> torch.Tensor:
    """KL map ``v (B, *latent)`` of ``z0 (B, C, *latent)``: mean over ``t_values`` and channels (§3)."""
    terms = kl_terms(models.unet, z0, models.scheduler, t_values, multiple=models.multiple, max_batch=max_batch,
                     bf16=models.bf16, generator=_generators(seeds, MASK_STREAM, z0.device))
    return kl_map(terms)


@torch.no_grad()
def segment_batch(
    models: SegmentModels,
    x: torch.Tensor,
    spec: VariantSpec,
    cfg: SegmentConfig,
    thresholds: torch.Tensor | None,
    seeds: Sequence[int],
    max_batch: int = 256,
    with_score: bool = True,
) -> BatchOutput:
    """Score, KL mask, heal, decode and map ``x (B, 1, *grid)`` for one variant (§3, §4.1).

    ``seeds``: one per image (:func:`case_seeds`); ``thresholds``: ``(*latent)`` for the variant's KL
    set; ``with_score=False`` skips the image-level score (``score`` is then None).
    """
    z0 = latents(models, x)
    score = image_score(models, z0, cfg, seeds, max_batch) if with_score else None
    v = m = None
    if spec.kl_t is not None:
        if thresholds is None:
            raise ValueError(f"variant {spec.name} needs KL thresholds ({spec.kl_key})")
        v = kl_map_of(models, z0, spec.kl_t, seeds, max_batch)
        m = kl_mask(v, thresholds)
    zh = heal(models.unet, z0, m if spec.heal_with_mask else None, models.scheduler, spec.timesteps,
              sampler=spec.sampler, healing=cfg.healing, multiple=models.multiple,
              generator=_generators(seeds, HEAL_STREAM, x.device), bf16=models.bf16)
    healed = decode(models.first_stage, zh / models.scale_factor, models.requantize, models.decoder_bf16)
    smooth = upsample_mask(m, x.shape[2:], cfg.gaussian_sigma) if spec.mask_residual else None
    return BatchOutput(healed, residual_map(x, healed, smooth), score, v, m)
