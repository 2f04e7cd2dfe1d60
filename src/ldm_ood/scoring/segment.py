"""Paper 001 anomaly segmentation: variants a–d, residual maps, calibration and files in/out.

One batch of images ``x (B, 1, *grid)`` goes through (§3, same code in 2D and 3D):

1. ``z_0 = s · E(x)`` (quantised latent times the LDM's scale factor);
2. the image-level score: mean L_{t-1} over the whole chain (:data:`~.kl.DEFAULT_SCORE_NUM_T`
   evenly spaced t in [1, T-1] by default, ``segment.score_num_t``; §4.1);
3. the KL map ``v`` (mean over t ∈ ``kl_t_range`` and channels) and the latent mask
   ``m = v >= threshold`` with per-position thresholds (``percentile`` of healthy validation maps);
4. healing from ``start_t`` (:func:`.healing.heal`), decoding ``x̂' = D(z'_0 / s)``
   (re-quantised: snapped to the codebook, as the reference code decodes);
5. the anomaly map ``|x - x̂'|``, times the latent mask upsampled to the image grid (nearest
   neighbour, exact factor 2**levels) and smoothed with a Gaussian of σ = ``gaussian_sigma`` latent
   voxels = ``gaussian_sigma · 2**levels`` image voxels (``scipy.ndimage.gaussian_filter``).

Variants (paper 001 Tables 1 and 3; :func:`variant_spec`):

====  ==========================================  ===========  =======================
 a    reverse DDPM steps from start_t, no mask      no mask      residual only
 b    as (a)                                        no mask      residual × smoothed mask
 c    masked healing, DDPM, every t                 KL, kl_num_t residual × smoothed mask
 d    masked healing, DDIM ``ddim_steps``           KL, 50 t     residual × smoothed mask
====  ==========================================  ===========  =======================

The binary output mask is ``map >= r``, where ``r`` is the (1 − ``segment.fpr``) quantile of the
healthy validation maps' voxels inside the foreground (``x > min + 0.01 (max − min)`` of the
preprocessed image, i.e. the head, not the air), chosen per variant at calibration.

Files: :func:`calibrate_segment` writes ``RunDir.segment_thresholds_path`` (safetensors, one
``(*latent)`` threshold per KL t-set) and ``segment_calibration_path`` (JSON: t-sets, validation
image-level scores, per-variant residual thresholds). :func:`segment` writes, on the input's grid
and affine, ``<case>_healed``, ``<case>_map`` and ``<case>_mask`` (PNG for PNG inputs, else NIfTI)
under ``RunDir.segment_dir(variant, set)`` and the rows of ``segment_scores_path(variant, set)``.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from scipy.ndimage import gaussian_filter

from ..config import Config, ConfigError, SegmentConfig
from ..data.io import suffix_of, write_image
from ..data.manifest import Case, read_manifest, select, set_names
from ..errors import BatchFailures
from ..models.first_stage import decode, encode
from ..precision import autocast, default_device, prepare_for_inference
from ..runs import RunDir
from ..training.checkpoint import atomic_write_text
from .healing import heal, healing_timesteps
from .kl import image_kl_score, kl_map, kl_mask, kl_t_values, kl_terms, kl_thresholds, score_t_values
from .records import RecordWriter

FIELDS = ("case_id", "set", "pred_score", "healed_path", "map_path", "mask_path", "seconds")
VARIANTS = ("a", "b", "c", "d")
#: paper 001 §4.3: variant (d) uses L'_{400,600} with 50 evenly spaced t (unless kl_num_t is set)
VARIANT_D_KL_NUM_T = 50
FOREGROUND_FRACTION = 0.01


# ----------------------------------------------------------------------------- variants and maps


@dataclass(frozen=True)
class VariantSpec:
    """How one variant computes its map: KL t-set of the mask, healing sampler and timesteps."""

    name: str
    kl_t: tuple[int, ...] | None  # None: no KL mask at all
    heal_with_mask: bool
    mask_residual: bool
    sampler: str
    timesteps: tuple[int, ...]

    @property
    def kl_key(self) -> str | None:
        return None if self.kl_t is None else kl_key(self.kl_t)


def kl_key(t_values: Sequence[int]) -> str:
    """Name of a KL t-set in the thresholds file, e.g. ``t400-600_n201``."""
    return f"t{t_values[0]}-{t_values[-1]}_n{len(t_values)}"


def variant_spec(variant: str, cfg: SegmentConfig) -> VariantSpec:
    """The :class:`VariantSpec` of paper 001 variant ``a``/``b``/``c``/``d`` under ``cfg``."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown segmentation variant {variant!r}; one of {', '.join(VARIANTS)}")
    every = tuple(healing_timesteps(cfg.start_t))
    kl_c = tuple(kl_t_values(cfg.kl_t_range, cfg.kl_num_t))
    if variant == "a":
        return VariantSpec("a", None, False, False, "ddpm", every)
    if variant == "b":
        return VariantSpec("b", kl_c, False, True, "ddpm", every)
    if variant == "c":
        return VariantSpec("c", kl_c, True, True, "ddpm", every)
    kl_d = tuple(kl_t_values(cfg.kl_t_range, cfg.kl_num_t or VARIANT_D_KL_NUM_T))
    return VariantSpec("d", kl_d, True, True, "ddim", tuple(healing_timesteps(cfg.start_t, cfg.ddim_steps)))


