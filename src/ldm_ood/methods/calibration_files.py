"""Calibration files: finite or refused, the one check all three calibrations share.

* :func:`require_finite_calibration` before anything is written (raw per-case values and every
  statistic);
* :func:`write_calibration_json` (``allow_nan=False``: NaN can never reach a calibration file);
* :func:`require_finite_file` when scoring loads a calibration (an old file written with NaN).

Zero stds need no check here: the LDM's z-scoring floors its metric and voxel stds
(:mod:`.ldm.calibration`, :mod:`.ldm.maps`); the LTM's and the segmentation's validation-score std
are reported, never divided by.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..artifacts.atomic import atomic_write_text
from ..errors import NonFiniteCalibrationError


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
