"""Files in, files out for paper 000 scoring: ``calibrate --method ldm`` and ``score --method ldm``.

* :func:`calibrate_ldm` reconstructs the manifest's ``val`` split, fits the per-t metric statistics,
  the validation score distribution and operating threshold (``RunDir.ood_calibration_path``) and
  the per-voxel MAE-map statistics (``RunDir.ood_voxel_stats_path``) — see :mod:`.calibration`.
* :func:`score_ldm` (manifest mode) writes ``scores/ldm/<set>.csv`` one row per scan as scans
  finish (``case_id,set,pred_score,score_mse,score_lpips,signed_score,percentile,flag,map_path,seconds`` then
  ``mse@<t>`` …, ``lpips@<t>`` …) and the §2.3 anomaly maps to ``maps/ldm/<set>/<case>.nii.gz`` on
  the input's native grid and affine. Scans already in the CSV are skipped (resume). Folder mode
  (MOOD challenge layout, ``input_dir`` → ``output_dir``) writes ``<case>.txt`` (the score) and
  ``<case>.nii.gz`` (the map) per input file; a case whose ``.txt`` exists is skipped.

``score.batch_size`` scans share one batched reconstruction. Each scan's noise is seeded from
``score.seed`` and its ``case_id``, so its score does not depend on its batch or on resuming. A scan
that fails (unreadable, wrong dimensionality …) is reported at the end (``BatchError``) after all
the others were written.

Networks, LPIPS and preprocessing are loaded from the run unless passed in (``models=``,
``similarity=``, ``preprocessor=``), which is how the tests run tiny random nets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch

from ...config import Config, DiffusionConfig, ScoreConfig
from ...data.manifest import Case
from ...engines import scoring as engine_scoring
from ...engines.select import EngineChoice
from ...errors import BatchFailures
from ...models.diffusion import CallCounter, build_inference_scheduler
from ...precision import set_layout
from ...precision_policy import PrecisionChoice
from ...runs import RunDir
from ...samplers.noise import case_seed
from .. import inference_precision, sharding
from ..base import RUNNER_COLUMNS, CalibrationResult, DetectionFiles, PreparedScoring, RunResult
from ..calibration_files import (
    check_calibration,
    readable,
    record_calibration,
    require_finite_calibration,
    require_finite_file,
    write_calibration_json,
)
from ..context import Context, Preprocessing, load_context, progress_bar, validation_cases, writes_run
from ..inference_precision import first_stage_probe, lpips_probe, unet_probe
from ..runner import each_case, run_method
from .calibration import OODCalibration, fit_calibration
from .maps import VoxelAccumulator, VoxelStats, anomaly_map, write_anomaly_map
from .reconstruct import chain_starts, default_t_values, inference_grid, reconstruct, snap_to_grid
from .similarity import ScanMetrics, SimilarityFn, lpips_similarity, measure, similarity_functions

BASE_FIELDS = ("case_id", "set", "pred_score", "score_mse", "score_lpips", "signed_score", "percentile", "flag", "map_path",
               *RUNNER_COLUMNS, "seconds")


def fieldnames(metrics: Sequence[str], t_values: Sequence[int]) -> list[str]:
    """Columns of ``scores/ldm/<set>.csv``: the contract's base columns, then ``<metric>@<t>``."""
    return [*BASE_FIELDS, *(f"{m}@{t}" for m in metrics for t in t_values)]


# ----------------------------------------------------------------------------- models and scorer


@dataclass
class ScoringModels:
    """The trained networks scoring needs (loaded from the run, or built by tests)."""

    first_stage: torch.nn.Module
    unet: torch.nn.Module
    scale_factor: float
    latent_multiple: int
    ldm_config: DiffusionConfig
    spatial_dims: int
    lpips_model: torch.nn.Module | None = None


def load_scoring_models(run: RunDir, cfg: Config, device: torch.device, force: bool = False) -> ScoringModels:
    """First stage + latent DDPM of the run, and LPIPS when ``score.metrics`` has it (``force``: an
    LDM trained on another first stage is used anyway, ``models.loading.check_upstream``)."""
    from ...models.loading import load_first_stage, load_ldm

    ldm = load_ldm(run, device, force)
    lp = None
    if "lpips" in cfg.score.metrics:
        from ...models.perceptual import load_lpips

        lp = load_lpips(device)
    return ScoringModels(load_first_stage(run, device), ldm.unet, ldm.scale_factor, ldm.latent_multiple,
                         ldm.config, cfg.data.spatial_dims, lp)


