"""Where every method's scans come from: the run, its config, the manifest or folder, resume.

Paper 000 §3.2 / paper 001 §4.1 score the same manifests and folders with different models; what
they share lives here, so the three pipelines read the inputs and write the outputs alike:

* :class:`Preprocessing`: what a pipeline needs of ``ldm_ood.data.transforms.Preprocessor``;
* :func:`load_context`: run folder, config (the run's unless given), device and preprocessor;
* :func:`manifest_cases`, :func:`validation_cases`, :func:`test_cases`: manifest → cases
  (``split=val`` for calibration, ``split=test`` per set for scoring);
* :func:`folder_cases` (:func:`folder_inputs`, :func:`folder_done_ids`), :func:`write_folder_score`,
  :func:`read_folder_score`: the MOOD challenge folder layout, where ``<output>/<case>.txt`` holds the
  scan's score as one number (the same for every method) and a case whose ``.txt`` exists is skipped
  on a rerun;
* :func:`pending`: cases of a score CSV not written yet (resume);
* :func:`progress_bar`: the ``rich`` progress bar all scoring commands show;
* :func:`writes_run`: one writer per run directory (its lock file); none into a model bundle; under
  ``torchrun`` the ranks of a scoring command write together (:mod:`.sharding`).

Calibration files (finite checks, atomic JSON) are :mod:`.calibration_files`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, TypeVar

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..artifacts.atomic import atomic_write_text
from ..artifacts.lock import run_lock
from ..config import Config, ConfigError
from ..data.io import Image
from ..data.manifest import Case, read_manifest, select, set_names
from ..errors import InputError, OutputError
from ..precision import default_device
from ..runs import RunDir
from . import sharding

F = TypeVar("F", bound=Callable[..., Any])


class Preprocessing(Protocol):
    """What the pipelines need of ``ldm_ood.data.transforms.Preprocessor`` (CONTRACTS.md).

    ``load(source)`` → ``(x (1, *grid) in [0, 1], meta)`` for a case's ``source`` (an image file or a
    DICOM series); ``apply(image)``: the same for an image already read; ``invert(array (*grid), meta)``
    → the array on the input's native grid and affine.
    """

    def load(self, source: Any) -> tuple[torch.Tensor, Any]: ...

    def apply(self, image: Image) -> tuple[torch.Tensor, Any]: ...

    def invert(self, array_on_grid: Any, meta: Any) -> Image: ...


@dataclass
class Context:
    """What every scoring call starts from: the run's folder and config, the device, the preprocessor."""

    run: RunDir
    cfg: Config
    device: torch.device
    preprocessor: Preprocessing


def load_context(
    run_dir: str | Path,
    config: Config | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
) -> Context:
    """The run at ``run_dir``; ``config`` (default: the run's ``config.yaml``, ``FileNotFoundError``
    without one); ``device`` (default: ``precision.default_device()``, under ``torchrun`` the rank's
    own, :mod:`.sharding`); ``preprocessor`` (default:
    ``Preprocessor(cfg.data)``)."""
    run = RunDir(run_dir)
    cfg = config if config is not None else run.config_or(None)
    if device is not None:
        dev = torch.device(device)
    else:  # one device per rank under torchrun (cuda:<local rank> or the CPU)
        dev = sharding.world().device if sharding.world().distributed else default_device()
    if preprocessor is None:
        from ..data.transforms import Preprocessor

        preprocessor = Preprocessor(cfg.data)
    return Context(run, cfg, dev, preprocessor)


def manifest_cases(cfg: Config, manifest: str | Path | None) -> list[Case]:
    """All cases of ``manifest`` (a CSV or a folder), else of the config's ``data.manifest``. A row
    naming a missing file is kept: it fails as its own case when it is read, and the others run."""
    source = manifest if manifest is not None else cfg.data.manifest
    if source is None:
        raise ConfigError("no manifest: pass --data or set data.manifest in the run's config")
    return read_manifest(source, check_files=False)


def validation_cases(cfg: Config, manifest: str | Path | None) -> list[Case]:
    """The ``split=val`` cases calibration runs on; ``ConfigError`` when there are none."""
    val = select(manifest_cases(cfg, manifest), split="val")
    if not val:
        raise ConfigError("the manifest has no split=val cases to calibrate on")
    return val


def test_cases(cfg: Config, manifest: str | Path | None, sets: Sequence[str] | None = None) -> dict[str, list[Case]]:
    """``{set name: its split=test cases}`` for ``sets`` (default: every test set of the manifest,
    in manifest order); ``ConfigError`` for a requested set without test cases, or a manifest without any."""
    cases = manifest_cases(cfg, manifest)
    out: dict[str, list[Case]] = {}
    names = sets or set_names(cases, split="test")
    if not names:
        source = manifest if manifest is not None else cfg.data.manifest
        raise ConfigError(f"{source}: no split=test rows to score (splits found: "
                          f"{', '.join(sorted({c.split for c in cases}))}); mark the scans to score with split=test")
    for name in names:
        todo = select(cases, split="test", set_name=name)
        if not todo:
            raise ConfigError(f"no test cases in set {name!r}")
        out[name] = todo
    return out