def upsample_mask(mask: torch.Tensor, grid: Sequence[int], sigma_latent: float) -> torch.Tensor:
    """Latent mask ``(B, *s)`` -> smoothed image-grid mask ``(B, 1, *grid)`` float32 in [0, 1].

    Nearest-neighbour upsampling to ``grid`` (an exact factor per axis), then a Gaussian filter of
    σ = ``sigma_latent × factor`` image voxels per axis (boundary mode ``nearest``); σ = 0: no smoothing.
    """
    grid = tuple(int(g) for g in grid)
    up = F.interpolate(mask[:, None].float(), size=grid, mode="nearest")
    if sigma_latent <= 0:
        return up
    sig = (0.0, 0.0) + tuple(sigma_latent * g / s for g, s in zip(grid, mask.shape[1:]))
    sm = gaussian_filter(up.cpu().double().numpy(), sigma=sig, mode="nearest", truncate=4.0)
    return torch.from_numpy(sm.astype(np.float32)).to(mask.device)


def residual_map(x: torch.Tensor, healed: torch.Tensor, smoothed_mask: torch.Tensor | None) -> torch.Tensor:
    """``|x - x̂'|`` (× the smoothed upsampled mask when given), ``(B, 1, *grid)``."""
    res = (x.float() - healed.float()).abs()
    return res if smoothed_mask is None else res * smoothed_mask.to(res.device)


def foreground(x: torch.Tensor) -> torch.Tensor:
    """Per image, voxels above ``min + 1 % of (max − min)``: the head rather than the air. Bool, x's shape."""
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    level = (lo + FOREGROUND_FRACTION * (hi - lo)).view(-1, *([1] * (x.dim() - 1)))
    return x > level


def fpr_threshold(values: np.ndarray, fpr: float) -> float:
    """The (1 − ``fpr``) quantile of healthy map voxels: a fraction ``fpr`` of them lies above."""
    if values.size == 0:
        raise ValueError("no foreground voxels in the validation maps")
    return float(np.quantile(values.astype(np.float64), 1.0 - fpr))


# ----------------------------------------------------------------------------- one batch


@dataclass
class SegmentModels:
    """What segmentation needs from a run: first stage, UNet, schedule and latent preparation."""

    first_stage: torch.nn.Module
    unet: torch.nn.Module
    scheduler: Any
    scale_factor: float
    multiple: int
    spatial_dims: int
    bf16: bool = False
    requantize: bool = True

    @classmethod
    def from_run(cls, run: RunDir, device: torch.device, bf16: bool) -> "SegmentModels":
        from ..models.loading import load_first_stage, load_ldm

        fs, ldm = load_first_stage(run, device), load_ldm(run, device)
        dims = len(ldm.latent_spatial_shape)
        return cls(prepare_for_inference(fs, dims, bf16), prepare_for_inference(ldm.unet, dims, bf16),
                   ldm.ddpm_scheduler(), ldm.scale_factor, ldm.latent_multiple, dims, bf16)


@dataclass
class BatchOutput:
    """Results of :func:`segment_batch` for ``B`` images."""

    healed: torch.Tensor  # (B, 1, *grid) decoded healed image x̂'
    anomaly_map: torch.Tensor  # (B, 1, *grid)
    pred_score: torch.Tensor | None  # (B,) mean KL over the chain (§4.1)
    kl_map: torch.Tensor | None = None  # (B, *latent) v
    latent_mask: torch.Tensor | None = None  # (B, *latent) bool m


