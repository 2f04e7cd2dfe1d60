"""The one driver every scoring method runs through: LDM (paper 000), LTM (its baseline), segmentation (paper 001).

A method (:class:`~.base.Method`) only says where its records and outputs go and how it scores a batch
of preprocessed scans; :func:`run_method` does everything else, the same way for every method:

* **jobs** — one per test set of the manifest (``sets`` to restrict), or one for an input folder
  (folder-in / folder-out, the MOOD layout: ``<case>.txt`` holds the score alone; beside it
  ``<case>.json``, the scan's record (:mod:`.scan_record`), or its error when it failed);
* **resume** — cases already in the set's CSV (or its part files), or with a ``<case>.txt`` in the
  output folder, are skipped; rows are appended (and fsynced) as each batch finishes, a ``.txt``
  written last;
* **batches** — ``method.batch_size`` scans are loaded and scored together, cut in case order from
  the whole set (a resumed case keeps the batch-mates it had, less the finished ones: its numbers do
  not depend on where a run was interrupted); a batch's rows are appended together; ``seconds`` of
  a row is its load time plus its share of the batch;
* **failures** — an unreadable scan is recorded and skipped; a batch that fails is retried scan by
  scan, so only the culprit is lost; after every job, :class:`~ldm_ood.errors.BatchError` lists
  the failures (the CLI exits non-zero) while everything else is on disk;
* **input check** — a scan outside the calibration's input domain (:mod:`ldm_ood.data.plausibility`)
  is flagged OOD with its ``qc_reason`` (``pred_score`` +inf, the method's own in ``model_score``);
* **calibration** — every row carries the ``calibration_id`` it was made under; a score file made
  under another calibration is not added to (``force`` to override);
* **outputs** — every output folder stays inside the output root and holds no input scan
  (:func:`.outputs.check_output_folder`); images are written atomically;
* **progress** — one bar per job;
* **ranks** — under ``torchrun`` the pending cases of each job are split over the ranks batch by batch
  and each rank writes its own part file, merged in case order at the end (:mod:`.sharding`): the
  files are those of one process.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from rich.console import Console
from rich.markup import escape

from ..data.io import Image
from ..data.manifest import Case
from ..errors import BatchFailures, OutputError, StaleArtifactError
from . import sharding
from .base import Calibrated, Method, RunResult
from .context import (
    Context,
    folder_done_ids,
    folder_inputs,
    folder_score_path,
    progress_bar,
    test_cases,
    write_folder_score,
)
from .outputs import check_output_folder, check_outside_bundle
from .records import RecordWriter, merge_parts, part_path, part_paths, part_records
from .scan_record import failed_record, scored_record, write_scan_record


def cut_batches(cases: Sequence[Case], size: int) -> list[list[Case]]:
    """``cases`` cut in order into batches of ``size`` (the last one shorter)."""
    return [list(cases[i : i + size]) for i in range(0, len(cases), size)]


def pending_batches(cases: Sequence[Case], done: set[str], size: int) -> list[list[Case]]:
    """The batches of ``size`` cut from all of a set's ``cases`` in order, as an uninterrupted run cuts
    them, less the ``done`` cases; batches left empty are dropped. A resumed case is scored with the
    batch-mates it had (less the finished ones), so its numbers do not depend on where a run stopped."""
    batches = ([c for c in batch if c.case_id not in done] for batch in cut_batches(cases, size))
    return [batch for batch in batches if batch]


@dataclass
class Job:
    """Batches of cases still to score (:func:`pending_batches`) and where their outputs go; ``writer``
    None in folder mode.

    ``order``: the position of every case of the set (the order rows are merged in); ``parts``: rows
    go to per-rank part files (:mod:`.sharding`; under ``torchrun``, or when a killed launch left parts)."""

    name: str
    batches: list[list[Case]]
    out_dir: Path
    writer: RecordWriter | None
    order: dict[str, int] | None = None
    parts: bool = False

    def writer_of(self, rank: int) -> RecordWriter | None:
        """Where ``rank`` writes its rows: its part file, or the set's CSV."""
        if self.writer is None or not self.parts:
            return self.writer
        return RecordWriter(part_path(self.writer.path, rank), self.writer.fieldnames)