test_cases.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test


def pending(cases: Sequence[Case], done_ids: Iterable[str]) -> tuple[list[Case], int]:
    """``(cases not in done_ids, how many were skipped)``: resume of a score CSV."""
    done = set(done_ids)
    todo = [c for c in cases if c.case_id not in done]
    return todo, len(cases) - len(todo)


def folder_score_path(output_dir: str | Path, case_id: str) -> Path:
    """``<output_dir>/<case_id>.txt``: the MOOD layout's per-case score file."""
    return Path(output_dir) / f"{case_id}.txt"


def folder_cases(input_dir: str | Path, output_dir: str | Path) -> tuple[Path, list[Case], int]:
    """Folder (MOOD) mode: ``(output folder, created, cases of input_dir without a <case>.txt in it,
    how many were skipped because they have one)``. The cases are the folder's image files and every
    DICOM series in its tree (``data.manifest.folder_inputs``)."""
    out, cases = folder_inputs(input_dir, output_dir)
    todo, skipped = pending(cases, folder_done_ids(out, cases))
    return out, todo, skipped


def folder_done_ids(output_dir: str | Path, cases: Sequence[Case]) -> set[str]:
    """The ids of ``cases`` with a ``<case>.txt`` in ``output_dir`` (done in folder mode)."""
    return {c.case_id for c in cases if folder_score_path(output_dir, c.case_id).exists()}


def folder_inputs(input_dir: str | Path, output_dir: str | Path) -> tuple[Path, list[Case]]:
    """Folder (MOOD) mode: ``(output folder, created; every case of input_dir)``."""
    out, source = Path(output_dir), Path(input_dir)
    if not source.is_dir():
        raise InputError(source, "the input folder does not exist" if not source.exists() else
                         "is not a folder; --input takes a folder of scans (or pass a manifest with --data)")
    if out.exists() and not out.is_dir():
        raise OutputError(out, "is a file, not a folder; --output takes a folder (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(out, f"cannot create the output folder: {err.strerror or err}") from None
    return out, read_manifest(source)


def write_folder_score(path: str | Path, score: float) -> Path:
    """Write ``<case>.txt`` of the MOOD layout: the score alone, as one number and a newline (atomic,
    so a half-written file never marks a case done). Same format for every method."""
    path = Path(path)
    atomic_write_text(path, f"{float(score)!r}\n")
    return path


def read_folder_score(path: str | Path) -> float:
    """The score of a ``<case>.txt`` written by :func:`write_folder_score`."""
    return float(Path(path).read_text())


def progress_bar(enabled: bool = True, transient: bool = False) -> Progress:
    """The scoring commands' progress bar (description, bar, done/total, elapsed, remaining)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=transient)


def _folder_mode(signature: inspect.Signature, args: tuple, kwargs: dict) -> bool:
    """Whether a call of a scoring function gives an ``input_dir`` (folder mode writes only to ``output_dir``)."""
    try:
        return signature.bind(*args, **kwargs).arguments.get("input_dir") is not None
    except TypeError:  # a wrong call: the function itself says what is wrong
        return False


def writes_run(command: str, sharded: bool = False) -> Callable[[F], F]:
    """Decorate a ``fn(run_dir, ...)`` that writes into a run directory: it holds the run's lock
    (:func:`ldm_ood.artifacts.lock.run_lock`) while it runs, so a second writer fails at once. A
    run directory that does not exist is not created (the call fails on its own). A model bundle
    (``ldm_ood.bundle``) is read-only: folder mode (``input_dir`` given) runs without the lock and
    writes only to its ``output_dir``; any other call is a :class:`~ldm_ood.errors.BundleError`.

    Under ``torchrun``, a ``sharded`` command (scoring, segmentation) runs on every rank, splitting
    the cases, with the lock held by rank 0 (:func:`.sharding.sharded_launch`); any other command is
    refused with a ``ConfigError``. Called inside a sharded command (a segmentation calibrating its
    variant first), ``fn`` runs under the lock rank 0 already holds."""
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(run_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
            run = RunDir(run_dir)
            if run.is_bundle and _folder_mode(signature, (run_dir, *args), kwargs):
                return fn(run_dir, *args, **kwargs)
            run.check_writable(command)
            if not run.root.is_dir() or sharding.joined():
                return fn(run_dir, *args, **kwargs)
            if sharding.launched():
                if not sharded:
                    raise ConfigError(f"`{command}` runs in one process: start it without torchrun "
                                      "(only scoring and segmentation are split over torchrun's processes)")
                with sharding.sharded_launch(run_dir, command):
                    return fn(run_dir, *args, **kwargs)
            with run_lock(run_dir, command):
                return fn(run_dir, *args, **kwargs)
        return locked  # type: ignore[return-value]
    return decorate
