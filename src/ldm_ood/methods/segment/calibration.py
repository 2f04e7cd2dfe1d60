"""Paper 001 segmentation calibration on the healthy validation split (§3, §4.1).

:func:`calibrate_segment` writes

* ``RunDir.segment_thresholds_path`` (safetensors): one ``(*latent)`` per-position KL threshold per
  KL t-set (the ``segment.percentile`` of the healthy validation KL maps), keyed by
  :func:`~.variants.kl_key`;
* ``RunDir.segment_calibration_path`` (JSON): the t-sets, the validation image-level scores (mean
  and std), and per variant the residual-map threshold: the (1 − ``segment.fpr``) quantile of the
  validation maps' foreground voxels (:func:`~.variants.fpr_threshold`).

Nothing is written when a validation value or a statistic is not finite (``NonFiniteCalibrationError``,
:func:`..calibration_files.require_finite_calibration`), and a loaded calibration holding NaN/Inf is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...artifacts.atomic import atomic_write
from ...artifacts.integrity import file_sha256
from ...config import Config
from ...errors import BatchFailures
from ...runs import RunDir
from ..base import CalibrationResult
from ..calibration_files import (
    readable,
    record_calibration,
    require_finite_calibration,
    require_finite_file,
    write_calibration_json,
)
from ..context import Context, Preprocessing, validation_cases, writes_run
from ..runner import load_batches
from .batch import SegmentModels, case_seeds, image_score, kl_map_of, latents, segment_batch, segment_context
from .kl import kl_thresholds
from .variants import FOREGROUND_FRACTION, VariantSpec, foreground, fpr_threshold, variant_spec


def load_calibration(run: RunDir) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The run's segmentation calibration JSON and KL thresholds (empty when not calibrated);
    ``NonFiniteCalibrationError`` when a file holds NaN/Inf (written by an older version)."""
    from safetensors.torch import load_file

    with readable(run.segment_calibration_path, "segment", run.root):
        calib = json.loads(run.segment_calibration_path.read_text()) if run.segment_calibration_path.exists() else {}
    with readable(run.segment_thresholds_path, "segment", run.root):
        thr = load_file(str(run.segment_thresholds_path)) if run.segment_thresholds_path.exists() else {}
    command = f"ldm-ood calibrate --method segment --run {run.root}"
    require_finite_file(run.segment_calibration_path, calib, command)
    require_finite_file(run.segment_thresholds_path, thr, command)
    return calib, thr


def _save_calibration(run: RunDir, calib: dict[str, Any], thr: dict[str, torch.Tensor],
                      per_case: dict[str, np.ndarray]) -> None:
    """Check (:func:`..calibration_files.require_finite_calibration`: the raw validation values ``per_case`` and
    everything about to be saved), then write the KL thresholds and the JSON."""
    from safetensors.torch import save_file

    require_finite_calibration(
        "segment", run.segment_calibration_path, {**calib, "kl_thresholds": thr}, per_case,
        cause=f"the LDM or the first stage produces NaN/Inf; retrain it (`ldm-ood train ldm --run {run.root}`, "
        "or first-stage if that one is broken)",
    )
    run.ensure(run.calibration_dir)
    atomic_write(run.segment_thresholds_path, lambda tmp: save_file({k: v.contiguous() for k, v in thr.items()}, str(tmp)))
    write_calibration_json(run.segment_calibration_path, calib)


def _batches(cases: Sequence, ctx: Context, size: int, failures: BatchFailures):
    """``(cases, x (b, 1, *grid), metas)`` of the preprocessed validation cases, ``size`` at a time
    (unreadable ones skipped)."""
    for _, group in load_batches(cases, ctx, size, failures):
        if group:
            yield [g.case for g in group], torch.stack([g.x for g in group]), [g.meta for g in group]


def _residual_threshold(ctx: Context, models: SegmentModels, spec: VariantSpec, val: Sequence, thr: dict[str, torch.Tensor],
                        per_case: dict[str, np.ndarray], failures: BatchFailures) -> dict[str, Any]:
    """Pass 2 for one variant: its residual maps on the validation cases and the threshold at
    ``segment.fpr`` over foreground voxels (each case's map sum goes to ``per_case`` for the finite check)."""
    scfg, device = ctx.cfg.segment, ctx.device
    fg_values: list[np.ndarray] = []
    map_sums: list[np.ndarray] = []  # per case: non-finite iff its map has a NaN/Inf voxel
    for cases, x, _ in _batches(val, ctx, scfg.batch_size, failures):
        x = x.to(device)
        seeds = case_seeds([c.case_id for c in cases], scfg.seed)
        out = segment_batch(models, x, spec, scfg, thr.get(spec.kl_key) if spec.kl_key else None, seeds,
                            with_score=False)
        fg_values.append(out.anomaly_map[foreground(x)].cpu().numpy())
        map_sums.append(out.anomaly_map.flatten(1).double().sum(1).cpu().numpy())
    if map_sums:
        per_case[f"residual map ({spec.name})"] = np.concatenate(map_sums)
    return {
        "residual_threshold": fpr_threshold(np.concatenate(fg_values), scfg.fpr) if fg_values else None,
        "fpr": scfg.fpr, "foreground": f"x > min + {FOREGROUND_FRACTION} (max - min)",
        "kl_key": spec.kl_key, "n_val": len(val) - len(failures),
    }


