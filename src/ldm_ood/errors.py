"""Errors that name the file and the problem, and the collection of per-file failures of a batch.

* :class:`ConfigError`: a configuration value or file is invalid (names the field and the reason);
  :class:`PresetChangeError`: a preset given for a run that already has another one;
* :class:`InputError`: a user input (image, mask, manifest row) is unusable;
* :class:`NonFiniteError` and its two kinds, :class:`NonFiniteModelError` (a trained network's
  weights hold NaN/Inf) and :class:`NonFiniteCalibrationError` (a calibration would hold, or holds,
  NaN/Inf statistics): numbers that would silently turn every score into NaN;
* :class:`IncompleteResultsError`: a benchmark/demo finished without a finite result for a method;
* :class:`ModelNotTrainedError`: a stage's model files are missing; :class:`LPIPSWeightsError`: the
  LPIPS weights are missing or altered;
* :class:`NonFiniteTrainingError`: training stopped on a NaN/Inf (:class:`NonFiniteValue` is the
  signal a training step raises for it);
* :class:`OutputError`, :class:`IntegrityError`, :class:`StaleArtifactError`, :class:`RunLockedError`:
  an output that cannot be written safely, a changed model / calibration file, an artifact built on
  an older upstream one, a second writer on a run directory;
* :class:`BundleError`: a model bundle that cannot be used as asked (a newer format, not a bundle,
  a command that would write into it); a changed bundle file is an :class:`IntegrityError`;
* :class:`BatchFailures` / :class:`BatchError`: per-item failures of a batch, raised at its end;
* :class:`EngineUnavailableError`: an inference engine (``ldm_ood.engines``) whose package is not installed
  or that cannot run a network; :class:`EngineMismatchError`: an engine (or its cached exported file)
  whose outputs differ from PyTorch's beyond the engine's tolerance;
* :class:`UploadError`: a scan uploaded to the scoring service is unusable (an HTTP 4xx);
  :class:`QueueFullError` / :class:`ServiceClosedError` (:class:`ServiceBusyError`): the service cannot
  take a scan now (429 / 503).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field (and the file) and the reason."""


class PresetChangeError(ConfigError):
    """A ``--preset`` / ``preset:`` / ``extends:`` differs from the preset of an existing configuration.

    Its own class so that a run that has trained nothing yet can accept the new preset instead."""


class _PathProblem(ValueError):
    """``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)

    def __reduce__(self):  # pickled with its path and problem (sent from rank 0 to the others under torchrun)
        return _rebuild_path_problem, (type(self), self.path, self.problem)


def _rebuild_path_problem(cls: type, path: Path | None, problem: str) -> _PathProblem:
    """An error of class ``cls`` (a ``_PathProblem``) with ``path`` and ``problem``, whatever its own ``__init__``."""
    err = cls.__new__(cls)
    _PathProblem.__init__(err, path, problem)
    return err


class InputError(_PathProblem):
    """A user input (image, mask, manifest row) is unusable. ``str(err)`` is ``"<path>: <problem>"``."""


class NonFiniteError(_PathProblem):
    """Numbers that must be finite are not. ``str(err)`` is ``"<path>: <problem>"`` (``path`` may be None)."""


class NonFiniteModelError(NonFiniteError):
    """A trained network (``<run>/<stage>/model.safetensors``) holds NaN/Inf parameters or buffers,
    or a stage fact such as the LDM's latent scale factor is unusable: retrain the stage."""


class NonFiniteCalibrationError(NonFiniteError):
    """A calibration's statistics (means, stds, thresholds, validation scores, voxel statistics) are
    not all finite: raised before anything is written, and when scoring loads an old such file."""


class IncompleteResultsError(RuntimeError):
    """A benchmark or demo finished but a method it ran has no finite result (the report is written)."""


class ModelNotTrainedError(FileNotFoundError):
    """A stage's model files are missing; the message names the path and the command that makes them."""


class LPIPSWeightsError(RuntimeError):
    """The LPIPS weight file is missing, altered, or not the expected structure."""


class NonFiniteValue(ArithmeticError):
    """A loss term or gradient norm of one step is NaN or Inf (``term`` names it)."""

    def __init__(self, term: str, value: float):
        self.term, self.value = term, value
        super().__init__(f"{term} = {value}")


class NonFiniteTrainingError(NonFiniteError):
    """Training stopped on a non-finite value; the message names stage, epoch, step and term
    (the CLI prints it as one error paragraph and exits 1)."""

    def __init__(self, stage: str, epoch: int, step: int | str, term: str, value: float, detail: str = ""):
        self.stage, self.epoch, self.step, self.term, self.value = stage, epoch, step, term, value
        super().__init__(
            None,
            f"{stage}: non-finite {term} ({value}) at epoch {epoch}, step {step}; training stopped. "
            "The last completed epoch's state and the best model on disk are unchanged: fix the cause "
            "(e.g. precision: fp32, a lower lr or optim.grad_clip_norm in a --config YAML) and continue "
            "with --resume." + (f" {detail}" if detail else "")
        )


class OutputError(_PathProblem):
    """An output could not be written where it belongs (disk full, read-only folder, a path that
    would leave the output root or overwrite an input); names the output path."""


class IntegrityError(_PathProblem):
    """A model or calibration file is not the one that was written (its sha256 differs from the one
    recorded beside it, or it is truncated / unparsable): names the file and what to redo."""


class StaleArtifactError(_PathProblem):
    """An artifact was built on an older version of another (an LDM on a since-retrained first
    stage, a calibration on since-retrained networks, scores under another calibration): says what
    to re-run; ``--force`` uses it anyway."""


class BundleError(_PathProblem):
    """A model bundle (``ldm_ood.bundle``) cannot be used as asked: its format is newer than this
    version reads, it is not a bundle, or a command would write into it (a bundle is read-only:
    calibrate and train in the run it was exported from, then export again)."""


class EngineUnavailableError(RuntimeError):
    """An inference engine cannot be used here: its package is missing (``pip install ldm-ood[engines]``),
    it has no kernel for the requested precision, or exporting the network to it failed."""


class EngineMismatchError(_PathProblem):
    """An engine's output on the probe input differs from PyTorch fp32 beyond its tolerance; names the
    exported file (or the network, for an engine without one) and the measured error."""


class RunLockedError(RuntimeError):
    """Another process is writing to the same run directory (its lock file names the process)."""


class UploadError(_PathProblem):
    """A scan uploaded to the scoring service is unusable. ``path`` is the file name the client sent
    (never a path on the server); ``status`` the HTTP status it is answered with: 400 (not a readable
    NIfTI or zip), 413 (too large), 422 (a readable NIfTI that is not a usable scan: NaN voxels, another
    dimensionality than the model's, a constant image; a zip that is not one readable DICOM series)."""

    def __init__(self, name: str | None, problem: str, status: int):
        self.status = status
        super().__init__(name or "upload", problem)


class ServiceBusyError(RuntimeError):
    """The scoring service cannot take a scan now; ``status`` and ``code`` are its HTTP answer."""

    status: int = 503
    code: str = "unavailable"


class QueueFullError(ServiceBusyError):
    """As many scans as the service scores at once are being scored and as many as may wait are waiting."""

    status, code = 429, "queue_full"


class ServiceClosedError(ServiceBusyError):
    """The service is shutting down: scans already taken are finished, new ones refused."""

    status, code = 503, "shutting_down"


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

    def __reduce__(self):
        return type(self), (str(self), self.failures)


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
