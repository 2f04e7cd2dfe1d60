"""Files in, files out for the AE and VAE baselines: ``calibrate --method ae|vae``, ``segment --method ae|vae``.

Paper 001 Table 1 compares its method with "AE (Spatial)" and "VAE (Dense)" of Baur et al. 2021;
both are run here exactly alike, through one code path per step (``kind`` = ``ae`` | ``vae``):

* :func:`calibrate_ae` / :func:`calibrate_vae`: on the manifest's healthy ``val`` split, the
  residual threshold at ``segment.fpr`` over the foreground voxels of the validation maps
  (:func:`~ldm_ood.methods.segment.variants.foreground`, :func:`~..segment.variants.fpr_threshold`),
  the validation image scores (mean, std, and their (1 − ``segment.fpr``) quantile as the image-level
  operating point), all finite-checked, to ``calibration/<kind>.json``, with its input domain and record;
* :func:`segment_ae` / :func:`segment_vae`: per image ``<case>_healed`` (= x̂), ``<case>_map``
  (:mod:`.maps`) and ``<case>_mask`` (map ≥ residual threshold) on the input's grid under
  ``segment/<kind>/<set>/``, and the rows of ``segment/<kind>/<set>.csv`` (the columns of paper
  001's method, ``pred_score`` = the top-k image score). Folder mode (MOOD layout) as every method.
  A baseline not calibrated yet is calibrated first.

Networks and preprocessing come from the run unless passed in (``model=``, ``preprocessor=``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...config import Config
from ...config.schema import AutoencoderConfig
from ...data.manifest import Case
from ...errors import BatchFailures
from ...runs import RunDir
from .. import inference_precision
from ..base import CalibrationResult, RunResult
from ..calibration_files import (
    check_calibration,
    record_calibration,
    require_finite_calibration,
    require_finite_file,
    write_calibration_json,
)
from ..context import Context, Preprocessing, load_context, progress_bar, validation_cases, writes_run
from ..outputs import write_segmentation
from ..runner import each_case, run_method
from ..sharding import on_main
from ..segment.pipeline import FIELDS
from ..segment.variants import FOREGROUND_FRACTION, foreground, fpr_threshold
from .maps import anomaly_batch, top_k_count
from .model import load_autoencoder, reconstruct, section, set_autoencoder_layout


@dataclass
class Baseline:
    """A loaded baseline: the run's context, its network (eval, on the device) and its precision."""

    kind: str
    ctx: Context
    model: torch.nn.Module
    bf16: bool

    @property
    def cfg(self) -> AutoencoderConfig:
        return section(self.ctx.cfg, self.kind)


def _probe(model: torch.nn.Module, grid: Sequence[int], n: int, device: torch.device):
    """Reconstructions of ``n`` random images ``(n, 1, *grid)`` (the inference precision self-check)."""
    x = torch.rand((n, 1, *grid), generator=torch.Generator().manual_seed(0)).to(device)

    def probe(bf16: bool) -> list[torch.Tensor]:
        set_autoencoder_layout(model, len(grid), bf16)
        return [reconstruct(model, x, bf16)]

    return probe, (tuple(x.shape),)


def load_baseline(kind: str, run_dir: str | Path, config: Config | None = None, model: torch.nn.Module | None = None,
                  preprocessor: Preprocessing | None = None, device: str | torch.device | None = None) -> Baseline:
    """The run's context and trained ``kind`` network in the precision ``segment.precision`` resolves to."""
    ctx = load_context(run_dir, config, preprocessor, device)
    model = load_autoencoder(ctx.run, kind, ctx.device) if model is None else model.to(ctx.device).eval()
    grid, n = ctx.cfg.data.grid, section(ctx.cfg, kind).batch_size
    choices = inference_precision.resolve(ctx.cfg.segment.precision, {
        kind: (model, lambda: _probe(model, grid, n, ctx.device))}, ctx.device, "segmentation")
    inference_precision.report(choices, ctx.run)
    set_autoencoder_layout(model.eval(), len(grid), choices[kind].bf16)
    return Baseline(kind, ctx, model, choices[kind].bf16)