@writes_run("calibrate segment")
def calibrate_segment(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    config: Config | None = None,
    *,
    variants: Sequence[str] | None = None,
    recalibrate: bool = True,
    models: SegmentModels | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    force: bool = False,
) -> CalibrationResult:
    """Calibrate paper 001 segmentation on the manifest's healthy ``val`` split.

    Pass 1 (KL): per-position ``percentile`` thresholds for every KL t-set the ``variants`` need,
    and the validation image-level scores. Pass 2 (per variant): the residual-map threshold at
    ``segment.fpr`` over foreground voxels. ``variants`` defaults to ``(segment.variant,)``;
    ``recalibrate=False`` keeps what is already calibrated. The thresholds are per variant
    (``details["residual_thresholds"]``). The input domain and the record are saved with it;
    ``force``: calibrate with an LDM trained on another first stage.
    """
    ctx, models = segment_context(run_dir, config, models, preprocessor, device, force)
    run, cfg, preprocessor, device = ctx.run, ctx.cfg, ctx.preprocessor, ctx.device
    scfg = cfg.segment
    specs = [variant_spec(v, scfg) for v in (variants or (scfg.variant,))]
    calib, thr = ({}, {}) if recalibrate else load_calibration(run)
    calib.setdefault("kl", {}), calib.setdefault("variants", {})
    calib.update(percentile=scfg.percentile, kl_t_range=list(scfg.kl_t_range), seed=scfg.seed)
    val = validation_cases(cfg, manifest)
    failures = BatchFailures()
    per_case: dict[str, np.ndarray] = {}  # raw validation values, first axis = case (finite check)
    t_sets = {s.kl_key: s.kl_t for s in specs if s.kl_t is not None and s.kl_key not in thr}
    stats: list[Any] | None = None  # InputStats of the validation scans, when pass 1 reads them
    if t_sets or "val_scores" not in calib:
        stats = []
        maps: dict[str, list[torch.Tensor]] = {k: [] for k in t_sets}
        scores: dict[str, float] = {}
        for cases, x, metas in _batches(val, ctx, scfg.batch_size, failures):
            stats += [getattr(m, "stats", None) for m in metas]
            seeds = case_seeds([c.case_id for c in cases], scfg.seed)
            z0 = latents(models, x.to(device))
            scores.update({c.case_id: float(v) for c, v in zip(cases, image_score(models, z0, scfg, seeds).score)})
            for key, ts in t_sets.items():
                maps[key].append(kl_map_of(models, z0, ts, seeds).cpu())
        if not scores:
            failures.raise_if_any("calibrate --method segment")
        for key, ts in t_sets.items():
            kl = torch.cat(maps[key])
            per_case[f"KL map {key}"] = kl.double().numpy()
            thr[key] = kl_thresholds(kl, scfg.percentile)
            calib["kl"][key] = {"t_values": list(ts), "n_val": len(scores)}
        vals = np.array(list(scores.values()))
        per_case["image score"] = vals
        calib.update(val_scores=scores, score_num_t=scfg.score_num_t, val_score_mean=float(vals.mean()),
                     val_score_std=float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
    for spec in specs:
        if spec.name not in calib["variants"]:
            calib["variants"][spec.name] = _residual_threshold(ctx, models, spec, val, thr, per_case, failures)
    _save_calibration(run, calib, thr, per_case)
    cid = record_calibration(run, "segment", stats)
    failures.raise_if_any("calibrate --method segment")
    return CalibrationResult(
        "segment", run.segment_calibration_path, len(calib.get("val_scores", {})), scfg.fpr, None, id=cid,
        files={"kl_thresholds": run.segment_thresholds_path, "input_domain": run.input_domain_path("segment")},
        details={"residual_thresholds": {k: v["residual_threshold"] for k, v in calib["variants"].items()}})


def variant_calibration_id(run: RunDir, whole_id: str, calib: dict[str, Any], thr: dict[str, torch.Tensor],
                           spec: VariantSpec) -> str:
    """The calibration id a variant's rows carry: 12 hex digits of the hash of what that variant reads
    (``""`` when the run's calibration has no record, as :func:`..calibration_files.check_calibration`).

    That is the statistics every variant shares (validation image scores, percentile, seed), the input
    domain, the variant's residual threshold, and its KL t-set and per-position thresholds; the networks
    are checked by ``check_calibration`` before. Calibrating one more variant later adds its entries to
    the shared files (the run's calibration id changes) but not this id, so the other variants' score
    files are still accepted; a recalibrated variant gets a new id and its old rows are refused.
    """
    if not whole_id:
        return ""
    own: dict[str, Any] = {k: v for k, v in calib.items() if k not in ("kl", "variants")}
    own["variant"] = calib.get("variants", {}).get(spec.name)
    domain = run.input_domain_path("segment")
    own["input_domain"] = file_sha256(domain) if domain.exists() else None
    if spec.kl_key:
        own["kl"] = calib.get("kl", {}).get(spec.kl_key)
        tensor = thr[spec.kl_key].detach().float().contiguous().numpy()
        own["kl_thresholds"] = [hashlib.sha256(tensor.tobytes()).hexdigest(), list(tensor.shape)]
    return hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()[:12]