def _check_calibration_id(writer: RecordWriter, calibrated: Calibrated, force: bool) -> None:
    """Refuse to add to a score file (or its parts) made under another calibration (``force``: add anyway)."""
    in_parts = {r.get("calibration_id", "") for r in part_records(writer.path)}
    made_under = (writer.column_values("calibration_id") | in_parts) - {"", calibrated.id}
    if made_under and not force:
        raise StaleArtifactError(writer.path, f"holds scores made under calibration {', '.join(sorted(made_under))}, "
                                              f"but the run is now calibrated as {calibrated.id or '(none)'}: move or "
                                              "delete the file to score the set again, or pass --force to add to it")


def make_jobs(method: Method, ctx: Context, manifest: str | Path | None, sets: Sequence[str] | None,
              input_dir: str | Path | None, output_dir: str | Path | None, result: RunResult,
              calibrated: Calibrated = Calibrated(), force: bool = False) -> list[Job]:
    """One job per test set (resuming from its CSV and part files), or the input folder's (resuming
    from ``<case>.txt``), in batches of ``method.batch_size``."""
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    size = method.batch_size
    if input_dir is not None:
        if ctx.run.is_bundle:
            check_outside_bundle(output_dir, ctx.run.root)
        out, cases = folder_inputs(input_dir, output_dir)
        done = folder_done_ids(out, cases)
        check_output_folder(out, out, [c for c in cases if c.case_id not in done])
        result.outputs["folder"], result.skipped = out, result.skipped + len(done)
        return [Job("folder", pending_batches(cases, done, size), out, None)]
    jobs = []
    for name, cases in test_cases(ctx.cfg, manifest, sets).items():
        out_dir = method.outputs_dir(ctx.run, name)
        check_output_folder(out_dir, ctx.run.root, cases)
        writer = RecordWriter(method.records_path(ctx.run, name), list(method.fieldnames))
        _check_calibration_id(writer, calibrated, force)
        done = writer.done_ids() | {r["case_id"] for r in part_records(writer.path)}
        batches = pending_batches(cases, done, size)
        result.outputs[name] = writer.path
        result.skipped += len(cases) - sum(map(len, batches))
        jobs.append(Job(name, batches, out_dir, writer, {c.case_id: i for i, c in enumerate(cases)},
                        bool(part_paths(writer.path))))
    return jobs


def plan_jobs(method: Method, ctx: Context, manifest: str | Path | None, sets: Sequence[str] | None,
              input_dir: str | Path | None, output_dir: str | Path | None, result: RunResult,
              calibrated: Calibrated = Calibrated(), force: bool = False) -> list[Job]:
    """:func:`make_jobs` on rank 0 (it repairs the score files); every rank gets its jobs and counts."""
    def plan() -> tuple[list[Job], dict[str, Path], int]:
        jobs = make_jobs(method, ctx, manifest, sets, input_dir, output_dir, result, calibrated, force)
        return jobs, result.outputs, result.skipped

    jobs, result.outputs, result.skipped = sharding.on_main(plan)
    for job in jobs:  # several ranks always write parts (a rank's rows never go to the set's CSV directly)
        job.parts = job.parts or sharding.world().distributed
    return jobs


def _finish(jobs: list[Job], result: RunResult, failures: BatchFailures) -> BatchFailures:
    """After every rank is done: rank 0 merges the part files; every rank gets the launch's counts and failures."""
    sharding.barrier()
    if sharding.world().is_main:
        for job in jobs:
            if job.parts and job.writer is not None:
                merge_parts(job.writer.path, job.writer.fieldnames, job.order or {})
    result.scored, result.rejected = sharding.sum_over_ranks([result.scored, result.rejected])
    return BatchFailures(sharding.gather(failures.items))


@dataclass
class _Loaded:
    case: Case
    x: torch.Tensor
    meta: Any
    seconds: float


def _load(case: Case, ctx: Context, image: Image | None = None) -> _Loaded:
    """``case`` preprocessed (read from ``case.path``, or ``image`` when it was read already), timed."""
    t0 = time.perf_counter()
    x, meta = ctx.preprocessor.load(case.source) if image is None else ctx.preprocessor.apply(image)
    return _Loaded(case, x, meta, time.perf_counter() - t0)


