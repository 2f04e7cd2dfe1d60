"""Reading what evaluation needs from a run folder: score files, manifest, calibration thresholds.

Score files (docs/CONTRACTS.md): ``scores/<ldm|ltm>/<set>.csv`` and ``segment/<variant>/<set>.csv``,
one row per case with ``case_id`` and ``pred_score`` (higher = more anomalous); segmentation rows
also carry ``map_path``. Ground-truth masks come from the manifest's ``mask`` column, the
segmentation threshold from ``calibration/segment.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, TypeVar, get_args

from ..config import Variant
from ..data.manifest import Case, read_manifest
from ..methods.records import read_records
from ..runs import RunDir

T = TypeVar("T")


def normalise_runs(run_dirs: Mapping[str, str | Path] | str | Path | Iterable[str | Path]) -> dict[str, Path]:
    """``{name: path}`` from a dict, one path, or a list of paths (name = folder name)."""
    if isinstance(run_dirs, Mapping):
        return {str(k): Path(v) for k, v in run_dirs.items()}
    if isinstance(run_dirs, (str, Path)):
        return {Path(run_dirs).name: Path(run_dirs)}
    out: dict[str, Path] = {}
    for p in run_dirs:
        out[Path(p).name] = Path(p)
    return out


def score_sets(run: RunDir, method: str) -> list[str]:
    """Set names with a score file in ``scores/<method>/``."""
    folder = run.root / "scores" / method
    return sorted(p.stem for p in folder.glob("*.csv")) if folder.is_dir() else []


def segment_variants(run: RunDir) -> list[str]:
    """The segmentation systems with score files in ``segment/<system>/``: the paper 001 variants (a-d)
    and the baselines (``ae``, ``vae``, ...)."""
    folder = run.root / "segment"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.csv"))) if folder.is_dir() else []


def segmentation_calibration(run: RunDir, system: str) -> Path:
    """The calibration JSON holding ``system``'s ``residual_threshold``: ``segment.json`` for a paper 001
    variant, ``calibration/<system>.json`` for a baseline."""
    return run.segment_calibration_path if system in get_args(Variant) else run.calibration_json_path(system)


@dataclass
class ScoreColumn:
    """One column of one score file: the finite scores and how many rows were left out, and why."""

    path: Path
    column: str
    exists: bool
    scores: dict[str, float] = field(default_factory=dict)  # case_id -> finite score
    n_rows: int = 0
    n_missing: int = 0  # empty or unreadable value (or no such column)
    n_nonfinite: int = 0  # NaN / ±Inf
    n_rejected: int = 0  # +inf with a qc_reason: flagged by the input check, kept (ranked most OOD)

    def skipped_note(self) -> str | None:
        """``"<path>: N row(s) without a finite '<column>' skipped"``, None when no row was skipped."""
        bad = self.n_missing + self.n_nonfinite
        return f"{self.path}: {bad} row(s) without a finite {self.column!r} skipped" if bad else None

    def rejected_note(self) -> str | None:
        """Names the rows the input check flagged (their +inf counts as most OOD), None when none."""
        if not self.n_rejected:
            return None
        return (f"{self.path}: {self.n_rejected} of {self.n_rows} scan(s) flagged OOD by the input check (qc_reason): "
                f"{self.column!r} is +inf for them, so this set's {self.column!r} AUROC measures the check as well as "
                "the model (model_score keeps the model's own)")


def read_score_column(path: Path, column: str) -> ScoreColumn:
    """``column`` of the score file at ``path``: finite values by ``case_id`` and the counts of rows
    without a value (``n_missing``) and with a non-finite one (``n_nonfinite``). A row the input check
    flagged (``qc_reason``, value +inf) is kept with +inf and counted in ``n_rejected``."""
    out = ScoreColumn(Path(path), column, Path(path).exists())
    for row in read_records(path):
        out.n_rows += 1
        raw = (row.get(column) or "").strip()
        try:
            v = float(raw) if raw else None
        except ValueError:
            v = None
        if v is None:
            out.n_missing += 1
        elif v == math.inf and (row.get("qc_reason") or "").strip():
            out.n_rejected += 1
            out.scores[row["case_id"]] = v
        elif not math.isfinite(v):
            out.n_nonfinite += 1
        else:
            out.scores[row["case_id"]] = v
    return out


def read_scores(path: Path, column: str, notes: list[str] | None = None) -> dict[str, float]:
    """``{case_id: score}`` from one score file; rows with a missing or non-finite value are skipped
    (counted in a note when ``notes`` is given; :func:`read_score_column` has the counts)."""
    return finite_scores(read_score_column(path, column), notes)


def finite_scores(col: ScoreColumn, notes: list[str] | None = None) -> dict[str, float]:
    """``col.scores``, with :meth:`ScoreColumn.skipped_note` appended to ``notes`` when rows were skipped."""
    if notes is not None:
        notes.extend(note for note in (col.skipped_note(), col.rejected_note()) if note)
    return col.scores


def resolve_path(raw: str, run: RunDir) -> Path | None:
    """A path from a score file: absolute, relative to the run folder, or to the working directory."""
    if not raw:
        return None
    p = Path(raw)
    if p.is_absolute():
        return p
    return (run.root / p) if (run.root / p).exists() else p


def rows_with_maps(rows: Iterable[Mapping[str, str]], lookup: Mapping[tuple[str, str], T], set_name: str,
                   run: RunDir) -> list[tuple[Mapping[str, str], T, Path]]:
    """``(row, lookup[(set_name, case_id)], map path)`` for the score rows that have both an entry in
    ``lookup`` (e.g. a ground-truth mask) and a ``map_path``."""
    out = []
    for row in rows:
        item, map_path = lookup.get((set_name, row["case_id"])), resolve_path(row.get("map_path", ""), run)
        if item is not None and map_path is not None:
            out.append((row, item, map_path))
    return out


def run_manifest(run: RunDir, manifest: str | Path | None, notes: list[str]) -> list[Case] | None:
    """Cases of ``manifest``, else of the run config's ``data.manifest``; None (with a note) if neither."""
    source: Path | None = Path(manifest) if manifest is not None else None
    if source is None and run.config_path.exists():
        try:
            source = run.load_config().data.manifest
        except Exception as err:  # a broken config must not stop evaluation of the scores
            notes.append(f"{run.config_path}: could not read data.manifest ({err})")
    if source is None:
        return None
    try:
        return read_manifest(source, check_files=False)
    except Exception as err:
        notes.append(f"{source}: manifest unreadable ({err}); masks and input images unavailable")
        return None


