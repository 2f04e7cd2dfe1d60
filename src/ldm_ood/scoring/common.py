"""Plumbing shared by the files-in/files-out scoring entry points (LDM, LTM, segmentation).

Paper 000 §3.2 / paper 001 §4.1 score the same manifests and folders with different models; what
they share lives here, so the three pipelines read the inputs and write the outputs alike:

* :class:`Preprocessing`: what a pipeline needs of ``ldm_ood.data.transforms.Preprocessor``;
* :func:`load_context`: run folder, config (the run's unless given), device and preprocessor;
* :func:`manifest_cases`, :func:`validation_cases`, :func:`test_cases`: manifest → cases
  (``split=val`` for calibration, ``split=test`` per set for scoring);
* :func:`folder_cases`, :func:`write_folder_score`, :func:`read_folder_score`: the MOOD challenge
  folder layout, where ``<output>/<case>.txt`` holds the scan's score as one number (the same for
  every method) and a case whose ``.txt`` exists is skipped on a rerun;
* :func:`pending`: cases of a score CSV not written yet (resume);
* :func:`progress_bar`: the ``rich`` progress bar all scoring commands show;
* finite calibrations, the one check all three calibrations share: :func:`require_finite_calibration`
  before anything is written (raw per-case values and every statistic), :func:`write_calibration_json`
  (``allow_nan=False``: NaN can never reach a calibration file) and :func:`require_finite_file` when
  scoring loads a calibration (an old file written with NaN). Zero stds need no check here: the LDM's
  z-scoring floors its metric and voxel stds (:mod:`.ood`, :mod:`.maps`); the LTM's and the
  segmentation's validation-score std are reported, never divided by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import Config, ConfigError
from ..data.io import Image
from ..data.manifest import Case, read_manifest, select, set_names
from ..errors import NonFiniteCalibrationError
from ..precision import default_device
from ..runs import RunDir
from ..artifacts.atomic import atomic_write_text

__all__ = [
    "Context", "Preprocessing", "folder_cases", "folder_score_path", "load_context", "manifest_cases", "nonfinite_values",
    "pending", "progress_bar", "read_folder_score", "require_finite_calibration", "require_finite_file", "test_cases",
    "validation_cases", "write_calibration_json", "write_folder_score",
]


class Preprocessing(Protocol):
    """What the pipelines need of ``ldm_ood.data.transforms.Preprocessor`` (CONTRACTS.md).

    ``load(path)`` → ``(x (1, *grid) in [0, 1], meta)``; ``invert(array (*grid), meta)`` → the array on
    the input's native grid and affine.
    """

    def load(self, path: str | Path) -> tuple[torch.Tensor, Any]: ...

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
    without one); ``device`` (default: ``precision.default_device()``); ``preprocessor`` (default:
    ``Preprocessor(cfg.data)``)."""
    run = RunDir(run_dir)
    cfg = config if config is not None else run.config_or(None)
    dev = torch.device(device) if device is not None else default_device()
    if preprocessor is None:
        from ..data.transforms import Preprocessor

        preprocessor = Preprocessor(cfg.data)
    return Context(run, cfg, dev, preprocessor)


def manifest_cases(cfg: Config, manifest: str | Path | None) -> list[Case]:
    """All cases of ``manifest`` (a CSV or a folder), else of the config's ``data.manifest``."""
    source = manifest if manifest is not None else cfg.data.manifest
    if source is None:
        raise ConfigError("no manifest: pass --data or set data.manifest in the run's config")
    return read_manifest(source)


def validation_cases(cfg: Config, manifest: str | Path | None) -> list[Case]:
    """The ``split=val`` cases calibration runs on; ``ConfigError`` when there are none."""
    val = select(manifest_cases(cfg, manifest), split="val")
    if not val:
        raise ConfigError("the manifest has no split=val cases to calibrate on")
    return val


def test_cases(cfg: Config, manifest: str | Path | None, sets: Sequence[str] | None = None) -> dict[str, list[Case]]:
    """``{set name: its split=test cases}`` for ``sets`` (default: every test set of the manifest,
    in manifest order); ``ConfigError`` for a requested set without test cases."""
    cases = manifest_cases(cfg, manifest)
    out: dict[str, list[Case]] = {}
    for name in sets or set_names(cases, split="test"):
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
    how many were skipped because they have one)``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = read_manifest(input_dir)
    todo = [c for c in cases if not folder_score_path(out, c.case_id).exists()]
    return out, todo, len(cases) - len(todo)


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