def load_batches(cases: Sequence[Case], ctx: Context, size: int, failures: BatchFailures
                 ) -> Iterator[tuple[int, list[_Loaded]]]:
    """``(n, loaded)`` per chunk of up to ``size`` cases: the preprocessed ones (unreadable ones go
    to ``failures``); ``n`` counts the whole chunk, for the progress bar."""
    return load_groups(cut_batches(cases, size), ctx, failures)


def load_groups(batches: Sequence[Sequence[Case]], ctx: Context, failures: BatchFailures
                ) -> Iterator[tuple[int, list[_Loaded]]]:
    """:func:`load_batches` of batches already cut."""
    for chunk in batches:
        group = []
        for case in chunk:
            with failures.guard(case.case_id, case.path):
                group.append(_load(case, ctx))
        yield len(chunk), group


console = Console(stderr=True)

#: ``fn(cases, x (b, 1, *grid), metas) -> one result per case``: what a batch of scans is turned into
BatchFn = Callable[[list[Case], torch.Tensor, list[Any]], list[Any]]


def _apply(fn: BatchFn, group: list[_Loaded], device: torch.device) -> list[tuple[_Loaded, Any, float]]:
    t0 = time.perf_counter()
    x = torch.stack([item.x for item in group]).to(device)
    results = fn([item.case for item in group], x, [item.meta for item in group])
    share = (time.perf_counter() - t0) / len(group)
    return [(item, res, item.seconds + share) for item, res in zip(group, results)]


def _applied(fn: BatchFn, group: list[_Loaded], device: torch.device, failures: BatchFailures
             ) -> list[tuple[_Loaded, Any, float]]:
    """``fn`` on the group; a failing group is retried scan by scan so only the culprit is recorded."""
    if len(group) > 1:
        try:
            return _apply(fn, group, device)
        except Exception:
            pass  # retried below, one scan at a time
    out = []
    for item in group:
        with failures.guard(item.case.case_id, item.case.path):
            out += _apply(fn, [item], device)
    return out


def each_case(cases: Sequence[Case], ctx: Context, size: int, fn: BatchFn, failures: BatchFailures,
              advance: Callable[[int], None] = lambda n: None) -> Iterator[tuple[_Loaded, Any, float]]:
    """``(loaded case, fn's result for it, seconds)`` for every case that loads and scores, in
    batches of ``size`` (module docstring: failures); ``advance(n)`` after each chunk of ``n`` cases."""
    for n, group in load_batches(cases, ctx, size, failures):
        if group:
            yield from _applied(fn, group, ctx.device, failures)
        advance(n)


def apply_input_qc(row: dict[str, Any], meta: Any, calibrated: Calibrated) -> dict[str, Any]:
    """``row`` with the :data:`~.base.RUNNER_COLUMNS`: an implausible input (``meta.stats`` outside
    ``calibrated.domain``) gets ``pred_score`` +inf, ``flag`` 1 and ``percentile`` 100 (where the
    method has them) and its ``qc_reason``; the method's own score stays in ``model_score``."""
    stats = getattr(meta, "stats", None)
    reason = calibrated.domain.reason(stats) if stats is not None else ""
    out = {**row, "model_score": row["pred_score"], "qc_reason": reason, "calibration_id": calibrated.id}
    if reason:
        out["pred_score"] = math.inf
        out.update({k: v for k, v in (("flag", 1), ("percentile", 100.0)) if k in row})
    return out


def score_case(method: Method, ctx: Context, case: Case, out_dir: Path, calibrated: Calibrated = Calibrated(),
               image: Image | None = None) -> tuple[dict[str, Any], float]:
    """``(row, seconds)`` of one case scored as :func:`run_method` scores it (a batch of one, then the
    input check), its outputs written into ``out_dir``; ``image``: the scan already read (else it is
    read from ``case.path``). Errors are raised, not collected: the caller has one case."""
    item = _load(case, ctx, image)
    [(_, row, seconds)] = _apply(lambda cases, x, metas: method.score_batch(cases, x, metas, out_dir), [item],
                                 ctx.device)
    return apply_input_qc(row, item.meta, calibrated), seconds


