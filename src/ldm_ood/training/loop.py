"""Generic training loop shared by the three stages (first stage, latent DDPM, LTM).

A stage supplies a :class:`StageTask` (networks, optimizers, one training step, one validation
batch, a preview); :func:`fit` does everything else, identically for every stage:

* epochs over a seeded, sharded sampler (``optim.samples_per_epoch`` cap, DDP-aware);
* rich progress bars with running losses and ETA (rank 0 only);
* validation every ``optim.val_every`` epochs; the best model on the **validation** loss is saved
  with ``checkpoint.save_model`` (``model.safetensors`` + ``config.json``, atomically); early stop
  after ``optim.patience`` epochs without improvement (paper 000 §3.2); a task of several phases
  (f-AnoGAN: GAN, then encoder) names the first epoch whose validation loss may select the best
  model and count for early stopping (``task.first_selected_epoch``, default 1): earlier epochs are
  validated and recorded only;
* ``metrics.csv`` appended every epoch (epoch, train losses, val_loss, seconds, lr), TensorBoard
  scalars when ``torch.utils.tensorboard`` imports;
* ``state.pt`` (current weights, optimizers, epoch, best val loss, patience counter, RNG states)
  atomically after every epoch, so ``resume=True`` continues after the last *completed* epoch,
  also after SIGKILL mid-epoch (rows of a half-recorded epoch are dropped from ``metrics.csv``);
* preview PNGs of validation cases every ``optim.preview_every`` epochs into ``previews/``;
* ``<stage>/DONE`` (JSON: reason, epochs, best val loss, precision) when training ends;
* a finished stage is never destroyed (:mod:`.staging`): a fresh training of it writes everything
  above into ``<stage>.staging/`` and is swapped in for ``<stage>/`` only once its ``DONE`` is
  written; ``resume=True`` continues such a staged training; rank 0 alone touches files;
* precision: ``optim.precision`` (``auto | fp32 | bf16``) is resolved once before the first epoch
  by ``precision_policy.choose_precision`` on the stage's own networks and first training batch
  (rank 0 measures, every rank follows), printed in one line, written to ``<stage>/precision.json``
  and as a ``bf16`` column of ``metrics.csv``;
* non-finite guard (``training.finite``): the first NaN/Inf loss term, gradient norm or
  validation loss stops training with a :class:`~ldm_ood.errors.NonFiniteTrainingError`
  naming stage, epoch, step and term, *before* the optimizer step; nothing of that epoch is saved
  (no state, no best model, no DONE), so ``resume=True`` continues from the last completed epoch.

Randomness is explicit: the data order of epoch ``e`` comes from ``seed + e``; the task's noise
generator is re-seeded from (seed, epoch, rank) at the start of every epoch, so a resumed run
draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate

from ..artifacts.atomic import atomic_write_text
from ..artifacts.checkpoint import load_state, save_model, save_state
from ..config import OptimConfig
from ..errors import NonFiniteTrainingError, NonFiniteValue
from ..precision_policy import PrecisionChoice
from ..runs import RunDir
from .distributed import DistContext, EpochSampler, all_reduce_sum, barrier, shard, unwrap
from .finite import first_non_finite
from .metrics import append_metrics, metrics_header, tensorboard_writer, truncate_metrics
from .precision_check import resolve_training_precision
from .staging import Target, choose_target, swap_in
from .task import StageTask

console = Console(stderr=True)

N_PREVIEW = 4


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    stage: str
    model_dir: Path
    epochs: int
    best_val_loss: float
    best_epoch: int
    reason: str  # "early_stopping" | "max_epochs" | "already_done"
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    model: torch.nn.Module | None = field(default=None, repr=False)  # final (not best) weights, this rank
    precision: PrecisionChoice | None = None


# --------------------------------------------------------------------------- state


def _rng_state() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _clear_stage(stage_dir: Path) -> None:
    """Fresh start: drop the previous model, state, metrics, previews and DONE of the folder being trained
    (an unfinished stage folder or a staging folder, never a finished model: ``staging.choose_target``)."""
    for name in ("model.safetensors", "config.json", "state.pt", "metrics.csv", "DONE", "precision.json"):
        (stage_dir / name).unlink(missing_ok=True)
    for name in ("previews", "tensorboard"):
        shutil.rmtree(stage_dir / name, ignore_errors=True)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block (network construction) with the global torch RNG seeded, restoring it after.

    Weight initialisation draws from the global RNG inside MONAI/torch constructors; forking it
    makes every rank and every (re)start build identical initial weights without global side effects.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the task's noise generator in ``epoch`` on ``rank``."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**63 - 1)


# --------------------------------------------------------------------------- loop


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    )


def _header(task: StageTask) -> list[str]:
    return metrics_header(task.loss_names, getattr(task, "val_metric_names", ()))


def _validate(task: StageTask, loader: DataLoader, seed: int, ctx: DistContext) -> tuple[float, dict[str, float]]:
    """Mean validation loss over all ranks and the task's validation metrics (``validation_metrics``, if it has
    them); the generator is re-seeded so every epoch sees the same noise."""
    for m in task.modules().values():
        m.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed + 999_983 + ctx.rank)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            s, n = task.val_step(batch, gen)
            total, count = total + s, count + n
    total, count = all_reduce_sum([total, float(count)], ctx)
    extra = task.validation_metrics(ctx) if hasattr(task, "validation_metrics") else {}
    return (total / count if count else math.nan), extra


@dataclass
class _Progress:
    """Early-stopping state: the best validation loss so far, its epoch, epochs since (``bad``)."""

    epoch: int = 0
    best: float = math.inf
    best_epoch: int = 0
    bad: int = 0

    def validated(self, val: float, epoch: int) -> bool:
        """Record a finite validation loss; True when it is the new best."""
        if val < self.best:
            self.best, self.best_epoch, self.bad = val, epoch, 0
            return True
        self.bad = epoch - self.best_epoch
        return False


def _restore(task: StageTask, run: RunDir, ctx: DistContext, resume: bool) -> _Progress:
    """The state of the last completed epoch (``resume``), else a clean stage folder; metrics truncated to it.

    ``run`` is the run as this training writes it (``Target.out``: its staged view for a retrain)."""
    state = load_state(run.state_path(task.stage)) if resume else None
    progress = _Progress()
    if state is not None:
        for name, module in task.modules().items():
            unwrap(module).load_state_dict(state["modules"][name])
        for name, opt in task.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        progress = _Progress(state["epoch"], state["best_val_loss"], state["best_epoch"], state["bad_epochs"])
        _set_rng_state(state["rng"])
        if ctx.is_main:
            console.print(f"{task.stage}: resuming after epoch {progress.epoch} (best val loss {progress.best:.5g})")
    barrier(ctx)
    if ctx.is_main:
        if state is None:
            _clear_stage(run.stage_dir(task.stage))
        truncate_metrics(run.metrics_path(task.stage), _header(task), progress.epoch)
    return progress


def _train_epoch(task: StageTask, loader: DataLoader, epoch: int, ctx: DistContext, precision: PrecisionChoice,
                 bars: Progress, total_epochs: int) -> dict[str, float | None]:
    """One epoch of ``task.train_step``: sample-weighted mean of each logged term over all ranks
    (None: the term was not computed this epoch). Raises on the first non-finite value."""
    for m in task.modules().values():
        m.train()
    bar = bars.add_task(f"{task.stage} {epoch}/{total_epochs}", total=len(loader), losses="")
    sums = {k: 0.0 for k in task.loss_names}
    seen = {k: 0.0 for k in task.loss_names}  # samples whose step logged term k (adv_* off in warm-up)
    for step, batch in enumerate(loader, 1):
        try:
            losses = task.train_step(batch, epoch)
        except NonFiniteValue as bad:
            raise NonFiniteTrainingError(task.stage, epoch, step, bad.term, bad.value,
                                         f"Precision was {precision.dtype}.") from None
        _stop_if_non_finite(task.stage, epoch, step, losses, ctx, precision)
        bs = _batch_len(batch)
        for k in task.loss_names:
            if k in losses:
                sums[k] += losses[k] * bs
                seen[k] += bs
        bars.update(bar, advance=1, losses=" ".join(f"{k}={v:.4g}" for k, v in losses.items()))
    bars.remove_task(bar)
    reduced = all_reduce_sum([*sums.values(), *seen.values()], ctx)
    n = len(task.loss_names)
    return {k: (total / count if count > 0 else None) for k, total, count in zip(task.loss_names, reduced[:n], reduced[n:])}


def _record_epoch(task: StageTask, run: RunDir, row: dict[str, Any], progress: _Progress, writer) -> None:
    """Rank 0 after an epoch: its metrics row, TensorBoard scalars, the resume state and one terminal line."""
    epoch = row["epoch"]
    append_metrics(run.metrics_path(task.stage), _header(task), row)
    if writer is not None:
        for k, v in row.items():
            if k != "epoch" and v is not None:
                writer.add_scalar(f"{task.stage}/{k}", v, epoch)
    save_state(run.state_path(task.stage), {
        "modules": {k: unwrap(m).state_dict() for k, m in task.modules().items()},
        "optimizers": {k: o.state_dict() for k, o in task.optimizers().items()},
        "epoch": epoch, "best_val_loss": progress.best, "best_epoch": progress.best_epoch, "bad_epochs": progress.bad,
        "rng": _rng_state(), "generator": task.generator.get_state(),
    })
    terms = " ".join(f"{k}={row[k]:.4g}" for k in task.loss_names if row.get(k) is not None)
    val = f" val={row['val_loss']:.4g}" if row["val_loss"] is not None else ""
    val += "".join(f" {k}={row[k]:.4g}" for k in getattr(task, "val_metric_names", ()) if row.get(k) is not None)
    console.print(f"{task.stage} epoch {epoch}: {terms}{val} ({row['seconds']:.1f}s)")


def _finish(task: StageTask, target: Target, epoch: int, reason: str, progress: _Progress,
            precision: PrecisionChoice, writer) -> None:
    """Rank 0 at the end of training: ``DONE`` (reason, epochs, best, precision), a staged training swapped
    in for the stage folder, and one terminal line."""
    run = target.run
    atomic_write_text(target.out.done_path(task.stage), json.dumps({
        "reason": reason, "epochs": epoch, "best_val_loss": progress.best, "best_epoch": progress.best_epoch,
        "precision": precision.as_dict()}))
    if writer is not None:
        writer.close()
    if target.staged:
        swap_in(run, task.stage)
        console.print(f"{task.stage}: the retrained model replaced the previous one in {run.stage_dir(task.stage)}")
    console.print(f"{task.stage}: done after {epoch} epochs ({reason}); best val loss {progress.best:.5g} "
                  f"at epoch {progress.best_epoch} -> {run.model_path(task.stage)}")


def _already_done(task: StageTask, run: RunDir, ctx: DistContext) -> FitResult:
    done = run.stage_dir(task.stage) / "DONE"
    info = json.loads(done.read_text() or "{}")
    if ctx.is_main:
        console.print(f"{task.stage}: already finished ({done}); nothing to resume")
    return FitResult(task.stage, run.stage_dir(task.stage), int(info.get("epochs", 0)),
                     float(info.get("best_val_loss", math.nan)), int(info.get("best_epoch", 0)), "already_done", 0.0)


def fit(
    task: StageTask,
    train_ds: Dataset,
    val_ds: Dataset,
    optim: OptimConfig,
    run: RunDir,
    ctx: DistContext | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``task`` until early stopping or ``optim.max_epochs``; see the module docstring."""
    ctx = ctx or DistContext()
    start_time = time.time()
    target = choose_target(run, task.stage, resume, ctx)
    for line in target.notes if ctx.is_main else ():
        console.print(line, highlight=False, soft_wrap=True)
    if target.already_done:
        return _already_done(task, run, ctx)
    out, stage_dir = target.out, target.out.stage_dir(task.stage)
    progress = _restore(task, out, ctx, resume)
    precision = resolve_training_precision(task, train_ds, optim, ctx)
    if ctx.is_main:
        console.print(f"precision of {precision.line()}" + (" [cached]" if precision.cached else ""))
        atomic_write_text(out.precision_path(task.stage), json.dumps(precision.as_dict(), indent=1))
    writer = tensorboard_writer(stage_dir) if ctx.is_main else None
    sampler = EpochSampler(len(train_ds), optim.seed, optim.samples_per_epoch, ctx)
    train_loader = DataLoader(train_ds, batch_size=optim.batch_size, sampler=sampler, num_workers=optim.num_workers)
    val_loader = DataLoader(Subset(val_ds, shard(len(val_ds), ctx)), batch_size=optim.batch_size, shuffle=False,
                            num_workers=optim.num_workers)
    preview_batch = default_collate([val_ds[i] for i in range(min(N_PREVIEW, len(val_ds)))])
    first_selected = getattr(task, "first_selected_epoch", 1)
    history: list[dict[str, float]] = []
    reason, epoch = "max_epochs", progress.epoch

    with _progress(ctx.is_main) as bars:
        for epoch in range(progress.epoch + 1, optim.max_epochs + 1):
            t0 = time.time()
            sampler.set_epoch(epoch)
            task.generator.manual_seed(epoch_seed(optim.seed, epoch, ctx.rank))
            train = _train_epoch(task, train_loader, epoch, ctx, precision, bars, optim.max_epochs)
            val, val_metrics = None, {}
            if epoch % optim.val_every == 0 or epoch == optim.max_epochs:
                val, val_metrics = _validate(task, val_loader, optim.seed, ctx)
                if not math.isfinite(val):
                    raise NonFiniteTrainingError(task.stage, epoch, "validation", "val_loss", val,
                                                 f"Precision was {precision.dtype}.")
                if epoch >= first_selected and progress.validated(val, epoch) and ctx.is_main:
                    save_model(stage_dir, task.model(), task.model_config().to_json())
            if ctx.is_main and epoch % optim.preview_every == 0:
                _preview(task, preview_batch, out.previews_dir(task.stage) / f"epoch_{epoch:04d}.png")
            row = {"epoch": epoch, **train, "val_loss": val, "seconds": round(time.time() - t0, 3),
                   "lr": _main_lr(task), "bf16": int(task.bf16), **val_metrics}
            history.append({k: (math.nan if v is None else float(v)) for k, v in row.items()})
            if ctx.is_main:
                _record_epoch(task, out, row, progress, writer)
            barrier(ctx)
            if val is not None and progress.bad >= optim.patience:
                reason = "early_stopping"
                break

    if ctx.is_main:
        _finish(task, target, epoch, reason, progress, precision, writer)
    barrier(ctx)
    return FitResult(task.stage, run.stage_dir(task.stage), epoch, progress.best, progress.best_epoch, reason,
                     time.time() - start_time, history, task.model(), precision)


def _stop_if_non_finite(stage: str, epoch: int, step: int, losses: dict[str, float], ctx: DistContext,
                        precision: PrecisionChoice) -> None:
    """Raise on every rank when any rank logged a non-finite loss term at this step."""
    bad = first_non_finite(losses)
    if ctx.distributed:
        any_bad = all_reduce_sum([0.0 if bad is None else 1.0], ctx)[0] > 0
        if any_bad and bad is None:
            bad = ("loss term on another rank", math.nan)
    if bad is not None:
        raise NonFiniteTrainingError(stage, epoch, step, bad[0], bad[1], f"Precision was {precision.dtype}.")


def _main_lr(task: StageTask) -> float:
    """The learning rate of the task's first optimizer (of this epoch's phase, for a task of several)."""
    return next(iter(task.optimizers().values())).param_groups[0]["lr"]


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        batch = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return int(batch.shape[0])


def _preview(task: StageTask, batch: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    model = task.model()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            task.preview(batch, path)
    except Exception as err:  # a preview never stops training
        console.print(f"[yellow]preview failed: {type(err).__name__}: {err}")
    finally:
        model.train(was_training)