class OODScorer:
    """Raw per-scan metrics of batches of preprocessed scans (paper 000 §2.2–2.3).

    ``t_values`` (score) and ``map_t_values`` are grid starts (see ``reconstruct.snap_to_grid``);
    the chains run are their union, each once. Precision: ``score.precision`` resolved per network
    (first stage, UNet, LPIPS) by :mod:`.inference_precision` on the run's ``grid`` (or on the
    first batch when no grid is given); ``bf16=True/False`` forces all three (LPIPS's first conv
    and heads stay fp32 under bf16; see :mod:`.similarity`). Engines: ``score.engine`` resolved per
    network (encoder, decoder, UNet, LPIPS trunk) by :mod:`ldm_ood.engines.scoring` once the grid is
    known, exported files kept in ``artifact_dir`` (the run's ``engines/``); ``self.net`` holds the
    networks as scoring calls them (the originals under ``eager``). ``decode_batch`` chains
    are decoded at a time; ``measure_batch`` of a scan's reconstructions share one LPIPS pass of
    the input (``similarity.measure``).
    """

    def __init__(
        self,
        models: ScoringModels,
        cfg: ScoreConfig,
        similarity: Mapping[str, SimilarityFn] | None = None,
        sequential: bool = False,
        bf16: bool | None = None,
        unet_batch: int | None = None,
        decode_batch: int = 4,
        measure_batch: int = 16,
        grid: Sequence[int] | None = None,
        artifact_dir: Path | None = None,
    ):
        self.models, self.cfg = models, cfg
        self.net, self.artifact_dir = models, artifact_dir
        self.engine_choices: dict[str, EngineChoice] = {}
        self._engines_ready = False
        image_grid = tuple(grid) if grid is not None else None
        self.execution = "reference" if (sequential or cfg.sequential) else "batched"
        self.unet_batch, self.decode_batch, self.measure_batch = unet_batch, decode_batch, measure_batch
        self.scheduler = build_inference_scheduler(models.ldm_config, cfg.sampler, cfg.num_inference_steps)
        grid = inference_grid(self.scheduler)
        requested = cfg.t_values or default_t_values(cfg.num_t_values, models.ldm_config.num_train_timesteps)
        self.t_values = tuple(sorted(set(snap_to_grid(requested, grid))))
        self.map_t_values = tuple(dict.fromkeys(snap_to_grid(cfg.map_t_values, grid)))
        self.starts = chain_starts(self.t_values, self.map_t_values, grid=grid)
        models.first_stage.eval()
        models.unet.eval()
        self._given_similarity = similarity
        self.metrics = list(similarity) if similarity is not None else list(cfg.metrics)
        self.precision: dict[str, PrecisionChoice] = {}
        if bf16 is not None:
            requested = "bf16" if bf16 else "fp32"
            self._set_precision({k: PrecisionChoice(k, requested, bf16, "set by the caller")
                                 for k in ("first_stage", "unet", "lpips")})
        elif image_grid is not None:
            self._set_precision(self._measure_precision(image_grid))
        if image_grid is not None:
            self._select_engines(image_grid)
        self.calls = CallCounter()

    def _measure_precision(self, grid: tuple[int, ...]) -> dict[str, PrecisionChoice]:
        m = self.models
        dev = next(m.unet.parameters()).device
        nets = {
            "first_stage": (m.first_stage, lambda: first_stage_probe(m.first_stage, grid, self.decode_batch, dev)),
            "unet": (m.unet, lambda: unet_probe(m.unet, m.first_stage, grid, m.latent_multiple, len(self.starts),
                                                    max(self.starts), dev)),
        }
        if self._given_similarity is None and "lpips" in self.metrics and m.lpips_model is not None:
            nets["lpips"] = (m.lpips_model, lambda: lpips_probe(
                lambda b: lpips_similarity(m.lpips_model, m.spatial_dims, bf16=b), grid, 4, dev))
        return inference_precision.resolve(self.cfg.precision, nets, dev, "ldm scoring")

    def _set_precision(self, choices: dict[str, PrecisionChoice]) -> None:
        self.precision = choices
        sd, m = self.models.spatial_dims, self.models
        set_layout(m.first_stage, sd, self.bf16_of("first_stage"))
        set_layout(m.unet, sd, self.bf16_of("unet"))
        self.similarity = dict(self._given_similarity) if self._given_similarity is not None else similarity_functions(
            self.cfg.metrics, sd, m.lpips_model, self.bf16_of("lpips"))

    def _select_engines(self, grid: tuple[int, ...]) -> None:
        """``score.engine`` for each network at the batch sizes scoring calls it with (:mod:`ldm_ood.engines`)."""
        self._engines_ready = True
        if self.cfg.engine == "eager":
            return
        m = self.models
        lp = m.lpips_model if self._given_similarity is None and "lpips" in self.metrics else None
        chains = len(self.starts) * self.cfg.batch_size
        batches = {"encoder": self.cfg.batch_size, "decoder": self.decode_batch,
                   "unet": min(chains, self.unet_batch or chains), "lpips": min(64, grid[0]) if len(grid) == 3 else 16}
        res = engine_scoring.scoring_engines(
            self.cfg.engine, m.first_stage, m.unet, lp, grid, m.latent_multiple,
            {k: self.bf16_of(k) for k in ("first_stage", "unet", "lpips")}, batches, max(*self.starts, 1),
            self.artifact_dir)
        self.engine_choices = res.choices
        self.net = replace(m, first_stage=res.first_stage, unet=res.unet, lpips_model=res.lpips_model or m.lpips_model)
        if lp is not None:
            self.similarity = similarity_functions(self.cfg.metrics, m.spatial_dims, self.net.lpips_model,
                                                   self.bf16_of("lpips"))

    def bf16_of(self, network: str) -> bool:
        """Whether ``network`` (first_stage | unet | lpips) runs under bf16 autocast."""
        c = self.precision.get(network)
        return bool(c and c.bf16)

    @property
    def settings(self) -> dict[str, Any]:
        c = self.cfg
        out = {"sampler": c.sampler, "num_inference_steps": c.num_inference_steps, "requantize": c.requantize,
               "metrics": self.metrics, "seed": c.seed, "precision": inference_precision.dtypes(self.precision),
               "execution": self.execution, "tails": c.tails}
        if c.map_error != "absolute":  # the paper's map adds no key: calibrations made before it stay valid
            out["map_error"] = c.map_error
        return out

    @torch.no_grad()
    def measure(self, x: torch.Tensor, seeds: Sequence[int]) -> ScanMetrics:
        """``x (B, 1, *grid)`` in [0, 1] → raw metric values ``(B, n_t)`` and MAE maps ``(B, n_map, *grid)``."""
        if not self.precision:
            self._set_precision(self._measure_precision(tuple(x.shape[2:])))
        if not self._engines_ready:
            self._select_engines(tuple(x.shape[2:]))
        m = self.net
        rec = reconstruct(m.first_stage, m.unet, self.scheduler, x, self.starts, seeds, m.scale_factor,
                          m.latent_multiple, self.execution, self.bf16_of("unet"), self.unet_batch,
                          encode_bf16=self.bf16_of("first_stage"), sampler=self.cfg.sampler)
        self.calls.calls += rec.calls.calls
        self.calls.evals += rec.calls.evals
        return measure(m.first_stage, rec, x, self.similarity, self.t_values, self.map_t_values,
                       requantize=self.cfg.requantize, bf16=self.bf16_of("first_stage"), decode_batch=self.decode_batch,
                       measure_batch=self.measure_batch, map_error=self.cfg.map_error)


