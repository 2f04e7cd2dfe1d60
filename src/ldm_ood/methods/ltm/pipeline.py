"""Files in, files out for the LTM baseline: ``calibrate --method ltm`` and ``score --method ltm``.

Same interface as the LDM pipeline (paper 000 §2.3/§3.2):

* ``calibrate_ltm`` scores the manifest's ``val`` split and writes :class:`LTMCalibration` JSON to
  ``RunDir.ltm_calibration_path``.
* ``score_ltm`` (manifest mode) writes ``scores/ltm/<set>.csv`` row by row
  (``case_id,set,pred_score,percentile,flag,map_path,model_score,qc_reason,calibration_id,seconds,nll``; ``pred_score`` = sum NLL,
  or ``|NLL − mean| / std`` over validation with ``score.tails: two_sided``; ``nll`` = mean NLL per token) and maps to ``maps/ltm/<set>/<case>.nii.gz``; finished cases are
  skipped on a rerun. Folder mode (MOOD challenge layout, ``input_dir`` → ``output_dir``) writes
  ``<case>.txt`` (the score, one number, as the LDM's folder mode: :func:`..context.write_folder_score`)
  and ``<case>.nii.gz``; a case whose ``.txt`` exists is skipped. Without a calibration,
  ``percentile`` / ``flag`` stay empty. A failing case is reported at the end (``BatchError``) after
  all others are written.

Networks and preprocessing are loaded from the run (``models.loading``, ``data.transforms``) unless
passed in (``networks=``, ``preprocessor=``), which is how the tests run tiny nets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from ...config import Config, ConfigError
from ...data.manifest import Case
from ...errors import BatchFailures
from ...runs import RunDir
from .. import inference_precision
from ..base import RUNNER_COLUMNS, Calibrated, CalibrationResult, DetectionFiles, PreparedScoring, RunResult
from ..calibration_files import (
    check_calibration,
    readable,
    record_calibration,
    require_finite_calibration,
    require_finite_file,
    write_calibration_json,
)
from ..context import Context, Preprocessing, load_context, progress_bar, validation_cases, writes_run
from ..inference_precision import transformer_probe
from ..outputs import write_on_input_grid
from ..runner import each_case, run_method
from .likelihood import LTMCalibration, LTMNetworks, LTMScore, check_ensemble, score_image, upsample_map

FIELDS = ("case_id", "set", "pred_score", "percentile", "flag", "map_path", *RUNNER_COLUMNS, "seconds", "nll")


@dataclass
class LTMScoreResult(RunResult):
    """What ``score_ltm`` wrote: score files (or the output folder), counts, failures."""


def load_ltm_networks(run: RunDir, cfg: Config, device: torch.device, force: bool = False) -> LTMNetworks:
    """First stage + the run's Transformer; raises ``ConfigError`` if an ensemble is configured
    (``force``: a transformer trained on another first stage is used anyway)."""
    from ...models.loading import load_first_stage, load_transformer

    first_stage = load_first_stage(run, device)
    transformer, ordering, _ = load_transformer(run, device, force)
    networks = LTMNetworks(first_stage, [transformer], [ordering], bos=cfg.first_stage.num_embeddings)
    check_ensemble(cfg, networks)
    return networks


def _setup(run_dir, config, networks, preprocessor, device, force=False):
    ctx = load_context(run_dir, config, preprocessor, device)
    if networks is None:
        networks = load_ltm_networks(ctx.run, ctx.cfg, ctx.device, force)
    else:
        check_ensemble(ctx.cfg, networks)
    return ctx.run, ctx.cfg, networks, ctx.preprocessor, ctx.device


def ltm_bf16(cfg: Config, networks: LTMNetworks, device: torch.device, run: RunDir | None = None) -> bool:
    """``score.precision`` of the LTM, resolved on its (first) transformer (:mod:`.inference_precision`);
    the first-stage encoder, run once per scan, follows it (its codebook search is always fp32)."""
    model = networks.transformers[0]
    seq_len = math.prod(networks.orderings[0].spatial_shape)
    choices = inference_precision.resolve(cfg.score.precision, {
        "transformer": (model, lambda: transformer_probe(model, seq_len, networks.bos, device)),
    }, device, "ltm scoring")
    inference_precision.report(choices, run)
    return choices["transformer"].bf16


def _score_fn(networks: LTMNetworks, bf16: bool):
    """The runner's batch function: each scan's LTM score (sum NLL and per-token map)."""
    def fn(cases: list[Case], x: torch.Tensor, metas: list[Any]) -> list[LTMScore]:
        return score_image(networks, x, bf16)
    return fn


@writes_run("calibrate ltm")
def calibrate_ltm(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    config: Config | None = None,
    *,
    networks: LTMNetworks | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
) -> CalibrationResult:
    """Score the ``val`` split, fit :class:`LTMCalibration` at ``score.fpr`` and save it with its input
    domain and record; ``force``: calibrate with a transformer trained on another first stage."""
    run, cfg, networks, preprocessor, device = _setup(run_dir, config, networks, preprocessor, device, force)
    val = validation_cases(cfg, manifest)
    bf16 = ltm_bf16(cfg, networks, device, run)
    failures = BatchFailures()
    values, ids, stats = [], [], []
    ctx = Context(run, cfg, device, preprocessor)
    with progress_bar(progress) as bar:
        task = bar.add_task("calibrate ltm", total=len(val))
        for item, score, _ in each_case(val, ctx, 1, _score_fn(networks, bf16), failures, lambda n: bar.advance(task, n)):
            values.append(score.nll)
            ids.append(item.case.case_id)
            stats.append(getattr(item.meta, "stats", None))
    if not values:
        failures.raise_if_any("calibrate --method ltm")
    calib = LTMCalibration.fit(values, ids, cfg.score.fpr, networks.kinds, cfg.score.tails)
    require_finite_calibration(
        "ltm", run.ltm_calibration_path, asdict(calib), {"NLL": np.asarray(values, dtype=np.float64)},
        cause=f"the transformer or the first stage produces NaN/Inf; retrain it (`ldm-ood train transformer --run {run.root}`, "
        "or first-stage if that one is broken)",
    )
    write_calibration_json(run.ltm_calibration_path, asdict(calib))
    cid = record_calibration(run, "ltm", stats)
    failures.raise_if_any("calibrate --method ltm")
    return CalibrationResult("ltm", run.ltm_calibration_path, len(values), calib.fpr, calib.threshold, id=cid,
                             files={"input_domain": run.input_domain_path("ltm")},
                             details={"mean": calib.mean, "std": calib.std})


def load_ltm_calibration(run: RunDir) -> LTMCalibration | None:
    """The run's LTM calibration (None when not calibrated); ``NonFiniteCalibrationError`` when the
    file holds NaN/Inf (written by an older version)."""
    if not run.ltm_calibration_path.exists():
        return None
    with readable(run.ltm_calibration_path, "ltm", run.root):
        calib = LTMCalibration.load(run.ltm_calibration_path)
    require_finite_file(run.ltm_calibration_path, asdict(calib), f"ldm-ood calibrate --method ltm --run {run.root}")
    return calib


def _row(score: LTMScore, calib: LTMCalibration | None, map_path: Path) -> dict[str, Any]:
    """A CSV row's method columns (the runner adds case_id, set and seconds): ``pred_score`` is the
    calibration's image score of the NLL (the NLL itself without a calibration)."""
    image = calib.image_score(score.nll) if calib else score.nll
    return {
        "pred_score": image,
        "percentile": calib.percentile(image) if calib else "",
        "flag": int(calib.flag(image)) if calib else "",
        "map_path": str(map_path),
        "nll": score.nll_per_token,
    }