def _calibration_batch(base: Baseline):
    """The runner's batch function: per case ``(foreground map values, image score, map sum)``."""
    def fn(cases: list[Case], x: torch.Tensor, metas: list[Any]) -> list[tuple[np.ndarray, float, float]]:
        out = anomaly_batch(base.model, x, base.cfg, base.bf16)
        fg = foreground(x)
        return [(out.anomaly_map[i][fg[i]].cpu().numpy(), float(out.score[i]), float(out.anomaly_map[i].double().sum()))
                for i in range(len(cases))]
    return fn


def _calibrate(base: Baseline, manifest: str | Path | None, progress: bool) -> CalibrationResult:
    run, cfg, fpr = base.ctx.run, base.cfg, base.ctx.cfg.segment.fpr
    val = validation_cases(base.ctx.cfg, manifest)
    failures = BatchFailures()
    values, scores, sums, stats = [], {}, [], []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"calibrate {base.kind}", total=len(val))
        for item, (fg, score, total), _ in each_case(val, base.ctx, cfg.batch_size, _calibration_batch(base), failures,
                                                     lambda n: bar.advance(task, n)):
            values.append(fg)
            scores[item.case.case_id] = score
            sums.append(total)
            stats.append(getattr(item.meta, "stats", None))
    if not scores:
        failures.raise_if_any(f"calibrate --method {base.kind}")
    vals = np.asarray(list(scores.values()), dtype=np.float64)
    calib = {
        "residual_threshold": fpr_threshold(np.concatenate(values), fpr), "fpr": fpr,
        "foreground": f"x > min + {FOREGROUND_FRACTION} (max - min)",
        "score_threshold": float(np.quantile(vals, 1.0 - fpr)), "top_k_fraction": cfg.top_k_fraction,
        "top_k": top_k_count(int(np.prod(base.ctx.cfg.data.grid)), cfg.top_k_fraction), "median_size": cfg.median_size,
        "val_scores": scores, "val_score_mean": float(vals.mean()),
        "val_score_std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "n_val": len(scores),
    }
    path = run.calibration_json_path(base.kind)
    require_finite_calibration(
        base.kind, path, calib, {"residual map": np.asarray(sums), "image score": vals},
        cause=f"the {base.kind} network produces NaN/Inf; retrain it (`ldm-ood train {base.kind} --run {run.root}`)")
    write_calibration_json(path, calib)
    cid = record_calibration(run, base.kind, stats)
    failures.raise_if_any(f"calibrate --method {base.kind}")
    return CalibrationResult(base.kind, path, len(scores), fpr, calib["score_threshold"], id=cid,
                             files={"input_domain": run.input_domain_path(base.kind)},
                             details={k: calib[k] for k in ("residual_threshold", "top_k", "val_score_mean",
                                                            "val_score_std")})


def load_calibration(run: RunDir, kind: str) -> dict[str, Any] | None:
    """``calibration/<kind>.json`` (None when not calibrated); ``NonFiniteCalibrationError`` when it holds NaN/Inf."""
    path = run.calibration_json_path(kind)
    if not path.exists():
        return None
    calib = json.loads(path.read_text())
    require_finite_file(path, calib, f"ldm-ood calibrate --method {kind} --run {run.root}")
    return calib