def _measure_fn(scorer: OODScorer) -> Callable[[list[Case], torch.Tensor, list[Any]], list[ScanMetrics]]:
    """The runner's batch function: each scan's raw metrics, noise seeded by its case id."""
    def fn(cases: list[Case], x: torch.Tensor, metas: list[Any]) -> list[ScanMetrics]:
        met = scorer.measure(x, [case_seed(scorer.cfg.seed, c.case_id) for c in cases])
        return [met.select(b) for b in range(len(cases))]
    return fn


# ----------------------------------------------------------------------------- public API


@dataclass
class ScoreResult(RunResult):
    """What ``score_ldm`` wrote: score files (or the output folder), counts, UNet usage."""

    unet_calls: int = 0


def _setup(run_dir, config, models, similarity, preprocessor, device, sequential, force=False, record=True):
    """``record``: the precision choices go to the run's ``precision.json`` too (not for a read-only model)."""
    ctx = load_context(run_dir, config, preprocessor, device)
    if models is None:
        models = load_scoring_models(ctx.run, ctx.cfg, ctx.device, force)
    artifacts = None if ctx.run.is_bundle or not ctx.run.root.is_dir() else ctx.run.engines_dir
    scorer = OODScorer(models, ctx.cfg.score, similarity=similarity, sequential=sequential, grid=ctx.cfg.data.grid,
                       artifact_dir=artifacts)
    inference_precision.report(scorer.precision, ctx.run if record else None)
    if sharding.world().is_main:
        engine_scoring.report(scorer.engine_choices, artifacts if record else None)
    return ctx.run, ctx.cfg, scorer, ctx.preprocessor, ctx.device


