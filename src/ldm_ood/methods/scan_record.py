"""Folder mode's per-scan record, ``<output>/<case>.json``: everything about one scored scan in one file.

Written by the runner (:mod:`.runner`) for every method, atomically, before ``<case>.txt`` (which
marks the case done); a scan that fails gets a record with its ``error`` instead, so the folder says
what became of every input. The QC report (:mod:`ldm_ood.report.qc`) is drawn from these records.

Fields (``schema`` :data:`SCHEMA`):

* ``case_id``, ``input`` (the scan's absolute path), ``method`` (registry key, ``ldm``), ``method_label``
  (``score ldm``, ``segment (c)``);
* ``score``: the row's ``pred_score`` (``"inf"`` when the input check flagged the scan),
  ``model_score`` (the method's own score), ``percentile`` (of the validation scores ≤ it), ``flag``
  (true: flagged out of distribution), ``threshold`` and ``fpr`` (the image-level operating point and
  the validation false-positive rate it was set at), ``qc_reason`` (why the input check flagged it, or
  ``""``). Methods whose score file has no ``percentile`` / ``flag`` (the segmentation methods) get them
  from their calibration's validation scores and threshold (:mod:`.operating_point`), with the same
  definitions; null where the calibration has none;
* ``calibration_id``, ``model_id`` (:func:`.operating_point.model_id`), ``seconds``;
* ``outputs``: ``{"score": "<case>.txt", "map": "<case>.nii.gz", ...}``, file names in the same folder;
* ``error``: ``""``, or why the scan could not be scored (then the score fields are null).

JSON has no infinite or NaN numbers: such values are written as the strings ``"inf"``, ``"-inf"``,
``"nan"`` and read back as floats.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..artifacts.atomic import atomic_write_text
from ..data.manifest import Case
from .base import Calibrated

SCHEMA = "ldm-ood.scan-record/1"


@dataclass(frozen=True)
class ScanRecord:
    """One scan's result in folder mode (module docstring)."""

    case_id: str
    input: str
    method: str = ""
    method_label: str = ""
    score: float | None = None
    model_score: float | None = None
    percentile: float | None = None
    flag: bool | None = None
    threshold: float | None = None
    fpr: float | None = None
    qc_reason: str = ""
    calibration_id: str = ""
    model_id: str = ""
    seconds: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def to_json(self) -> str:
        data = {"schema": SCHEMA, **{k: _encode(v) for k, v in asdict(self).items()}}
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ScanRecord":
        """The record in ``text``; ``ValueError`` when it is not one of :data:`SCHEMA`."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"not a scan record (schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                             f"expected {SCHEMA!r})")
        known = {f.name for f in fields(cls)}
        values = {k: _decode(v) for k, v in data.items() if k in known}
        if not isinstance(values.get("case_id"), str) or not isinstance(values.get("input"), str):
            raise ValueError("a scan record needs a case_id and an input")
        return cls(**values)


def _encode(value: Any) -> Any:
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else value


def _decode(value: Any) -> Any:
    return float(value) if value in ("inf", "-inf", "nan") else value


def _number(cell: Any) -> float | None:
    """A score-file cell as a float (None when empty)."""
    return None if cell is None or cell == "" else float(cell)


def scan_record_path(out_dir: str | Path, case_id: str) -> Path:
    """``<out_dir>/<case_id>.json``."""
    return Path(out_dir) / f"{case_id}.json"


def scored_record(case: Case, row: Mapping[str, Any], calibrated: Calibrated, label: str, seconds: float,
                  score_file: Path) -> ScanRecord:
    """The record of a scored ``case`` from its score-file ``row`` (after the input check:
    ``runner.apply_input_qc``) and the ``calibrated`` operating point (module docstring)."""
    ref, qc = calibrated.reference, str(row.get("qc_reason", ""))
    score = float(row["pred_score"])
    percentile = _number(row["percentile"]) if "percentile" in row else 100.0 if qc else ref.percentile(score)
    flag_cell = row["flag"] if "flag" in row else True if qc else ref.flag(score)
    flag = None if flag_cell is None or flag_cell == "" else bool(int(flag_cell))
    outputs = {"score": score_file.name}
    outputs.update({k.removesuffix("_path"): Path(v).name for k, v in row.items() if k.endswith("_path") and v})
    return ScanRecord(
        case.case_id, os.path.abspath(case.path), calibrated.method, label, score, _number(row.get("model_score")), percentile,
        flag, ref.threshold, ref.fpr, qc, calibrated.id, calibrated.model_id, round(seconds, 3), outputs)


def failed_record(case: Case, error: str, calibrated: Calibrated, label: str) -> ScanRecord:
    """The record of a ``case`` that could not be scored: its ``error`` and the operating point it would have had."""
    ref = calibrated.reference
    return ScanRecord(case.case_id, os.path.abspath(case.path), calibrated.method, label, threshold=ref.threshold, fpr=ref.fpr,
                      calibration_id=calibrated.id, model_id=calibrated.model_id, error=error)


def write_scan_record(out_dir: str | Path, record: ScanRecord) -> Path:
    """Write ``<out_dir>/<case_id>.json`` atomically."""
    path = scan_record_path(out_dir, record.case_id)
    atomic_write_text(path, record.to_json())
    return path


def read_scan_record(path: str | Path) -> ScanRecord:
    """The record at ``path`` (``ValueError`` naming it when it is not a scan record)."""
    path = Path(path)
    try:
        return ScanRecord.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


def read_scan_records(out_dir: str | Path) -> tuple[list[ScanRecord], dict[str, str]]:
    """``(records, problems)`` of the ``*.json`` files of ``out_dir``: every readable scan record, and
    ``{file name: problem}`` for the JSON files that are not readable scan records."""
    records, problems = [], {}
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            records.append(read_scan_record(path))
        except (OSError, ValueError) as err:
            problems[path.name] = str(err)
    return records, problems