@writes_run("score ltm", sharded=True)
def score_ltm(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    sets: Sequence[str] | None = None,
    input_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    *,
    config: Config | None = None,
    networks: LTMNetworks | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    map_interpolation: str = "nearest",
    progress: bool = True,
    force: bool = False,
) -> LTMScoreResult:
    """Score scans with the LTM (sum NLL), write records and NIfTI maps on each input's grid
    (``force``: as for :func:`~ldm_ood.methods.ldm.pipeline.score_ldm`)."""
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    prepared = prepare_ltm(run_dir, config, networks=networks, preprocessor=preprocessor, device=device,
                           map_interpolation=map_interpolation, force=force)
    return run_method(prepared.method, prepared.context, manifest, sets, input_dir, output_dir, progress,
                      LTMScoreResult(), prepared.calibrated, force)


def prepare_ltm(
    run_dir: str | Path,
    config: Config | None = None,
    *,
    networks: LTMNetworks | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    map_interpolation: str = "nearest",
    force: bool = False,
    record_precision: bool = True,
) -> PreparedScoring:
    """Everything :func:`score_ltm` loads before it scores, checked: the networks, the calibration
    when there is one (its orderings against the networks') and the :class:`LTMScoring` method.
    ``record_precision``: write the precision choice into the run's ``precision.json``."""
    run, cfg, networks, preprocessor, device = _setup(run_dir, config, networks, preprocessor, device, force)
    calib = load_ltm_calibration(run)
    calibrated = check_calibration(run, "ltm", force) if calib is not None else Calibrated(method="ltm")
    if calib is not None and calib.orderings != networks.kinds:
        raise ConfigError(
            f"{run.ltm_calibration_path}: calibrated with orderings {calib.orderings}, scoring with "
            f"{networks.kinds}; rerun calibrate --method ltm"
        )
    if calib is not None and calib.tails is not None and calib.tails != cfg.score.tails:
        raise ConfigError(f"{run.ltm_calibration_path}: calibrated with score tails {calib.tails!r}, the configuration "
                          f"has {cfg.score.tails!r}; rerun calibrate --method ltm")
    method = LTMScoring(networks, ltm_bf16(cfg, networks, device, run if record_precision else None), calib,
                        preprocessor, cfg.data.grid, map_interpolation)
    return PreparedScoring(Context(run, cfg, device, preprocessor), method, calibrated,
                           calib.fpr if calib else None, calib.threshold if calib else None,
                           len(calib.case_ids) if calib else 0)


@dataclass
class LTMScoring(DetectionFiles):
    """The LTM baseline as a :class:`~ldm_ood.methods.base.Method`: rows of ``scores/ltm/<set>.csv`` and token-NLL maps."""

    networks: LTMNetworks
    bf16: bool
    calib: LTMCalibration | None
    preprocessor: Preprocessing
    grid: Sequence[int]
    map_interpolation: str = "nearest"
    key: ClassVar[str] = "ltm"
    name: str = "score ltm"
    label: str = "score --method ltm"
    batch_size: int = 1
    fieldnames: Sequence[str] = FIELDS

    def score_batch(self, cases: list[Case], x: torch.Tensor, metas: list[Any], out_dir: Path) -> list[dict[str, Any]]:
        rows = []
        for case, score, meta in zip(cases, _score_fn(self.networks, self.bf16)(cases, x, metas), metas):
            on_grid = upsample_map(score.token_nll, self.grid, self.map_interpolation)
            path = write_on_input_grid(self.preprocessor, on_grid, meta, out_dir / f"{case.case_id}.nii.gz")
            rows.append(_row(score, self.calib, path))
        return rows
