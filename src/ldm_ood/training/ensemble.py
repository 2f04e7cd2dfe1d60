"""Ensemble of latent transformers: paper 001 Table 1 "Ensemble" (Pinaya et al. 2021, its reference 16).

One decoder-only transformer per ordering of ``ensemble.orderings`` (default eight: raster scan and
S-curve, each plain, transposed, reflected, transposed and reflected), all on the same frozen
first-stage tokens (encoded once), trained **one after another**, each exactly as the LTM is
(:class:`~.transformer.TransformerTask` through :func:`~.loop.fit`) with the ``ensemble`` section's
architecture and ``ensemble.optim``::

    <run>/ensemble/0_raster_scan/transformer/      model.safetensors, config.json, state.pt, metrics.csv, DONE
    <run>/ensemble/1_raster_scan_reflected/transformer/ ...
    <run>/ensemble/config.json                      EnsembleMeta: member folders -> orderings, sha256s
    <run>/ensemble/DONE                             once every member has finished

Each member folder is a run of its own to the loop, so a member saves its state every epoch and a
kill loses at most the current member's unfinished epoch: ``resume=True`` skips finished members
(their ``DONE``) and continues the interrupted one. A fresh training starts every member anew; a
fresh training of a finished ensemble is written into ``ensemble.staging/`` and replaces the old
ensemble only once all its members have finished (:mod:`.staging`).
"""

from __future__ import annotations

import json
import math
import shutil
import time

import torch
from torch.utils.data import Dataset

from ..artifacts.atomic import atomic_write_text
from ..artifacts.stage_meta import EnsembleMeta
from ..config import Config, ConfigError
from ..config.schema import TransformerConfig
from ..data.dataset import TensorItems
from ..models.first_stage import encode_indices
from ..models.transformer import bos_index, build_ordering, parse_ordering, tokens_to_sequence
from ..runs import RunDir
from .distributed import DistContext, barrier
from .ldm import encode_dataset
from .loop import FitResult, console, fit
from .staging import choose_target, swap_in
from .transformer import ORDERING_SEED, TransformerTask

STAGE = "ensemble"


def member_folder(index: int, ordering: str) -> str:
    """``<index>_<ordering>``: a member's folder under ``<run>/ensemble/``."""
    return f"{index}_{ordering}"


def member_config(config: Config, ordering: str) -> Config:
    """The run configuration one member is trained with (and saved with): its ``transformer`` section is
    the ensemble's architecture, this member's ``ordering`` and ``ensemble.optim``."""
    ens = config.ensemble
    member = TransformerConfig(num_layers=ens.num_layers, dim=ens.dim, heads=ens.heads, ordering=ordering,
                               optim=ens.optim)
    return config.model_copy(deep=True, update={"transformer": member})


def _check_orderings(orderings: tuple[str, ...]) -> None:
    for name in orderings:
        try:
            parse_ordering(name)
        except ValueError as err:
            raise ConfigError(f"ensemble.orderings: {err}") from None


def _fresh_folder(out: RunDir, resume: bool, ctx: DistContext) -> None:
    """A fresh training drops the members of an earlier, unfinished one (rank 0; every rank waits)."""
    if ctx.is_main and not resume:
        folder = out.stage_dir(STAGE)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    barrier(ctx)


def _record(run: RunDir, out: RunDir, config: Config, members: dict[str, str], results: list[FitResult]) -> None:
    """Rank 0 once every member is done: ``ensemble/config.json`` (:class:`EnsembleMeta`), then ``DONE``."""
    from ..models.loading import members_sha256, stage_sha256, upstream_hashes

    folder = out.stage_dir(STAGE)
    hashes = [stage_sha256(RunDir(folder / f), "transformer") for f in members]
    meta = EnsembleMeta(spatial_dims=config.data.spatial_dims, config=config.model_dump(mode="json"),
                        inputs=upstream_hashes(run, ("first_stage",)), weights_sha256=members_sha256(hashes),
                        members=dict(members))
    atomic_write_text(out.model_config_path(STAGE), json.dumps(meta.to_json(), indent=2))
    atomic_write_text(out.done_path(STAGE), json.dumps({
        "reason": "members_done", "members": list(members),
        "epochs": [r.epochs for r in results], "best_val_loss": [r.best_val_loss for r in results]}))


def _summary(run: RunDir, results: list[FitResult], start: float) -> FitResult:
    """One :class:`FitResult` for the ensemble: epochs summed, the members' mean best validation loss."""
    history = [{**row, "member": float(i)} for i, r in enumerate(results) for row in r.history]
    best = [r.best_val_loss for r in results]
    reasons = sorted({r.reason for r in results})
    return FitResult(STAGE, run.stage_dir(STAGE), sum(r.epochs for r in results),
                     float(sum(best) / len(best)) if best else math.nan, 0, "+".join(reasons),
                     time.time() - start, history, None, results[-1].precision if results else None)


def fit_ensemble(
    run: RunDir, config: Config, train_ds: Dataset, val_ds: Dataset, resume: bool = False,
    ctx: DistContext | None = None, first_stage: torch.nn.Module | None = None,
) -> FitResult:
    """Train every member of ``ensemble.orderings`` on image datasets (``{"image"}`` items) through the
    run's frozen first stage, one after another (module docstring: folders, resume, retraining)."""
    from ..models.loading import load_first_stage, upstream_hashes

    ctx = ctx or DistContext()
    start = time.time()
    orderings = config.ensemble.orderings
    _check_orderings(orderings)
    target = choose_target(run, STAGE, resume, ctx)
    for line in target.notes if ctx.is_main else ():
        console.print(line, highlight=False, soft_wrap=True)
    if target.already_done:
        if ctx.is_main:
            console.print(f"{STAGE}: already finished ({run.done_path(STAGE)}); nothing to resume")
        return FitResult(STAGE, run.stage_dir(STAGE), 0, math.nan, 0, "already_done", 0.0)
    out = target.out
    _fresh_folder(out, resume, ctx)
    fs = first_stage if first_stage is not None else load_first_stage(run, ctx.device)
    fs.eval()
    train_idx = encode_dataset(fs, train_ds, ctx.device, fn=encode_indices)
    val_idx = encode_dataset(fs, val_ds, ctx.device, fn=encode_indices)
    spatial, bos = tuple(train_idx.shape[1:]), bos_index(config.first_stage.num_embeddings)
    inputs = upstream_hashes(run, ("first_stage",))
    members: dict[str, str] = {}
    results: list[FitResult] = []
    for k, name in enumerate(orderings):
        folder = member_folder(k, name)
        members[folder] = name
        if ctx.is_main:
            console.print(f"{STAGE}: member {k + 1}/{len(orderings)} ({name}) -> {out.stage_dir(STAGE) / folder}")
        ordering = build_ordering(name, spatial, seed=ORDERING_SEED)
        task = TransformerTask(member_config(config, name), spatial, ctx, inputs=inputs)
        train_seq, val_seq = (TensorItems("tokens", tokens_to_sequence(i, ordering, bos)) for i in (train_idx, val_idx))
        results.append(fit(task, train_seq, val_seq, config.ensemble.optim, RunDir(out.stage_dir(STAGE) / folder),
                           ctx, resume=True))  # members always resume: a fresh start emptied the folder above
    if ctx.is_main:
        _record(run, out, config, members, results)
        if target.staged:
            swap_in(run, STAGE)
        console.print(f"{STAGE}: {len(members)} members done -> {run.stage_dir(STAGE)}")
    barrier(ctx)
    return _summary(run, results, start)