@dataclass
class AutoencoderScoring:
    """The AE / VAE baseline as a :class:`~ldm_ood.methods.base.Method`: healed image, map, mask, score."""

    base: Baseline
    threshold: float
    fieldnames: Sequence[str] = FIELDS

    @property
    def name(self) -> str:
        return f"segment {self.base.kind}"

    @property
    def label(self) -> str:
        return f"segment --method {self.base.kind}"

    @property
    def batch_size(self) -> int:
        return self.base.cfg.batch_size

    def records_path(self, run: RunDir, set_name: str) -> Path:
        return run.segment_scores_path(self.base.kind, set_name)

    def outputs_dir(self, run: RunDir, set_name: str) -> Path:
        return run.segment_dir(self.base.kind, set_name)

    def score_batch(self, cases: list[Case], x: torch.Tensor, metas: list, out_dir: Path) -> list[dict]:
        out = anomaly_batch(self.base.model, x, self.base.cfg, self.base.bf16)
        pre, thr = self.base.ctx.preprocessor, self.threshold
        return [{"pred_score": float(out.score[i]),
                 **write_segmentation(pre, meta, case, out_dir, out.healed[i, 0], out.anomaly_map[i, 0], thr)}
                for i, (case, meta) in enumerate(zip(cases, metas))]


def _segment(base: Baseline, manifest, sets, input_dir, output_dir, progress: bool, force: bool) -> RunResult:
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    calib = load_calibration(base.ctx.run, base.kind)
    if calib is None:
        on_main(_calibrate, base, manifest, progress)
        calib = load_calibration(base.ctx.run, base.kind)
    calibrated = check_calibration(base.ctx.run, base.kind, force)
    method = AutoencoderScoring(base, float(calib["residual_threshold"]))
    return run_method(method, base.ctx, manifest, sets, input_dir, output_dir, progress, RunResult(), calibrated, force)


@writes_run("calibrate ae")
def calibrate_ae(run_dir: str | Path, manifest: str | Path | None = None, config: Config | None = None, *,
                 model: torch.nn.Module | None = None, preprocessor: Preprocessing | None = None,
                 device: str | torch.device | None = None, progress: bool = True,
                 force: bool = False) -> CalibrationResult:
    """Calibrate the AE (spatial) baseline on the healthy ``val`` split (module docstring). ``force``
    is accepted for the CLI's uniformity (the AE depends on no other network)."""
    return _calibrate(load_baseline("ae", run_dir, config, model, preprocessor, device), manifest, progress)


@writes_run("calibrate vae")
def calibrate_vae(run_dir: str | Path, manifest: str | Path | None = None, config: Config | None = None, *,
                  model: torch.nn.Module | None = None, preprocessor: Preprocessing | None = None,
                  device: str | torch.device | None = None, progress: bool = True,
                 force: bool = False) -> CalibrationResult:
    """Calibrate the VAE (dense) baseline on the healthy ``val`` split (module docstring)."""
    return _calibrate(load_baseline("vae", run_dir, config, model, preprocessor, device), manifest, progress)


@writes_run("segment ae", sharded=True)
def segment_ae(run_dir: str | Path, manifest: str | Path | None = None, sets: Sequence[str] | None = None,
               input_dir: str | Path | None = None, output_dir: str | Path | None = None, *,
               config: Config | None = None, model: torch.nn.Module | None = None,
               preprocessor: Preprocessing | None = None, device: str | torch.device | None = None,
               progress: bool = True, force: bool = False) -> RunResult:
    """Segment with the AE (spatial) baseline: every ``test`` set (or ``sets``) of the manifest, or the
    folder ``input_dir`` into ``output_dir`` (module docstring); ``force``: add to score files made
    under another calibration, use a calibration made before the AE was retrained."""
    base = load_baseline("ae", run_dir, config, model, preprocessor, device)
    return _segment(base, manifest, sets, input_dir, output_dir, progress, force)


@writes_run("segment vae", sharded=True)
def segment_vae(run_dir: str | Path, manifest: str | Path | None = None, sets: Sequence[str] | None = None,
                input_dir: str | Path | None = None, output_dir: str | Path | None = None, *,
                config: Config | None = None, model: torch.nn.Module | None = None,
                preprocessor: Preprocessing | None = None, device: str | torch.device | None = None,
                progress: bool = True, force: bool = False) -> RunResult:
    """Segment with the VAE (dense) baseline, decoding each image's posterior mean (as :func:`segment_ae`)."""
    base = load_baseline("vae", run_dir, config, model, preprocessor, device)
    return _segment(base, manifest, sets, input_dir, output_dir, progress, force)
