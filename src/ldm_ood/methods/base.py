"""What every method is and returns: the :class:`Method` protocol the runner drives, and the one
result type of each step (:class:`CalibrationResult`, :class:`RunResult`).

A method is a folder of :mod:`ldm_ood.methods` (``ldm/``, ``ltm/``, ``segment/``) with a
``pipeline.py`` holding its ``calibrate_*`` and scoring functions, and one line in
:mod:`.registry`; its scoring function builds a :class:`Method` and hands it to
:func:`.runner.run_method`, which owns resume, folder mode, batching, failures and progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence

import torch

from ..data.manifest import Case
from ..data.plausibility import DEFAULT, InputDomain
from ..runs import RunDir
from .context import Context
from .operating_point import OperatingPoint

#: columns the runner fills in every method's score file, just before ``seconds``: ``model_score`` (the
#: method's own score), ``qc_reason`` (why the input is implausible, :mod:`ldm_ood.data.plausibility`;
#: then ``pred_score`` is +inf and ``flag`` 1) and ``calibration_id`` (the calibration it was scored under)
RUNNER_COLUMNS = ("model_score", "qc_reason", "calibration_id")


@dataclass
class CalibrationResult:
    """What a calibration wrote, the same fields for every method.

    ``path``: the calibration file; ``n``: validation scans it used (``failed`` could not be read or
    scored); ``fpr`` / ``threshold``: the image-level operating point (score above ``threshold`` →
    flagged; None where thresholds are per variant, see ``details``); ``files``: other files it wrote
    (voxel statistics, KL thresholds); ``details``: the method's own numbers (t-values, residual
    thresholds, mean and std of the validation scores); ``id``: the calibration id every score row
    made with it carries (``calibration/<method>_record.json``).
    """

    method: str
    path: Path
    n: int
    fpr: float
    threshold: float | None
    failed: int = 0
    id: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Calibrated:
    """What the runner checks a method's rows against: its calibration's ``id`` (written in every row;
    a score file made under another calibration is refused) and ``domain`` (the input QC bounds); and
    what folder mode's per-scan record names (:mod:`.scan_record`): the ``method`` (registry key), the
    ``model_id`` of the networks it was made with and its ``reference`` (validation scores, threshold, FPR)."""

    id: str = ""
    domain: InputDomain = DEFAULT
    method: str = ""
    model_id: str = ""
    reference: OperatingPoint = OperatingPoint()


@dataclass
class RunResult:
    """What a scoring method wrote: one CSV per set (or the output folder), and counts."""

    outputs: dict[str, Path] = field(default_factory=dict)
    scored: int = 0
    rejected: int = 0  # scored, but flagged OOD by the input QC (``qc_reason``)
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0


class Method(Protocol):
    """A scoring method plugged into :func:`run_method`."""

    name: str  # "score ldm", "segment (c)": the progress bars
    label: str  # "score --method ldm", "segment (variant c)": the failure summary
    batch_size: int
    fieldnames: Sequence[str]  # columns of its CSV (case_id, set, pred_score, ..., seconds)

    def records_path(self, run: RunDir, set_name: str) -> Path: ...  # the set's CSV

    def outputs_dir(self, run: RunDir, set_name: str) -> Path: ...  # the set's maps / images

    def score_batch(self, cases: list[Case], x: torch.Tensor, metas: list[Any], out_dir: Path) -> list[dict[str, Any]]:
        """Score ``x (b, 1, *grid)`` (the preprocessed ``cases``), write each case's outputs into
        ``out_dir``; one row per case with ``pred_score`` and the method's columns (no case_id, set, seconds)."""
        ...


@dataclass
class PreparedScoring:
    """A detection method ready to score, everything loaded and checked once: what its ``score_<name>``
    hands to :func:`.runner.run_method`, and what a :class:`~.session.ScoringSession` keeps.

    ``context``: run, config, device, preprocessor; ``method``: the :class:`Method` (networks and
    calibration inside); ``calibrated``: the calibration's id and input domain; ``fpr`` / ``threshold``:
    its operating point (None when the method is not calibrated); ``n_validation``: the validation
    scans it was calibrated on.
    """

    context: Context
    method: Method
    calibrated: Calibrated
    fpr: float | None
    threshold: float | None
    n_validation: int = 0


class DetectionFiles:
    """Where an OOD-detection method (``key``: ``ldm``, ``ltm``) writes: ``scores/<key>/<set>.csv``, ``maps/<key>/<set>/``."""

    key: ClassVar[str]

    def records_path(self, run: RunDir, set_name: str) -> Path:
        return run.scores_path(self.key, set_name)

    def outputs_dir(self, run: RunDir, set_name: str) -> Path:
        return run.maps_dir(self.key, set_name)
