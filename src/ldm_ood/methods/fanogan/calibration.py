"""f-AnoGAN calibration on the healthy validation split (paper 001 §3, §4.1: thresholds as for its own maps).

:func:`calibrate_fanogan` writes ``calibration/fanogan.json`` (``RunDir.calibration_json_path``):

* ``residual_threshold``: the (1 − ``segment.fpr``) quantile of the validation anomaly maps
  ``|x − G(E(x))|`` over their foreground voxels (:func:`..segment.variants.foreground`,
  :func:`..segment.variants.fpr_threshold`), what the binary masks ``map >= threshold`` use;
* ``val_scores`` (izi_f image score per validation case), their mean and std, and ``score_threshold``:
  the (1 − ``segment.fpr``) quantile of those scores (the image-level operating point);
* ``fpr``, ``kappa``, ``n_val``.

Nothing is written when a validation value or a statistic is not finite
(:func:`..calibration_files.require_finite_calibration`); a loaded calibration holding NaN/Inf is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import Config
from ...errors import BatchFailures
from ...models.fanogan import FAnoGAN
from ...runs import RunDir
from ..base import CalibrationResult
from ..calibration_files import (
    record_calibration,
    require_finite_calibration,
    require_finite_file,
    write_calibration_json,
)
from ..context import Preprocessing, progress_bar, validation_cases, writes_run
from ..runner import each_case
from ..segment.variants import FOREGROUND_FRACTION, foreground, fpr_threshold
from .batch import fanogan_batch, fanogan_context

METHOD = "fanogan"


def load_calibration(run: RunDir) -> dict[str, Any]:
    """The run's ``calibration/fanogan.json`` (empty when not calibrated); ``NonFiniteCalibrationError``
    when it holds NaN/Inf."""
    path = run.calibration_json_path(METHOD)
    calib = json.loads(path.read_text()) if path.exists() else {}
    require_finite_file(path, calib, f"ldm-ood calibrate --method {METHOD} --run {run.root}")
    return calib


def _per_case(model: FAnoGAN, kappa: float):
    """``fn(cases, x, metas)`` for :func:`..runner.each_case`: per case its foreground map voxels, map sum
    (non-finite iff a voxel is) and izi_f score."""
    def fn(cases, x, metas):
        out = fanogan_batch(model, x, kappa)
        fg = foreground(x)
        return [(out.anomaly_map[i][fg[i]].cpu().numpy(), float(out.anomaly_map[i].double().sum()),
                 float(out.score[i])) for i in range(len(cases))]
    return fn


def _statistics(scores: dict[str, float], fg_values: list[np.ndarray], fpr: float, kappa: float) -> dict[str, Any]:
    vals = np.array(list(scores.values()), dtype=np.float64)
    fg = np.concatenate(fg_values) if fg_values else np.zeros(0)
    return {
        "residual_threshold": fpr_threshold(fg, fpr) if fg.size else float("nan"),  # NaN in, NaN out: refused
        "fpr": fpr, "foreground": f"x > min + {FOREGROUND_FRACTION} (max - min)", "kappa": kappa,
        "score_threshold": float(np.quantile(vals, 1.0 - fpr)),
        "val_scores": scores, "val_score_mean": float(vals.mean()),
        "val_score_std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "n_val": len(scores),
    }


@writes_run("calibrate fanogan")
def calibrate_fanogan(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    config: Config | None = None,
    *,
    model: FAnoGAN | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
) -> CalibrationResult:
    """Calibrate f-AnoGAN on the manifest's healthy ``val`` split (module docstring). ``force`` is
    accepted for the CLI's uniformity (f-AnoGAN depends on no other stage)."""
    ctx, model = fanogan_context(run_dir, config, model, preprocessor, device)
    run, cfg = ctx.run, ctx.cfg
    fpr, kappa = cfg.segment.fpr, cfg.fanogan.kappa
    val = validation_cases(cfg, manifest)
    failures = BatchFailures()
    scores: dict[str, float] = {}
    fg_values: list[np.ndarray] = []
    map_sums: list[float] = []
    stats: list[Any] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"calibrate {METHOD}", total=len(val))
        for item, (fg, total, score), _ in each_case(val, ctx, cfg.segment.batch_size, _per_case(model, kappa),
                                                     failures, lambda n: bar.advance(task, n)):
            scores[item.case.case_id] = score
            fg_values.append(fg)
            map_sums.append(total)
            stats.append(getattr(item.meta, "stats", None))
    if not scores:
        failures.raise_if_any(f"calibrate --method {METHOD}")
    calib = _statistics(scores, fg_values, fpr, kappa)
    path = run.calibration_json_path(METHOD)
    require_finite_calibration(
        METHOD, path, calib, {"image score": np.array(list(scores.values())), "anomaly map": np.array(map_sums)},
        cause=f"the f-AnoGAN networks produce NaN/Inf; retrain them (`ldm-ood train fanogan --run {run.root}`)")
    write_calibration_json(path, calib)
    cid = record_calibration(run, METHOD, stats)
    failures.raise_if_any(f"calibrate --method {METHOD}")
    return CalibrationResult(
        METHOD, path, len(scores), fpr, calib["score_threshold"], id=cid,
        files={"input_domain": run.input_domain_path(METHOD)},
        details={k: calib[k] for k in ("residual_threshold", "val_score_mean", "val_score_std", "kappa")})