def case_seeds(case_ids: Sequence[str], seed: int) -> list[int]:
    """One seed per case from ``seed`` and the case id: results do not depend on how cases are batched."""
    return [seed * 1_000_003 + zlib.crc32(c.encode()) for c in case_ids]


def _generators(seeds: Sequence[int], stream: int, device: torch.device | str) -> list[torch.Generator]:
    """Independent per-case generators for each random stream (0: score KL, 1: mask KL, 2: healing),
    so e.g. variants a and b heal with the same noise whether or not a KL mask was computed."""
    return [torch.Generator(device=device).manual_seed((s * 3 + stream) % (2**63)) for s in seeds]


@torch.no_grad()
def latents(models: SegmentModels, x: torch.Tensor) -> torch.Tensor:
    """``z_0 = s · E(x)``: ``(B, 1, *grid) -> (B, C, *latent)`` float32."""
    with autocast(x.device, models.bf16):
        return encode(models.first_stage, x).float() * models.scale_factor


def _score_t(models: SegmentModels, cfg: SegmentConfig) -> list[int]:
    return score_t_values(len(models.scheduler.alphas_cumprod), cfg.score_num_t)


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
    set; ``with_score=False`` skips the image-level score (``pred_score`` is then None).
    """
    dev = x.device
    z0 = latents(models, x)
    kw = dict(multiple=models.multiple, max_batch=max_batch, bf16=models.bf16)
    score = None
    if with_score:
        score = image_kl_score(kl_terms(models.unet, z0, models.scheduler, _score_t(models, cfg),
                                        generator=_generators(seeds, 0, dev), **kw))
    v = m = None
    if spec.kl_t is not None:
        if thresholds is None:
            raise ValueError(f"variant {spec.name} needs KL thresholds ({spec.kl_key})")
        v = kl_map(kl_terms(models.unet, z0, models.scheduler, spec.kl_t, generator=_generators(seeds, 1, dev), **kw))
        m = kl_mask(v, thresholds)
    zh = heal(models.unet, z0, m if spec.heal_with_mask else None, models.scheduler, spec.timesteps,
              sampler=spec.sampler, mode=cfg.healing, multiple=models.multiple,
              generator=_generators(seeds, 2, dev), bf16=models.bf16)
    with autocast(x.device, models.bf16):
        healed = decode(models.first_stage, zh / models.scale_factor, models.requantize).float()
    smooth = upsample_mask(m, x.shape[2:], cfg.gaussian_sigma) if spec.mask_residual else None
    return BatchOutput(healed, residual_map(x, healed, smooth), score, v, m)


# ----------------------------------------------------------------------------- calibration


def _setup(run_dir, config, models, preprocessor, device):
    run = RunDir(run_dir)
    cfg = config if config is not None else run.config_or(None)
    device = torch.device(device) if device is not None else default_device()
    models = models or SegmentModels.from_run(run, device, cfg.segment.bf16)
    if preprocessor is None:
        from ..data.transforms import Preprocessor

        preprocessor = Preprocessor(cfg.data)
    return run, cfg, models, preprocessor, device


def _cases(cfg: Config, manifest: str | Path | None) -> list[Case]:
    source = manifest if manifest is not None else cfg.data.manifest
    if source is None:
        raise ConfigError("no manifest: pass --data or set data.manifest in the run's config")
    return read_manifest(source)


def _batches(cases: Sequence[Case], preprocessor, size: int, failures: BatchFailures):
    """Load cases in batches of ``size``; unreadable cases go to ``failures``. Yields (cases, x, metas)."""
    for i in range(0, len(cases), size):
        ok, xs, metas = [], [], []
        for case in cases[i : i + size]:
            with failures.guard(case.case_id, case.path):
                x, meta = preprocessor.load(case.path)
                ok.append(case), xs.append(x), metas.append(meta)
        if ok:
            yield ok, torch.stack(xs), metas


def load_calibration(run: RunDir) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The run's segmentation calibration JSON and KL thresholds (empty when not calibrated)."""
    from safetensors.torch import load_file

    calib = json.loads(run.segment_calibration_path.read_text()) if run.segment_calibration_path.exists() else {}
    thr = load_file(str(run.segment_thresholds_path)) if run.segment_thresholds_path.exists() else {}
    return calib, thr


def _save_calibration(run: RunDir, calib: dict[str, Any], thr: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    run.ensure(run.calibration_dir)
    tmp = run.segment_thresholds_path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in thr.items()}, str(tmp))
    tmp.replace(run.segment_thresholds_path)
    atomic_write_text(run.segment_calibration_path, json.dumps(calib, indent=2))


