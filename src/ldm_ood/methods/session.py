"""One model loaded once, then one scan scored at a time: what ``ldm-ood serve`` keeps for its lifetime.

:class:`ScoringSession` loads a detection method's config, preprocessor, networks and calibration
through the method's ``prepare_<name>`` (:mod:`.registry`): the same loading, with the same checks
(weights and calibration hashes, staleness, settings), as ``score_<name>``. It then scores one scan
at a time — a file, or an :class:`~ldm_ood.data.io.Image` already in memory — through
:func:`.runner.score_case`, the runner's own steps for a batch of one. The row and the anomaly map
are those ``ldm-ood score`` writes for that scan: its ``<case>.txt`` and ``<case>.nii.gz`` in folder
mode, its row of ``scores/<method>/<set>.csv`` in manifest mode (the LDM's noise is seeded by the case
id, the file name without its suffix, so the same scan under the same name gets the same score).

Several threads may score at once: the networks are only read (inference without gradients) and
each call writes into its own ``out_dir``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.io import Image, case_id_of
from ..data.manifest import Case, plain_name
from ..errors import ConfigError, InputError
from .base import PreparedScoring
from .registry import method as method_info
from .runner import score_case


@dataclass(frozen=True)
class ScanScore:
    """One scored scan: ``row`` is its score-file row (``case_id``, ``pred_score``, ``percentile``,
    ``flag``, ``map_path``, ``model_score``, ``qc_reason``, ``calibration_id``, ``seconds`` and the
    method's own columns, e.g. ``score_mse`` or ``mse@<t>``)."""

    case_id: str
    row: dict[str, Any]

    @property
    def map_path(self) -> Path:
        """The anomaly map, NIfTI on the scan's own grid and affine."""
        return Path(self.row["map_path"])


class ScoringSession:
    """A detection method of the run (or model bundle) at ``root``, loaded once (module docstring).

    ``method``: ``ldm`` or ``ltm`` (the methods with a ``prepare_fn`` in the registry); ``model_id``:
    what results name the model by (default: as folder mode's ``<case>.json``, the id of the networks, or a
    bundle's own id);
    ``bundle_meta``: a model bundle's ``model.json``, part of :meth:`describe`; ``device``: default
    ``precision.default_device()``; ``force``: use a model or calibration made before a network it
    depends on was retrained. The run folder is only read (the precision choices are not recorded in it).
    A method that is not calibrated is refused: a service needs the operating threshold.
    """

    def __init__(self, root: str | Path, method: str = "ldm", *, model_id: str | None = None,
                 bundle_meta: dict[str, Any] | None = None, device: str | None = None, force: bool = False):
        self.info, self.bundle_meta = method_info(method), bundle_meta
        self.prepared: PreparedScoring = self.info.prepare()(root, device=device, force=force,
                                                             record_precision=False)
        if self.prepared.threshold is None:
            raise ConfigError(f"{root}: method {method} is not calibrated; run `ldm-ood calibrate --method {method} "
                              f"--run {root}` before serving it")
        calibrated = self.prepared.calibrated
        self.model_id = model_id or calibrated.model_id or calibrated.id or f"{Path(root).name}-{method}"

    @property
    def method(self) -> str:
        return self.info.name

    @property
    def spatial_dims(self) -> int:
        return self.prepared.context.cfg.data.spatial_dims

    @property
    def threshold(self) -> float:
        """The operating threshold: ``pred_score`` above it is flagged."""
        return float(self.prepared.threshold)  # type: ignore[arg-type]  # checked in __init__

    @property
    def fpr(self) -> float:
        """The validation false-positive rate the threshold was set at."""
        return float(self.prepared.fpr)  # type: ignore[arg-type]

    def score(self, scan: str | Path | Image, out_dir: str | Path, case_id: str | None = None) -> ScanScore:
        """Score one scan (a file, or an image in memory) and write its anomaly map into ``out_dir``
        (created if missing) as ``<case_id>.nii.gz``. ``case_id``: default the file name without its
        suffix (``scan`` for an image without a path); it seeds the LDM's noise and names the map.
        Errors are raised: :class:`InputError` for a scan that cannot be read or is not a usable scan."""
        image = scan if isinstance(scan, Image) else None
        path = Path(scan) if image is None else image.path  # type: ignore[arg-type]
        case_id = case_id if case_id is not None else (case_id_of(path) if path is not None else "scan")
        problem = plain_name(case_id)
        if problem is not None:
            raise InputError(path, f"case id {case_id!r} {problem}; it names the map file")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        case = Case(case_id, path if path is not None else out / case_id, set="", split="test")
        row, seconds = score_case(self.prepared.method, self.prepared.context, case, out, self.prepared.calibrated,
                                  image)
        return ScanScore(case_id, {"case_id": case_id, **row, "seconds": round(seconds, 3)})

    def describe(self) -> dict[str, Any]:
        """What the model is (``model.json``-like): id, method, calibration, expected input, networks, versions."""
        import monai
        import torch

        from .. import __version__
        from ..config.stages import CALIBRATIONS
        from ..models.loading import upstream_hashes

        ctx, p = self.prepared.context, self.prepared
        data = ctx.cfg.data
        return {
            "model_id": self.model_id,
            "method": self.method,
            "description": self.info.description,
            "paper": self.info.paper,
            "preset": ctx.cfg.preset,
            "calibration": {"id": p.calibrated.id, "fpr": self.fpr, "threshold": self.threshold,
                            "n_validation": p.n_validation},
            "input": {"spatial_dims": data.spatial_dims, "grid": list(data.grid),
                      "spacing": list(data.spacing) if data.spacing is not None else None,
                      "orientation": data.orientation, "modality": data.modality, "ct_window": list(data.ct_window)},
            "networks": upstream_hashes(ctx.run, CALIBRATIONS[self.method].stages),
            "columns": list(p.method.fieldnames),
            "device": str(ctx.device),
            "versions": {"ldm_ood": __version__, "torch": torch.__version__, "monai": monai.__version__,
                         "python": platform.python_version()},
            **({"bundle": self.bundle_meta} if self.bundle_meta is not None else {}),
        }