# ----------------------------------------------------------------------------- finite calibrations


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _numeric_leaves(data: Any, name: str) -> Iterator[tuple[str, np.ndarray]]:
    """``(dotted name, float64 array)`` of every number in nested dicts / lists / tensors / arrays;
    strings, None and booleans are skipped (case ids, settings). A list of numbers, and a dict of more
    than 3 numbers (validation scores by case), is one entry."""
    if isinstance(data, torch.Tensor):
        if data.is_floating_point():
            yield name, data.detach().to("cpu", torch.float64).numpy()
    elif isinstance(data, np.ndarray):
        if np.issubdtype(data.dtype, np.floating):
            yield name, data.astype(np.float64)
    elif isinstance(data, Mapping) and len(data) > 3 and all(_is_number(v) for v in data.values()):
        yield name, np.asarray(list(data.values()), dtype=np.float64)  # many numbers by key: validation scores by case
    elif isinstance(data, Mapping):
        for k, v in data.items():
            yield from _numeric_leaves(v, f"{name}.{k}" if name else str(k))
    elif isinstance(data, (list, tuple)):
        numbers = [x for x in data if _is_number(x)]
        if numbers:
            yield name, np.asarray(numbers, dtype=np.float64)
        for i, x in enumerate(data):
            if not isinstance(x, (int, float, str, bool)) and x is not None:
                yield from _numeric_leaves(x, f"{name}[{i}]")
    elif isinstance(data, float):
        yield name, np.asarray([data], dtype=np.float64)


def nonfinite_values(data: Any) -> dict[str, tuple[int, int]]:
    """``{dotted name: (how many non-finite, how many numbers)}`` of the entries of ``data`` (nested
    dicts / lists / tensors) that hold a NaN or an Inf; empty when everything is finite."""
    out: dict[str, tuple[int, int]] = {}
    for name, arr in _numeric_leaves(data, ""):
        bad = int((~np.isfinite(arr)).sum())
        if bad:
            out[name or "value"] = (bad, int(arr.size))
    return out


def _describe(bad: Mapping[str, tuple[int, int]], shown: int = 8) -> str:
    items = [name if total == 1 else f"{name} ({n} of {total} values)" for name, (n, total) in bad.items()]
    return ", ".join(items[:shown]) + (f", ... ({len(items) - shown} more)" if len(items) > shown else "")


def require_finite_calibration(
    method: str,
    path: str | Path,
    statistics: Mapping[str, Any],
    per_case: Mapping[str, Any] | None = None,
    *,
    columns: Mapping[str, Sequence[str]] | None = None,
    cause: str,
    unit: str = "validation scans",
) -> None:
    """Refuse a calibration before anything is written when a value is not finite.

    Args:
        method: ``ldm`` | ``ltm`` | ``segment`` (named in the message).
        path: the calibration file that would be written (named in the message).
        statistics: everything about to be saved (means, stds, thresholds, validation scores, voxel
            statistics ...; nested dicts / lists / tensors); every number must be finite.
        per_case: raw validation values ``{name: (N, ...)}``, first axis = case: the message says how
            many cases gave a non-finite value of each, and with ``columns[name]`` (labels of axis 1,
            e.g. ``t=200``) at which columns.
        cause: what produces the NaN and what to do, e.g. "the LDM or first stage produces NaN; retrain it".

    Raises:
        NonFiniteCalibrationError: ``"<path>: calibration <method>: 12 of 12 validation scans gave
        non-finite mse at t=200, t=600; non-finite statistics: mean.mse (2 of 2 values), ...: <cause>;
        nothing was written"``.
    """
    parts = []
    for name, values in (per_case or {}).items():
        arr = next((a for _, a in _numeric_leaves(values, name)), np.zeros((0,)))
        if arr.ndim == 0 or arr.shape[0] == 0:
            continue
        bad_cells = ~np.isfinite(arr.reshape(arr.shape[0], -1))
        n_bad = int(bad_cells.any(axis=1).sum())
        if not n_bad:
            continue
        where = ""
        labels = (columns or {}).get(name)
        if labels is not None and arr.ndim == 2 and len(labels) == arr.shape[1]:
            where = " at " + ", ".join(str(c) for c, b in zip(labels, bad_cells.any(axis=0)) if b)
        parts.append(f"{n_bad} of {arr.shape[0]} {unit} gave non-finite {name}{where}")
    bad_stats = nonfinite_values(statistics)
    if bad_stats:
        parts.append(f"non-finite statistics: {_describe(bad_stats)}")
    if parts:
        raise NonFiniteCalibrationError(path, f"calibration {method}: {'; '.join(parts)}: {cause}; nothing was written")


def require_finite_file(path: str | Path, data: Any, recalibrate: str) -> None:
    """Refuse a loaded calibration (``data``: its contents) holding NaN/Inf: ``NonFiniteCalibrationError``
    naming ``path``, the non-finite entries and the command that recalibrates (``recalibrate``)."""
    bad = nonfinite_values(data)
    if bad:
        raise NonFiniteCalibrationError(
            path, f"calibration holds non-finite values ({_describe(bad)}), so every score would be NaN; "
            f"recalibrate: `{recalibrate}` (if that fails too, retrain the model it names)",
        )


def write_calibration_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write a calibration JSON atomically with ``allow_nan=False``: a NaN/Inf raises ``ValueError``
    instead of reaching the file (call :func:`require_finite_calibration` first for a clear message)."""
    path = Path(path)
    text = json.dumps(data, indent=2, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
