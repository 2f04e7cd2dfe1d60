"""Errors that name the file and the problem, and the collection of per-file failures of a batch.

* :class:`InputError`: a user input (image, mask, manifest row) is unusable;
* :class:`NonFiniteError` and its two kinds, :class:`NonFiniteModelError` (a trained network's
  weights hold NaN/Inf) and :class:`NonFiniteCalibrationError` (a calibration would hold, or holds,
  NaN/Inf statistics): numbers that would silently turn every score into NaN;
* :class:`IncompleteResultsError`: a benchmark/demo finished without a finite result for a method;
* :class:`BatchFailures` / :class:`BatchError`: per-item failures of a batch, raised at its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class InputError(ValueError):
    """A user input (image, mask, manifest row) is unusable. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class NonFiniteError(ValueError):
    """Numbers that must be finite are not. ``str(err)`` is ``"<path>: <problem>"`` (``path`` may be None)."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class NonFiniteModelError(NonFiniteError):
    """A trained network (``<run>/<stage>/model.safetensors``) holds NaN/Inf parameters or buffers,
    or a stage fact such as the LDM's latent scale factor is unusable: retrain the stage."""


class NonFiniteCalibrationError(NonFiniteError):
    """A calibration's statistics (means, stds, thresholds, validation scores, voxel statistics) are
    not all finite: raised before anything is written, and when scoring loads an old such file."""


class IncompleteResultsError(RuntimeError):
    """A benchmark or demo finished but a method it ran has no finite result (the report is written)."""


@dataclass
class BatchFailures:
    """Per-item failures of a command over many files; the rest of the batch still runs.

    Usage::

        failures = BatchFailures()
        for case in cases:
            with failures.guard(case.case_id, case.path):
                process(case)
        failures.raise_if_any("score")   # after all the others are written
    """

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, case_id: str, message: str) -> None:
        self.items.append((case_id, message))

    def guard(self, case_id: str, path: str | Path | None = None) -> "_Guard":
        return _Guard(self, case_id, path)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        return "\n".join(f"  {cid}: {msg}" for cid, msg in self.items)

    def raise_if_any(self, what: str) -> None:
        if self.items:
            raise BatchError(f"{what}: {len(self.items)} item(s) failed:\n{self.summary()}", self)


class BatchError(RuntimeError):
    """Raised after a batch finished with failures (the CLI exits non-zero)."""

    def __init__(self, message: str, failures: BatchFailures):
        super().__init__(message)
        self.failures = failures


class _Guard:
    def __init__(self, failures: BatchFailures, case_id: str, path: str | Path | None):
        self.failures, self.case_id, self.path = failures, case_id, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            return False
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return False
        msg = str(exc)
        if self.path is not None and not isinstance(exc, InputError):
            msg = f"{self.path}: {type(exc).__name__}: {exc}"
        self.failures.add(self.case_id, msg)
        return True
