"""Calibration of the transformer baselines on the healthy validation split (paper 001 §3, §4.1,
Table 1 "Transformer" / "Ensemble").

:func:`calibrate_heal` writes ``RunDir.calibration_json_path(<method>)`` (``calibration/transformer.json``
or ``calibration/ensemble.json``) with

* ``token_threshold``: the resampling threshold on the per-position log-likelihood (summed over the
  members): ``token_healing.probability`` set → ``M · log(probability)`` for ``M`` members (every
  member's probability at that level); else the ``token_healing.percentile`` percentile (linear
  interpolation) of every position of every validation scan (:func:`token_threshold`);
* ``residual_threshold``: the (1 − ``segment.fpr``) quantile of the validation maps' foreground
  voxels after healing with that threshold (:func:`~ldm_ood.methods.segment.variants.fpr_threshold`);
* ``image_threshold``: the (1 − ``segment.fpr``) quantile of the validation image scores (sum NLL);
* the validation scores by case, their mean and std, the orderings, the healing member and sampling.

Nothing is written when a validation value or a statistic is not finite
(:func:`..calibration_files.require_finite_calibration`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ...config import Config, ConfigError
from ...config.schema import TokenHealingConfig
from ...errors import BatchFailures
from ..base import CalibrationResult
from ..calibration_files import (
    record_calibration,
    require_finite_calibration,
    require_finite_file,
    write_calibration_json,
)
from ..context import Context, Preprocessing, progress_bar, validation_cases
from ..runner import each_case
from ..segment.variants import FOREGROUND_FRACTION, foreground, fpr_threshold
from .batch import HealModels, case_seeds, heal_batch, heal_context, likelihoods

Advance = Callable[[int], None]


def token_threshold(values: np.ndarray, cfg: TokenHealingConfig, members: int) -> tuple[float, str]:
    """``(threshold, rule)`` on per-position log-likelihoods summed over ``members`` (module docstring);
    ``values``: every validation position's value (used by the percentile rule)."""
    if cfg.probability is not None:
        return members * float(np.log(cfg.probability)), f"{members} x log(probability {cfg.probability})"
    if values.size == 0:
        raise ValueError("no validation log-likelihoods to take the percentile of")
    return float(np.percentile(values.astype(np.float64), cfg.percentile)), \
        f"percentile {cfg.percentile} of the validation per-position log-likelihoods"


def _pass_likelihood(ctx: Context, models: HealModels, val: list, failures: BatchFailures, advance: Advance):
    """Pass 1: ``(case ids, image scores, per-position log-likelihoods (N, L), input stats)`` of the readable cases."""
    def fn(cases, x, metas):
        _, ll = likelihoods(models, x)
        return list(zip((-ll.flatten(1).double().sum(1)).tolist(), ll.flatten(1).cpu().numpy()))

    ids, scores, lls, stats = [], [], [], []
    for item, (score, ll), _ in each_case(val, ctx, ctx.cfg.token_healing.batch_size, fn, failures, advance):
        ids.append(item.case.case_id)
        scores.append(score)
        lls.append(ll)
        stats.append(getattr(item.meta, "stats", None))
    return ids, np.asarray(scores, dtype=np.float64), np.stack(lls) if lls else np.zeros((0, 0)), stats