def read_threshold(path: Path, key: str, variant: str | None = None) -> float | None:
    """A threshold from a calibration JSON: ``{key: x}``, ``{key: {variant: x}}`` or ``{variant: {key: x}}``."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    candidates = [data.get(key)] if isinstance(data, dict) else []
    if isinstance(data, dict) and variant is not None:
        inner = data.get(variant) or (data.get("variants") or {}).get(variant)
        if isinstance(inner, dict):
            candidates.insert(0, inner.get(key))
    for c in candidates:
        if isinstance(c, dict) and variant is not None:
            c = c.get(variant)
        if isinstance(c, (int, float)) and math.isfinite(c):
            return float(c)
    return None


def run_precision(run: RunDir) -> dict[str, dict]:
    """What each network of ``run`` ran in: ``{"<stage> (training)": ..., "<network> (<method>)": ...}``
    from ``<stage>/precision.json`` and the run's ``precision.json`` (unreadable files are skipped)."""
    out: dict[str, dict] = {}
    paths = [run.precision_path(stage) for stage in ("first_stage", "ldm", "transformer")]
    for path in [*paths, run.inference_precision_path]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if path == run.inference_precision_path and isinstance(data, dict):
            out.update({k: v for k, v in data.items() if isinstance(v, dict)})
        elif isinstance(data, dict) and "network" in data:
            out[data["network"]] = data
    return out
