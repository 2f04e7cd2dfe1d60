"""``train(run_dir, stage, ...)``: the library entry point behind ``ldm-ood train <stage>``.

* configuration: ``config_path`` / ``preset`` for a new run (saved as ``<run>/config.yaml``), else
  the run's saved config; passing a config that differs from the saved one is an error;
* data: ``manifest`` argument, else ``config.data.manifest``; train = rows with ``split == "train"``,
  validation = ``split == "val"`` and ``set == "id"``;
* ``stage``: ``first_stage`` (also ``first-stage``), ``ldm`` or ``transformer``; the last two need a
  trained first stage in the run;
* ``resume=True`` continues after the last completed epoch (see :mod:`ldm_ood.training.loop`);
* launched by ``torchrun``, every process calls this and trains with DDP (rank 0 writes files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config, ConfigError, load_config
from ..data.manifest import Case, read_manifest, select
from ..errors import InputError
from ..runs import RunDir
from . import distributed
from .loop import FitResult

STAGE_ALIASES = {"first_stage": "first_stage", "first-stage": "first_stage", "ldm": "ldm", "transformer": "transformer"}


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


def resolve_config(run: RunDir, config_path: str | Path | None, preset: str | None) -> Config:
    """The run's config: saved one, or the given file/preset (then saved). Conflicts are errors."""
    given = load_config(config_path, preset) if (config_path is not None or preset is not None) else None
    if run.config_path.exists() and given is not None:
        saved = run.load_config()
        if saved.model_dump(mode="json") != given.model_dump(mode="json"):
            raise ConfigError(
                f"{run.config_path}: the run already has a different configuration; "
                "train in a new --run directory or edit that file"
            )
    try:
        return run.config_or(given)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None


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
    if stage not in STAGE_ALIASES:
        raise ConfigError(f"unknown stage {stage!r}; choose first-stage, ldm or transformer")
    stage = STAGE_ALIASES[stage]
    run = RunDir(run_dir)
    ctx = distributed.init_distributed()
    started_group = ctx.distributed
    try:
        payload: Config | Exception | None = None
        if ctx.is_main:  # rank 0 reads/writes config.yaml; a config error reaches every rank
            try:
                payload = resolve_config(run, config_path, preset)
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
        if config.data.manifest is None and ctx.is_main:  # later stages of the run reuse it
            config.data.manifest = Path(manifest).resolve()
            run.save_config(config)
        if stage != "first_stage" and not run.model_path("first_stage").exists():
            raise ConfigError(
                f"{run.model_path('first_stage')}: stage {stage} needs a trained first stage; "
                f"run `ldm-ood train first-stage --run {run.root}` first"
            )
        train_ds, val_ds = build_datasets(config, manifest)
        result = _fit(stage, run, config, train_ds, val_ds, resume, ctx)
        return TrainResult(stage, run.root, run.model_path(stage), result.epochs, result.best_val_loss,
                           result.best_epoch, result.reason, result.seconds, ctx.world_size)
    finally:
        if started_group:
            distributed.shutdown()


def _fit(stage: str, run: RunDir, config: Config, train_ds, val_ds, resume: bool,
         ctx: distributed.DistContext) -> FitResult:
    if stage == "first_stage":
        from .first_stage import fit_first_stage

        return fit_first_stage(run, config, train_ds, val_ds, resume, ctx)
    if stage == "ldm":
        from .ldm import fit_ldm

        return fit_ldm(run, config, train_ds, val_ds, resume, ctx)
    from .transformer import fit_transformer

    return fit_transformer(run, config, train_ds, val_ds, resume, ctx)
