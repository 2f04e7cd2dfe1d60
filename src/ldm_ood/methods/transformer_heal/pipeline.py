"""Paper 001 Table 1's transformer baselines, files in and out: ``ldm-ood segment --method transformer``
and ``--method ensemble`` (Pinaya et al. 2021, paper 001's reference 16).

* ``transformer``: the run's ``transformer`` stage (one LTM, ``ldm-ood train transformer``);
* ``ensemble``: the ``ensemble`` stage (one LTM per ``ensemble.orderings``, ``ldm-ood train ensemble``);
  per-position log-likelihoods summed over the members pick the tokens, the member
  ``ensemble.orderings[token_healing.heal_member]`` resamples them, score = sum of the members' NLLs.

The pieces: :mod:`.healing` (resampling), :mod:`.batch` (one batch: tokens → map),
:mod:`.calibration` (thresholds on the healthy validation split). Outputs are those of paper 001's
own method (:mod:`ldm_ood.methods.segment.pipeline`): ``<case>_healed``, ``<case>_map`` and
``<case>_mask`` on the input's grid under ``RunDir.segment_dir(<method>, set)`` and the rows of
``segment_scores_path(<method>, set)`` (same columns); folder mode writes the three images and
``<case>.txt``. A method not yet calibrated is calibrated first on the run's validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ...config import Config
from ...data.manifest import Case
from ...runs import RunDir
from ..base import CalibrationResult, RunResult
from ..calibration_files import check_calibration
from ..context import Preprocessing, writes_run
from ..outputs import write_segmentation
from ..runner import run_method
from ..sharding import on_main
from ..segment.pipeline import FIELDS
from .batch import HealModels, case_seeds, heal_batch, heal_context
from .calibration import calibrate_heal, load_heal_calibration


@dataclass
class TokenHealScoring:
    """One transformer baseline as a :class:`~ldm_ood.methods.base.Method`: healed image, map, mask, score."""

    method: str  # "transformer" | "ensemble"
    models: HealModels
    cfg: Config
    token_threshold: float
    residual_threshold: float
    preprocessor: Preprocessing
    fieldnames: Sequence[str] = FIELDS

    @property
    def name(self) -> str:
        return f"segment {self.method}"

    @property
    def label(self) -> str:
        return f"segment --method {self.method}"

    @property
    def batch_size(self) -> int:
        return self.cfg.token_healing.batch_size

    def records_path(self, run: RunDir, set_name: str) -> Path:
        return run.segment_scores_path(self.method, set_name)

    def outputs_dir(self, run: RunDir, set_name: str) -> Path:
        return run.segment_dir(self.method, set_name)

    def score_batch(self, cases: list[Case], x: torch.Tensor, metas: list, out_dir: Path) -> list[dict]:
        seeds = case_seeds([c.case_id for c in cases], self.cfg.token_healing.seed)
        out = heal_batch(self.models, x, self.token_threshold, self.cfg, seeds)
        return [{"pred_score": float(out.pred_score[i]),
                 **write_segmentation(self.preprocessor, meta, case, out_dir, out.healed[i, 0], out.anomaly_map[i, 0],
                                  self.residual_threshold)}
                for i, (case, meta) in enumerate(zip(cases, metas))]


def _segment(method: str, run_dir, manifest, sets, input_dir, output_dir, config, models, preprocessor, device,
             progress: bool, force: bool) -> RunResult:
    """Segment with ``method``, calibrating it first when it is not calibrated."""
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    ctx, models = heal_context(method, run_dir, config, models, preprocessor, device, force)
    calib = load_heal_calibration(method, ctx, models)
    if calib is None:
        on_main(calibrate_heal, method, ctx.run.root, manifest, ctx.cfg, models=models, preprocessor=ctx.preprocessor,
                       device=ctx.device, progress=progress, force=force)
        calib = load_heal_calibration(method, ctx, models)
    calibrated = check_calibration(ctx.run, method, force)
    scoring = TokenHealScoring(method, models, ctx.cfg, calib["token_threshold"], calib["residual_threshold"],
                               ctx.preprocessor)
    return run_method(scoring, ctx, manifest, sets, input_dir, output_dir, progress, RunResult(), calibrated, force)


@writes_run("calibrate transformer")
def calibrate_transformer(
    run_dir: str | Path, manifest: str | Path | None = None, config: Config | None = None, *,
    models: HealModels | None = None, preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None, progress: bool = True, force: bool = False,
) -> CalibrationResult:
    """Calibrate the "Transformer" baseline (paper 001 Table 1) on the healthy ``val`` split: the
    resampling threshold and the residual threshold at ``segment.fpr`` (:mod:`.calibration`).
    ``models`` / ``preprocessor``: given instead of loaded (tests); ``force``: a transformer trained on
    another first stage is used anyway."""
    return calibrate_heal("transformer", run_dir, manifest, config, models=models, preprocessor=preprocessor,
                          device=device, progress=progress, force=force)


@writes_run("calibrate ensemble")
def calibrate_ensemble(
    run_dir: str | Path, manifest: str | Path | None = None, config: Config | None = None, *,
    models: HealModels | None = None, preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None, progress: bool = True, force: bool = False,
) -> CalibrationResult:
    """Calibrate the "Ensemble" baseline (paper 001 Table 1) on the healthy ``val`` split (:mod:`.calibration`)."""
    return calibrate_heal("ensemble", run_dir, manifest, config, models=models, preprocessor=preprocessor,
                          device=device, progress=progress, force=force)


@writes_run("segment transformer", sharded=True)
def segment_transformer(
    run_dir: str | Path, manifest: str | Path | None = None, sets: Sequence[str] | None = None,
    input_dir: str | Path | None = None, output_dir: str | Path | None = None, *, config: Config | None = None,
    models: HealModels | None = None, preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None, progress: bool = True, force: bool = False,
) -> RunResult:
    """Segment with the "Transformer" baseline: unlikely tokens resampled by the run's transformer,
    healed image, filtered residual map, mask and image score (sum NLL). Manifest mode: every ``test``
    set (or ``sets``); folder mode: ``input_dir`` → ``output_dir``. ``force``: networks trained on another
    first stage, or a calibration made before they were retrained, are used anyway."""
    return _segment("transformer", run_dir, manifest, sets, input_dir, output_dir, config, models, preprocessor,
                    device, progress, force)


@writes_run("segment ensemble", sharded=True)
def segment_ensemble(
    run_dir: str | Path, manifest: str | Path | None = None, sets: Sequence[str] | None = None,
    input_dir: str | Path | None = None, output_dir: str | Path | None = None, *, config: Config | None = None,
    models: HealModels | None = None, preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None, progress: bool = True, force: bool = False,
) -> RunResult:
    """Segment with the "Ensemble" baseline: tokens whose log-likelihood summed over the members is
    below the threshold resampled by the healing member; score = sum of the members' NLLs. Modes as
    :func:`segment_transformer`."""
    return _segment("ensemble", run_dir, manifest, sets, input_dir, output_dir, config, models, preprocessor,
                    device, progress, force)

