"""``train(run_dir, stage, ...)``: the library entry point behind ``ldm-ood train <stage>``.

* configuration: ``config_path`` / ``preset`` for a new run (saved as ``<run>/config.yaml``), else
  the run's saved config with exactly the fields ``config_path`` names changed (saved back; a warning
  names each finished stage / calibration made with an old value); the preset of a run that has
  trained something cannot change, while a run that has trained nothing yet (a first attempt that
  failed, e.g. on its manifest) takes a new preset and configuration anew;
* data: ``manifest`` argument, else ``config.data.manifest``; train = rows with ``split == "train"``,
  validation = ``split == "val"`` and ``set == "id"``; the manifest is remembered in the run's config
  only once it was read;
* ``stage``: ``first_stage`` (also ``first-stage``), ``ldm``, ``transformer`` or ``ensemble``; the others
  need a trained first stage in the run;
* ``resume=True`` continues after the last completed epoch (see :mod:`ldm_ood.training.loop`);
  without it a finished stage is retrained in ``<stage>.staging/`` and replaces the old model only
  when it finishes (:mod:`ldm_ood.training.staging`);
* launched by ``torchrun``, every process calls this and trains with DDP (rank 0 writes files).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from ..artifacts.lock import run_lock
from ..config import Config, ConfigError, changed_fields, load_config, override_config
from ..config.stages import STAGES as TRAINED
from ..config.stages import stage_info
from ..data.manifest import Case, read_manifest, select
from ..errors import InputError, PresetChangeError
from ..runs import RunDir
from . import distributed
from .loop import FitResult, console


@dataclass
class TrainResult:
    """What a training command produced."""

    stage: str
    run: Path
    model_path: Path
    epochs: int
    best_val_loss: float
    best_epoch: int
    reason: str  # "early_stopping" | "max_epochs" | "already_done"
    seconds: float
    world_size: int = 1


def resolve_config(
    run: RunDir, config_path: str | Path | None, preset: str | None, stage: str | None = None, resume: bool = False
) -> tuple[Config, list[str]]:
    """``(config, warnings)``: the run's configuration and one line per stale artifact to print.

    New run: ``preset`` < YAML ``config_path`` (saved as ``<run>/config.yaml``). Existing run: its saved
    configuration with exactly the fields the YAML names replaced, saved back when that changes
    anything; ``preset`` must be the run's own (:func:`~ldm_ood.config.override_config`), unless the run
    has trained nothing yet (:func:`trained_anything`): then a new preset builds the configuration anew,
    replacing the ``config.yaml`` a failed first attempt left. The warnings name every finished stage
    or calibration made with the old value of a changed field, except ``stage``, about to be
    retrained — unless ``resume`` of a finished stage, which does not retrain it.
    """
    if not run.config_path.exists():
        given = load_config(config_path, preset) if (config_path is not None or preset is not None) else None
        try:
            return run.config_or(given), []
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from None
    saved = run.load_config()
    try:
        config = override_config(saved, config_path, preset)
    except PresetChangeError:
        if trained_anything(run):
            raise
        config = load_config(config_path, preset)
        run.save_config(config)
        replaced = (f"{run.config_path}: replaced (preset {saved.preset!r} -> {config.preset!r}); "
                    "the run had trained nothing with it")
        return config, [replaced]
    if not changed_fields(saved, config):
        return saved, []
    stale = run.stale_artifacts(saved, config)
    run.save_config(config)
    return config, _stale_warnings(run, stale, stage, resume)


def trained_anything(run: RunDir) -> bool:
    """Whether any stage of ``run`` (or its staged retraining) holds a model, a resume state or DONE, or a
    calibration exists: then its configuration is what they were made with and its preset is fixed."""
    if run.finished_artifacts():
        return True
    views = (run, run.staged())
    return any(p.exists() for r in views for s in TRAINED for p in (r.model_path(s), r.state_path(s), r.done_path(s)))


def _stale_warnings(run: RunDir, stale: dict[str, list[str]], stage: str | None, resume: bool) -> list[str]:
    """One line per ``{artifact: changed fields}`` of :meth:`RunDir.stale_artifacts`: what to redo, how."""
    lines = []
    for artifact, fields in stale.items():
        changed = f"{', '.join(fields)} changed"
        if artifact.startswith("calibration/"):
            method = artifact.split("/", 1)[1]
            files = ", ".join(str(p) for p in run.calibration_paths(method) if p.exists())
            lines.append(f"{changed}: the {method} calibration ({files}) was made with the old value; "
                         f"recalibrate: ldm-ood calibrate --run {run.root} --method {method}")
        elif artifact != stage:
            lines.append(f"{changed}: finished stage {artifact} ({run.done_path(artifact)}) was trained with the "
                         f"old value; retrain it: ldm-ood train {artifact.replace('_', '-')} --run {run.root}")
        elif resume:
            lines.append(f"{changed}, but stage {stage} is already finished ({run.done_path(stage)}): --resume will "
                         f"not retrain it; train it without --resume to retrain it with the new value")
    return lines


def training_cases(manifest: str | Path) -> tuple[list[Case], list[Case]]:
    """``(train, val)`` cases of a manifest; an empty split is an :class:`InputError`."""
    cases = read_manifest(manifest)
    train = select(cases, split="train")
    val = select(cases, split="val", set_name="id")
    if not train:
        raise InputError(manifest, "no training cases (rows with split == 'train')")
    if not val:
        raise InputError(manifest, "no validation cases (rows with split == 'val' and set == 'id'); "
                                   "early stopping and the best checkpoint need them")
    return train, val


def build_datasets(config: Config, manifest: str | Path):
    """``(train_ds, val_ds)`` of preprocessed, cached ``{"image", "case_id"}`` items."""
    from ..data.dataset import CaseDataset
    from ..data.transforms import Preprocessor

    train, val = training_cases(manifest)
    pre = Preprocessor(config.data)
    return CaseDataset(train, pre, cache=True), CaseDataset(val, pre, cache=True)


def train(
    run_dir: str | Path,
    stage: str,
    config_path: str | Path | None = None,
    preset: str | None = None,
    manifest: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train one stage of the run at ``run_dir``; returns where the model is and how training ended."""
    stage = stage_info(stage).name
    run = RunDir(run_dir)
    run.check_writable(f"train {stage}")
    ctx = distributed.init_distributed()
    started_group = ctx.distributed
    try:
        with run_lock(run.root, f"train {stage}") if ctx.is_main else contextlib.nullcontext():
            return _train(run, stage, config_path, preset, manifest, resume, ctx)
    finally:
        if started_group:
            distributed.shutdown()