def _write(job: Job, writer: RecordWriter | None, done: list[tuple[_Loaded, dict[str, Any], float]],
           failures: BatchFailures, calibrated: Calibrated, label: str) -> list[dict[str, Any]]:
    """Write the rows of one batch's scored cases (one append for the CSV: a kill leaves all or none; in
    folder mode each scan's record, then its score); the rows written."""
    for item, row, _ in done:
        if row["qc_reason"]:
            console.print(f"[yellow]{escape(item.case.case_id)}: flagged OOD by the input check: "
                          f"{escape(row['qc_reason'])}")
    written = []
    if writer is None:  # MOOD layout + the scan's record; the score alone written last so a rerun resumes correctly
        for item, row, seconds in done:
            with failures.guard(item.case.case_id, item.case.path):
                score_file = folder_score_path(job.out_dir, item.case.case_id)
                write_scan_record(job.out_dir, scored_record(item.case, row, calibrated, label, seconds, score_file))
                write_folder_score(score_file, row["pred_score"])
                written.append(row)
        return written
    rows = [{"case_id": item.case.case_id, "set": item.case.set, **row, "seconds": round(seconds, 3)}
            for item, row, seconds in done]
    try:
        writer.write_rows(rows)
    except Exception as err:  # e.g. a full disk: the batch's cases are failures, the next batch is tried
        for item, _, _ in done:
            failures.add(item.case.case_id, f"{writer.path}: {type(err).__name__}: {err}")
        return []
    return [row for _, row, _ in done]


def _record_failures(job: Job, failures: list[tuple[str, str]], calibrated: Calibrated, label: str) -> None:
    """Folder mode: a ``<case>.json`` with its error for each of ``failures`` (case id, message) of the
    job, so the folder says what became of every input; one that cannot be written is only warned about."""
    cases = {c.case_id: c for batch in job.batches for c in batch}
    for case_id, message in failures:
        if case_id in cases:
            try:
                write_scan_record(job.out_dir, failed_record(cases[case_id], message, calibrated, label))
            except OutputError as err:
                console.print(f"[yellow]{escape(str(err))}")


def run_method(method: Method, ctx: Context, manifest: str | Path | None = None, sets: Sequence[str] | None = None,
               input_dir: str | Path | None = None, output_dir: str | Path | None = None, progress: bool = True,
               result: RunResult | None = None, calibrated: Calibrated = Calibrated(), force: bool = False) -> RunResult:
    """Score every pending case of every job with ``method`` (module docstring); returns the counts.
    ``calibrated``: the calibration the rows are made under (its id and input domain); ``force``: add to
    score files made under another calibration."""
    result = result if result is not None else RunResult()
    failures = BatchFailures()
    t_start = time.perf_counter()
    world = sharding.world()
    jobs = plan_jobs(method, ctx, manifest, sets, input_dir, output_dir, result, calibrated, force)
    dealt = 0  # batches of the earlier jobs: dealing goes on where the last set stopped
    with progress_bar(progress and world.is_main) as bar:
        for job in jobs:
            batches = sharding.my_batches(job.batches, world, start=dealt)
            dealt += len(job.batches)
            writer = job.writer_of(world.rank)
            task = bar.add_task(f"{method.name} {job.name}", total=sum(map(len, batches)))
            def score(cases, x, metas, out_dir=job.out_dir):
                return method.score_batch(cases, x, metas, out_dir)

            failed_before = len(failures)
            for n, group in load_groups(batches, ctx, failures):
                done = []
                for item, row, seconds in _applied(score, group, ctx.device, failures) if group else ():
                    with failures.guard(item.case.case_id, item.case.path):
                        done.append((item, apply_input_qc(row, item.meta, calibrated), seconds))
                for row in _write(job, writer, done, failures, calibrated, method.name):
                    result.scored += 1
                    result.rejected += bool(row["qc_reason"])
                bar.advance(task, n)
            if job.writer is None:
                _record_failures(job, failures.items[failed_before:], calibrated, method.name)
    failures = _finish(jobs, result, failures)
    result.seconds = time.perf_counter() - t_start
    result.failed = len(failures)
    failures.raise_if_any(method.label)
    return result
