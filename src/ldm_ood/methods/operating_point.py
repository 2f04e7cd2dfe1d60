"""A method's image-level operating point: the validation scores its calibration kept, the threshold
set on them and the false-positive rate it was set at.

Every registered method's calibration JSON keeps the scores of the in-distribution validation scans
(``methods.registry.MethodInfo.reference_keys`` names the keys: ``val_scores`` of ``ood.json``,
``values`` of ``ltm.json`` ...) and, except paper 001's own segmentation, an image-level threshold
(the (1 − fpr) quantile of those scores). The per-scan record of folder mode
(:mod:`.scan_record`) and the QC report (:mod:`ldm_ood.report.qc`) place each scan against them.

A calibration without them (written by an older version, or a file that cannot be read) gives an
empty :class:`OperatingPoint`: scoring goes on, and the report says the distribution is unavailable.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..runs import RunDir
from .registry import METHODS


@dataclass(frozen=True)
class OperatingPoint:
    """``val_scores``: the validation image scores (empty: not stored); ``threshold``: a scan scoring
    above it is flagged (None: the method has no image-level threshold); ``fpr``: the validation
    false-positive rate the threshold was set at."""

    val_scores: tuple[float, ...] = ()
    threshold: float | None = None
    fpr: float | None = None

    @property
    def available(self) -> bool:
        """Whether the validation score distribution is known."""
        return bool(self.val_scores)

    def percentile(self, score: float) -> float | None:
        """Percentage of validation scores ≤ ``score`` (as every method's ``percentile`` column); None
        without validation scores."""
        if not self.val_scores:
            return None
        return 100.0 * sum(v <= score for v in self.val_scores) / len(self.val_scores)

    def flag(self, score: float) -> bool | None:
        """``score`` above the threshold (None without one)."""
        return None if self.threshold is None else bool(score > self.threshold)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_operating_point(data: Mapping[str, Any], method: str) -> OperatingPoint:
    """The operating point in the calibration JSON ``data`` of ``method`` (registry key); entries that
    are missing or not finite numbers are left out."""
    scores_key, threshold_key = METHODS[method].reference_keys
    raw = data.get(scores_key)
    values = raw.values() if isinstance(raw, Mapping) else raw if isinstance(raw, list) else ()
    scores = tuple(v for v in (_number(x) for x in values) if v is not None and math.isfinite(v))
    threshold = _number(data.get(threshold_key)) if threshold_key else None
    threshold = threshold if threshold is not None and math.isfinite(threshold) else None
    fpr = _number(data.get("fpr")) if threshold is not None else None
    return OperatingPoint(scores, threshold, fpr)


def load_operating_point(run: RunDir, method: str) -> OperatingPoint:
    """``method``'s operating point from the run's calibration (:func:`read_operating_point`); empty
    when the run is not calibrated or the file cannot be read (scoring refuses such a file itself)."""
    path = run.calibration_json_path(method)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return OperatingPoint()
    return read_operating_point(data, method) if isinstance(data, Mapping) else OperatingPoint()


def model_id(networks: Mapping[str, str]) -> str:
    """12 hex digits naming the trained networks ``{stage: weights sha256}`` a calibration was made with
    (``""`` when none is recorded): two scores with the same model id come from the same networks."""
    if not networks:
        return ""
    return hashlib.sha256(json.dumps(dict(networks), sort_keys=True).encode()).hexdigest()[:12]
