"""Calibration files: finite or refused, recorded, and checked before they are used.

* :func:`require_finite_calibration` before anything is written (raw per-case values and every
  statistic);
* :func:`write_calibration_json` (``allow_nan=False``: NaN can never reach a calibration file);
* :func:`require_finite_file` when scoring loads a calibration (an old file written with NaN);
* :func:`record_calibration` after a calibration is written: the input domain its validation scans
  span (:mod:`ldm_ood.data.plausibility`) and ``calibration/<method>_record.json``, the sha256 of
  every file it wrote, of the networks it was made with (``config.stages.CALIBRATIONS``) and its id;
* :func:`check_calibration` before scoring: the files are the recorded ones
  (:class:`~ldm_ood.errors.IntegrityError`) and the networks have not been retrained since
  (:class:`~ldm_ood.errors.StaleArtifactError`, ``force`` to use it anyway); it returns the id, the
  input domain, the model id and the operating point (:mod:`.operating_point`) rows are made under.

Zero stds need no check here: the LDM's z-scoring floors its metric and voxel stds
(:mod:`.ldm.calibration`, :mod:`.ldm.maps`); the LTM's and the segmentation's validation-score std
are reported, never divided by.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from ..artifacts.atomic import atomic_write_text
from ..artifacts.integrity import file_sha256, verify_sha256
from ..config.stages import CALIBRATIONS
from ..data.plausibility import InputDomain, InputStats
from ..errors import IntegrityError, NonFiniteCalibrationError, StaleArtifactError
from ..models.loading import upstream_hashes
from ..runs import RunDir
from .base import Calibrated
from .operating_point import load_operating_point, model_id

console = Console(stderr=True)


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


@contextlib.contextmanager
def readable(path: str | Path, method: str, run_root: str | Path) -> Iterator[None]:
    """Reading a calibration file inside the block: a torn or unparsable file (JSON, safetensors) is an
    :class:`IntegrityError` naming it and the command that remakes it, never a parser traceback."""
    try:
        yield
    except FileNotFoundError:
        raise
    except Exception as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise IntegrityError(path, f"not a readable calibration file ({type(err).__name__}: {first}); re-run "
                                   f"`ldm-ood calibrate --method {method} --run {run_root}`") from None


def record_calibration(run: RunDir, method: str, stats: Iterable[InputStats | None] | None) -> str:
    """Save the input domain of the validation scans' ``stats`` (None: keep the saved one) and the
    calibration's record (module docstring); returns the calibration id (12 hex digits of the hash
    of its files)."""
    if stats is not None or not run.input_domain_path(method).exists():
        InputDomain.fit([s for s in stats or () if s is not None]).save(run.input_domain_path(method))
    written = [p for p in run.calibration_paths(method) if p != run.calibration_record_path(method) and p.exists()]
    files = {p.name: file_sha256(p) for p in written}
    cid = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    record = {"id": cid, "files": files, "networks": upstream_hashes(run, CALIBRATIONS[method].stages)}
    atomic_write_text(run.calibration_record_path(method), json.dumps(record, indent=2))
    return cid


def recorded_id(run: RunDir, method: str) -> str:
    """The id in ``calibration/<method>_record.json`` (``""`` when there is none or it cannot be read)."""
    try:
        return str(json.loads(run.calibration_record_path(method).read_text(encoding="utf-8"))["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _model_id(run: RunDir, networks: Mapping[str, str]) -> str:
    """A model bundle's id (its ``model.json``, checked by ``open_bundle``), else the id of the run's networks."""
    if run.is_bundle:
        try:
            return str(json.loads(run.bundle_meta_path.read_text(encoding="utf-8"))["model_id"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return model_id(networks)


def check_calibration(run: RunDir, method: str, force: bool = False) -> Calibrated:
    """The calibration's id and input domain, the model id of the networks scoring uses and the
    operating point, after checking its files and networks (module docstring). A calibration made by
    an older version (no record) is used unchecked (id ``""``, the default input domain)."""
    path = run.calibration_record_path(method)
    redo = f"re-run `ldm-ood calibrate --method {method} --run {run.root}`"
    now = upstream_hashes(run, CALIBRATIONS[method].stages)

    def calibrated(cid: str) -> Calibrated:
        return Calibrated(cid, InputDomain.load(run.input_domain_path(method)), method, _model_id(run, now),
                          load_operating_point(run, method))

    if not path.exists():
        return calibrated("")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files, networks, cid = dict(record["files"]), dict(record["networks"]), str(record["id"])
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(path, f"not a readable calibration record ({err}); {redo}") from None
    for name, sha in files.items():
        target = run.calibration_dir / name
        if not target.exists():
            raise IntegrityError(target, f"is missing but recorded in {path}; {redo}")
        verify_sha256(target, sha, path, redo)
    changed = [stage for stage, sha in networks.items() if now.get(stage, sha) != sha]
    if changed:
        problem = f"made with a {' and '.join(s.replace('_', ' ') for s in changed)} that has since been retrained: {redo}"
        if not force:
            raise StaleArtifactError(run.calibration_paths(method)[0], problem + ", or pass --force to score with it anyway")
        console.print(f"[yellow]warning: {escape(str(run.calibration_paths(method)[0]))}: {escape(problem)}; used anyway (--force)")
    return calibrated(cid)