def _train(run: RunDir, stage: str, config_path: str | Path | None, preset: str | None, manifest: str | Path | None,
           resume: bool, ctx: distributed.DistContext) -> TrainResult:
    """:func:`train` once the process group is up and rank 0 holds the run's lock."""
    payload: Config | Exception | None = None
    if ctx.is_main:  # rank 0 reads/writes config.yaml; a config error reaches every rank
        try:
            payload, warnings = resolve_config(run, config_path, preset, stage, resume)
            for line in warnings:
                console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
        except ConfigError as err:
            payload = err
    payload = distributed.broadcast_object(payload, ctx)
    if isinstance(payload, Exception):
        raise payload
    config = payload
    if manifest is None:
        manifest = config.data.manifest
    if manifest is None:
        raise ConfigError("no training data: pass --data MANIFEST or set data.manifest in the config")
    for need in TRAINED[stage].needs:
        if not run.model_path(need).exists():
            raise ConfigError(f"{run.model_path(need)}: stage {stage} needs a trained {need.replace('_', ' ')}; "
                              f"run `ldm-ood train {TRAINED[need].command} --run {run.root}` first")
    train_ds, val_ds = build_datasets(config, manifest)
    if config.data.manifest is None and ctx.is_main:  # read: later stages of the run reuse it
        config.data.manifest = Path(manifest).resolve()
        run.save_config(config)
    result = _fit(stage, run, config, train_ds, val_ds, resume, ctx)
    return TrainResult(stage, run.root, run.model_path(stage), result.epochs, result.best_val_loss,
                       result.best_epoch, result.reason, result.seconds, ctx.world_size)


def _fit(stage: str, run: RunDir, config: Config, train_ds, val_ds, resume: bool,
         ctx: distributed.DistContext) -> FitResult:
    """The stage's fit function (``config.stages.STAGES[stage].fit``) on the datasets."""
    return TRAINED[stage].fit_fn()(run, config, train_ds, val_ds, resume, ctx)