@writes_run("calibrate ldm")
def calibrate_ldm(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    config: Config | None = None,
    *,
    models: ScoringModels | None = None,
    similarity: Mapping[str, SimilarityFn] | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    sequential: bool = False,
    progress: bool = True,
    force: bool = False,
) -> CalibrationResult:
    """Reconstruct the ``val`` split and save the OOD calibration (paper 000 §2.2–2.3), its input
    domain and record (``calibration_files.record_calibration``); ``force``: calibrate with an LDM
    trained on another first stage."""
    run, cfg, scorer, preprocessor, device = _setup(run_dir, config, models, similarity, preprocessor, device,
                                                    sequential, force)
    val = validation_cases(cfg, manifest)
    failures = BatchFailures()
    ids: list[str] = []
    values: dict[str, list[np.ndarray]] = {m: [] for m in scorer.metrics}
    mae_sums: list[np.ndarray] = []  # per scan and map t: non-finite iff its MAE map has a NaN/Inf voxel
    voxels = VoxelAccumulator()
    stats: list[Any] = []  # InputStats of each validation scan: the input domain
    ctx = Context(run, cfg, device, preprocessor)
    with progress_bar(progress) as bar:
        task = bar.add_task("calibrate ldm", total=len(val))
        for item, met, _ in each_case(val, ctx, cfg.score.batch_size, _measure_fn(scorer), failures,
                                      lambda n: bar.advance(task, n)):
            ids.append(item.case.case_id)
            stats.append(getattr(item.meta, "stats", None))
            for m in scorer.metrics:
                values[m].append(met.values[m][0].numpy())
            mae_sums.append(met.mae_maps[0].flatten(1).double().sum(-1).numpy())
            voxels.add(met.mae_maps)
    if not ids:
        failures.raise_if_any("calibrate --method ldm")
    stacked = {m: np.stack(v) for m, v in values.items()}
    cal = fit_calibration(ids, stacked, scorer.t_values, scorer.map_t_values, cfg.score.fpr, scorer.settings)
    voxel = voxels.finish(scorer.map_t_values)
    at_t = [f"t={t}" for t in scorer.t_values]
    require_finite_calibration(
        "ldm", run.ood_calibration_path, {**asdict(cal), "voxel_mean": voxel.mean, "voxel_std": voxel.std},
        {**stacked, "MAE map": np.stack(mae_sums)},
        columns={**{m: at_t for m in stacked}, "MAE map": [f"t={t}" for t in scorer.map_t_values]},
        cause=f"the LDM or the first stage produces NaN/Inf; retrain it (`ldm-ood train ldm --run {run.root}`, "
        "or first-stage if that one is broken)",
    )
    run.ensure(run.calibration_dir)
    write_calibration_json(run.ood_calibration_path, asdict(cal))
    voxel.save(run.ood_voxel_stats_path)
    cid = record_calibration(run, "ldm", stats)
    failures.raise_if_any("calibrate --method ldm")
    return CalibrationResult("ldm", run.ood_calibration_path, len(ids), cal.fpr, cal.threshold, id=cid,
                             files={"voxel_stats": run.ood_voxel_stats_path,
                                    "input_domain": run.input_domain_path("ldm")},
                             details={"t_values": cal.t_values, "map_t_values": cal.map_t_values})


def load_ldm_calibration(run: RunDir) -> tuple[OODCalibration, VoxelStats]:
    """The run's OOD calibration and voxel statistics; ``FileNotFoundError`` when missing,
    ``NonFiniteCalibrationError`` when a file holds NaN/Inf (written by an older version)."""
    with readable(run.ood_calibration_path, "ldm", run.root):
        cal = OODCalibration.load(run.ood_calibration_path)
    if not run.ood_voxel_stats_path.exists():
        raise FileNotFoundError(f"{run.ood_voxel_stats_path}: no voxel statistics; run `ldm-ood calibrate --method ldm`")
    with readable(run.ood_voxel_stats_path, "ldm", run.root):
        voxel = VoxelStats.load(run.ood_voxel_stats_path)
    command = f"ldm-ood calibrate --method ldm --run {run.root}"
    require_finite_file(run.ood_calibration_path, asdict(cal), command)
    require_finite_file(run.ood_voxel_stats_path, {"mean": voxel.mean, "std": voxel.std}, command)
    return cal, voxel