def calibrate_segment(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    config: Config | None = None,
    *,
    variants: Sequence[str] | None = None,
    force: bool = True,
    models: SegmentModels | None = None,
    preprocessor: Any = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Calibrate paper 001 segmentation on the manifest's healthy ``val`` split.

    Pass 1 (KL): per-position ``percentile`` thresholds for every KL t-set the ``variants`` need,
    and the validation image-level scores. Pass 2 (per variant): the residual-map threshold at
    ``segment.fpr`` over foreground voxels. ``variants`` defaults to ``(segment.variant,)``;
    ``force=False`` keeps what is already calibrated. Returns a summary dict.
    """
    run, cfg, models, preprocessor, device = _setup(run_dir, config, models, preprocessor, device)
    scfg = cfg.segment
    specs = [variant_spec(v, scfg) for v in (variants or (scfg.variant,))]
    calib, thr = ({}, {}) if force else load_calibration(run)
    calib.setdefault("kl", {}), calib.setdefault("variants", {})
    calib.update(percentile=scfg.percentile, kl_t_range=list(scfg.kl_t_range), seed=scfg.seed)
    val = select(_cases(cfg, manifest), split="val")
    if not val:
        raise ConfigError("the manifest has no split=val cases to calibrate segmentation on")
    failures = BatchFailures()
    t_sets = {s.kl_key: s.kl_t for s in specs if s.kl_t is not None and s.kl_key not in thr}
    need_scores = "val_scores" not in calib
    if t_sets or need_scores:
        maps: dict[str, list[torch.Tensor]] = {k: [] for k in t_sets}
        scores: dict[str, float] = {}
        for cases, x, _ in _batches(val, preprocessor, scfg.batch_size, failures):
            with torch.no_grad():
                x = x.to(device)
                seeds = case_seeds([c.case_id for c in cases], scfg.seed)
                z0 = latents(models, x)
                kw = dict(multiple=models.multiple, bf16=models.bf16)
                s = image_kl_score(kl_terms(models.unet, z0, models.scheduler, _score_t(models, scfg),
                                            generator=_generators(seeds, 0, device), **kw))
                scores.update({c.case_id: float(v) for c, v in zip(cases, s)})
                for key, ts in t_sets.items():
                    gens = _generators(seeds, 1, device)
                    maps[key].append(kl_map(kl_terms(models.unet, z0, models.scheduler, ts, generator=gens, **kw)).cpu())
        if not scores:
            failures.raise_if_any("calibrate --method segment")
        for key, ts in t_sets.items():
            thr[key] = kl_thresholds(torch.cat(maps[key]), scfg.percentile)
            calib["kl"][key] = {"t_values": list(ts), "n_val": len(scores)}
        vals = np.array(list(scores.values()))
        calib.update(val_scores=scores, score_num_t=scfg.score_num_t, val_score_mean=float(vals.mean()),
                     val_score_std=float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
    for spec in specs:
        if spec.name in calib["variants"]:
            continue
        fg_values: list[np.ndarray] = []
        for cases, x, _ in _batches(val, preprocessor, scfg.batch_size, failures):
            x = x.to(device)
            seeds = case_seeds([c.case_id for c in cases], scfg.seed)
            out = segment_batch(models, x, spec, scfg, thr.get(spec.kl_key) if spec.kl_key else None, seeds,
                                with_score=False)
            fg_values.append(out.anomaly_map[foreground(x)].cpu().numpy())
        calib["variants"][spec.name] = {
            "residual_threshold": fpr_threshold(np.concatenate(fg_values), scfg.fpr) if fg_values else None,
            "fpr": scfg.fpr, "foreground": f"x > min + {FOREGROUND_FRACTION} (max - min)",
            "kl_key": spec.kl_key, "n_val": len(val) - len(failures),
        }
    _save_calibration(run, calib, thr)
    failures.raise_if_any("calibrate --method segment")
    return {"path": str(run.segment_calibration_path), "thresholds": str(run.segment_thresholds_path),
            "n_val": len(calib.get("val_scores", {})),
            "residual_thresholds": {k: v["residual_threshold"] for k, v in calib["variants"].items()}}


# ----------------------------------------------------------------------------- segmentation


@dataclass
class SegmentResult:
    """What :func:`segment` wrote: one score CSV per set (or the output folder's), counts."""

    variant: str
    outputs: dict[str, Path] = field(default_factory=dict)
    segmented: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0


def _write_outputs(preprocessor, meta, case: Case, out_dir: Path, healed, amap, threshold: float) -> dict[str, str]:
    ext = ".png" if suffix_of(case.path) == ".png" else ".nii.gz"
    h = preprocessor.invert(healed.cpu().numpy(), meta)
    m = preprocessor.invert(amap.cpu().numpy(), meta)
    binary = (m.array >= threshold).astype(np.float32 if ext == ".png" else np.uint8)
    paths = {k: out_dir / f"{case.case_id}_{k}{ext}" for k in ("healed", "map", "mask")}
    write_image(paths["healed"], h.array, h.affine)
    write_image(paths["map"], m.array, m.affine)
    write_image(paths["mask"], binary, m.affine)
    return {f"{k}_path": str(p) for k, p in paths.items()}


def segment(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    sets: Sequence[str] | None = None,
    variant: str = "c",
    input_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    *,
    config: Config | None = None,
    models: SegmentModels | None = None,
    preprocessor: Any = None,
    device: str | torch.device | None = None,
) -> SegmentResult:
    """Segment anomalies with variant ``variant`` (paper 001 §3): healed image, map, mask, score.

    Manifest mode: every ``test`` set (or ``sets``) -> ``RunDir.segment_dir(variant, set)`` and
    ``segment_scores_path(variant, set)``. Folder mode (``input_dir`` + ``output_dir``): every image
    of the folder -> ``output_dir/<case>_{healed,map,mask}.*`` and ``output_dir/segment_<variant>.csv``.
    Finished cases are skipped; ``seconds`` is the batch's time divided by its size. A variant not
    yet calibrated is calibrated first on the run's validation split.
    """
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    run, cfg, models, preprocessor, device = _setup(run_dir, config, models, preprocessor, device)
    scfg, spec = cfg.segment, variant_spec(variant, cfg.segment)
    calib, thr = load_calibration(run)
    if variant not in calib.get("variants", {}) or (spec.kl_key and spec.kl_key not in thr):
        calibrate_segment(run.root, config=cfg, variants=[variant], force=False, models=models,
                          preprocessor=preprocessor, device=device)
        calib, thr = load_calibration(run)
    threshold = calib["variants"][variant]["residual_threshold"]
    kl_thr = thr.get(spec.kl_key) if spec.kl_key else None

    if input_dir is not None:
        jobs = [(Path(output_dir) / f"segment_{variant}.csv", Path(output_dir), read_manifest(input_dir))]
    else:
        cases = _cases(cfg, manifest)
        jobs = []
        for name in sets or set_names(cases, split="test"):
            todo = select(cases, split="test", set_name=name)
            if not todo:
                raise ConfigError(f"no test cases in set {name!r}")
            jobs.append((run.segment_scores_path(variant, name), run.segment_dir(variant, name), todo))

    failures, result = BatchFailures(), SegmentResult(variant)
    t_start = time.perf_counter()
    with Progress(transient=True) as progress:
        for csv_path, out_dir, cases in jobs:
            writer = RecordWriter(csv_path, FIELDS)
            result.outputs[cases[0].set if input_dir is None else "folder"] = csv_path
            done = writer.done_ids()
            todo = [c for c in cases if c.case_id not in done]
            result.skipped += len(cases) - len(todo)
            task = progress.add_task(f"segment ({variant}) {cases[0].set}", total=len(todo))
            for batch, x, metas in _batches(todo, preprocessor, scfg.batch_size, failures):
                t0 = time.perf_counter()
                try:
                    x = x.to(device)
                    out = segment_batch(models, x, spec, scfg, kl_thr, case_seeds([c.case_id for c in batch], scfg.seed))
                except Exception as err:  # one failing batch never loses the others
                    for c in batch:
                        failures.add(c.case_id, f"{c.path}: {type(err).__name__}: {err}")
                    progress.advance(task, len(batch))
                    continue
                seconds = (time.perf_counter() - t0) / len(batch)
                for i, (case, meta) in enumerate(zip(batch, metas)):
                    with failures.guard(case.case_id, case.path):
                        paths = _write_outputs(preprocessor, meta, case, out_dir, out.healed[i, 0], out.anomaly_map[i, 0], threshold)
                        writer.write({"case_id": case.case_id, "set": case.set, "pred_score": float(out.pred_score[i]),
                                      **paths, "seconds": round(seconds, 4)})
                        result.segmented += 1
                    progress.advance(task)
    result.seconds = time.perf_counter() - t_start
    result.failed = len(failures)
    failures.raise_if_any(f"segment (variant {variant})")
    return result