def _pass_residual(ctx: Context, models: HealModels, val: list, threshold: float, failures: BatchFailures,
                   advance: Advance) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: ``(foreground voxels of every healed validation map, each case's map sum)``."""
    cfg = ctx.cfg

    def fn(cases, x, metas):
        out = heal_batch(models, x, threshold, cfg, case_seeds([c.case_id for c in cases], cfg.token_healing.seed))
        fg = foreground(x)
        return [(out.anomaly_map[i][fg[i]].cpu().numpy(), float(out.anomaly_map[i].double().sum()))
                for i in range(x.shape[0])]

    results = [r for _, r, _ in each_case(val, ctx, cfg.token_healing.batch_size, fn, failures, advance)]
    if not results:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([r[0] for r in results]), np.asarray([r[1] for r in results])


def _statistics(method: str, models: HealModels, cfg: Config, ids: list[str], scores: np.ndarray,
                threshold: float, rule: str) -> dict[str, Any]:
    th = cfg.token_healing
    return {
        "method": method, "orderings": models.networks.kinds, "heal_ordering": models.healer_ordering,
        "sampling": th.sampling, "seed": th.seed, "token_threshold": threshold, "token_threshold_rule": rule,
        "percentile": th.percentile, "probability": th.probability, "fpr": cfg.segment.fpr,
        "gaussian_sigma": cfg.segment.gaussian_sigma, "foreground": f"x > min + {FOREGROUND_FRACTION} (max - min)",
        "image_threshold": float(np.quantile(scores, 1.0 - cfg.segment.fpr)),
        "val_scores": dict(zip(ids, scores.tolist())), "val_score_mean": float(scores.mean()),
        "val_score_std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0, "n_val": len(ids),
    }


def calibrate_heal(
    method: str, run_dir: str | Path, manifest: str | Path | None = None, config: Config | None = None, *,
    models: HealModels | None = None, preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None, progress: bool = True, force: bool = False,
) -> CalibrationResult:
    """Calibrate ``method`` (``transformer`` | ``ensemble``) on the manifest's healthy ``val`` split
    (module docstring); saves the JSON, the input domain and the record. ``force``: calibrate with
    networks trained on another first stage."""
    ctx, models = heal_context(method, run_dir, config, models, preprocessor, device, force)
    run, cfg = ctx.run, ctx.cfg
    val, failures = validation_cases(cfg, manifest), BatchFailures()
    with progress_bar(progress) as bar:
        task = bar.add_task(f"calibrate {method}", total=2 * len(val))

        def advance(n: int) -> None:
            bar.advance(task, n)

        ids, scores, lls, stats = _pass_likelihood(ctx, models, val, failures, advance)
        if not ids:
            failures.raise_if_any(f"calibrate --method {method}")
        threshold, rule = token_threshold(lls.ravel(), cfg.token_healing, len(models.networks.transformers))
        done = set(ids)
        fg, map_sums = _pass_residual(ctx, models, [c for c in val if c.case_id in done], threshold, failures, advance)
    calib = _statistics(method, models, cfg, ids, scores, threshold, rule)
    calib["residual_threshold"] = fpr_threshold(fg, cfg.segment.fpr) if fg.size else None
    path = run.calibration_json_path(method)
    require_finite_calibration(
        method, path, calib, {"image score": scores, "token log-likelihood": lls, "residual map": map_sums},
        cause=f"the {method} or the first stage produces NaN/Inf; retrain it (`ldm-ood train {method} --run {run.root}`, "
        "or first-stage if that one is broken)")
    write_calibration_json(path, calib)
    cid = record_calibration(run, method, stats)
    failures.raise_if_any(f"calibrate --method {method}")
    return CalibrationResult(method, path, len(ids), cfg.segment.fpr, calib["image_threshold"], id=cid,
                             files={"input_domain": run.input_domain_path(method)},
                             details={"residual_threshold": calib["residual_threshold"],
                                      "token_threshold": threshold, "val_score_mean": calib["val_score_mean"]})


def load_heal_calibration(method: str, ctx: Context, models: HealModels) -> dict[str, Any] | None:
    """The run's calibration of ``method`` (None when not calibrated); refused when it holds NaN/Inf or
    was made with other orderings or another healing member than ``models``."""
    path = ctx.run.calibration_json_path(method)
    if not path.exists():
        return None
    calib = json.loads(path.read_text())
    command = f"ldm-ood calibrate --method {method} --run {ctx.run.root}"
    require_finite_file(path, calib, command)
    made = [list(calib.get("orderings") or []), calib.get("heal_ordering")]
    now = [list(models.networks.kinds), models.healer_ordering]
    if made != now:
        raise ConfigError(f"{path}: calibrated with orderings {made[0]} healed by {made[1]}, segmenting with "
                          f"{now[0]} healed by {now[1]}; rerun `{command}`")
    return calib