def score_rows(cal: OODCalibration, voxel: VoxelStats, met: ScanMetrics) -> tuple[dict[str, Any], torch.Tensor]:
    """One scan's CSV row values (without case/paths/seconds) and its §2.3 anomaly map ``(*grid)``."""
    values = {m: met.values[m].numpy() for m in cal.metrics}
    s = cal.score(values)
    row: dict[str, Any] = {
        "pred_score": float(s["pred_score"][0]),
        "score_mse": float(s["score_mse"][0]) if "score_mse" in s else "",
        "score_lpips": float(s["score_lpips"][0]) if "score_lpips" in s else "",
        "signed_score": float(s["signed_score"][0]),
        "percentile": float(s["percentile"][0]),
        "flag": int(bool(s["flag"][0])),
    }
    for m in cal.metrics:
        for k, t in enumerate(cal.t_values):
            row[f"{m}@{t}"] = float(values[m][0, k])
    amap = anomaly_map(met.mae_maps, voxel.mean, voxel.std)[0] if met.mae_maps.shape[1] else torch.zeros(met.mae_maps.shape[2:])
    return row, amap


@writes_run("score ldm", sharded=True)
def score_ldm(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    sets: Sequence[str] | None = None,
    input_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    sequential: bool = False,
    *,
    config: Config | None = None,
    models: ScoringModels | None = None,
    similarity: Mapping[str, SimilarityFn] | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
) -> ScoreResult:
    """Score scans (paper 000 §2.2–2.3): records + anomaly maps on each input's native grid.

    ``sequential=True`` runs the reference implementation's one-chain-at-a-time loop with its shared
    PLMS scheduler (see ``reconstruct``), for comparison; the default batches all chains. A changed
    model or calibration file is refused; ``force`` uses a stale LDM or calibration (trained or
    calibrated before a network it depends on was retrained) and adds to score files of another
    calibration.
    """
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    prepared = prepare_ldm(run_dir, config, models=models, similarity=similarity, preprocessor=preprocessor,
                           device=device, sequential=sequential, force=force)
    result = ScoreResult()
    try:
        run_method(prepared.method, prepared.context, manifest, sets, input_dir, output_dir, progress, result,
                   prepared.calibrated, force)
    finally:
        result.unet_calls = prepared.method.scorer.calls.calls
    return result


def prepare_ldm(
    run_dir: str | Path,
    config: Config | None = None,
    *,
    models: ScoringModels | None = None,
    similarity: Mapping[str, SimilarityFn] | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    sequential: bool = False,
    force: bool = False,
    record_precision: bool = True,
) -> PreparedScoring:
    """Everything :func:`score_ldm` loads before it scores, checked: the networks, the calibration
    (its files' hashes first, so a torn file is named by its hash; then its settings against the
    scorer's) and the :class:`LDMScoring` method. ``record_precision``: write the precision choices
    into the run's ``precision.json`` (False for a model folder that is only read)."""
    run, cfg, scorer, preprocessor, device = _setup(run_dir, config, models, similarity, preprocessor, device,
                                                    sequential, force, record_precision)
    calibrated = check_calibration(run, "ldm", force)
    cal, voxel = load_ldm_calibration(run)
    cal.check_compatible(scorer.t_values, scorer.map_t_values, scorer.settings)
    return PreparedScoring(Context(run, cfg, device, preprocessor), LDMScoring(scorer, cal, voxel, preprocessor),
                           calibrated, cal.fpr, cal.threshold, len(cal.case_ids))


@dataclass
class LDMScoring(DetectionFiles):
    """Paper 000 scoring as a :class:`~ldm_ood.methods.base.Method`: rows of ``scores/ldm/<set>.csv`` and §2.3 maps."""

    scorer: OODScorer
    cal: OODCalibration
    voxel: VoxelStats
    preprocessor: Preprocessing
    key: ClassVar[str] = "ldm"
    name: str = "score ldm"
    label: str = "score --method ldm"

    @property
    def batch_size(self) -> int:
        return self.scorer.cfg.batch_size

    @property
    def fieldnames(self) -> list[str]:
        return fieldnames(self.cal.metrics, self.cal.t_values)

    def score_batch(self, cases: list[Case], x: torch.Tensor, metas: list[Any], out_dir: Path) -> list[dict[str, Any]]:
        rows = []
        for case, met, meta in zip(cases, _measure_fn(self.scorer)(cases, x, metas), metas):
            values, amap = score_rows(self.cal, self.voxel, met)
            path = write_anomaly_map(self.preprocessor, amap, meta, out_dir / f"{case.case_id}.nii.gz")
            rows.append({**values, "map_path": str(path)})
        return rows
