"""RunDir: every artifact path of a run in one place (DESIGN.md, "Run directory").

::

    runs/<name>/config.yaml
               first_stage/ ldm/ transformer/     model.safetensors, config.json, state.pt (resume),
                                                  metrics.csv, previews/
               <stage>.staging/                   a retrain of a finished stage, until it is swapped in
               <stage>.old/                       the replaced stage folder, only during the swap
               calibration/                       ood.json, ood_voxel_stats.safetensors,
                                                  segment_thresholds.safetensors, segment.json, ltm.json
               scores/<method>/<set>.csv          one row per scan, appended as each scan finishes
               maps/<method>/<set>/<case>.nii.gz  anomaly maps on the input's native grid
               segment/<variant>/<set>/...        healed image, anomaly map, binary mask
               summary.json  report/index.html

A model bundle (``ldm-ood export``, :mod:`ldm_ood.bundle`) has this layout (the networks, the
configuration and the calibration only) plus ``model.json``; it is read-only: :meth:`RunDir.check_writable`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import ARTIFACTS, Config, changed_fields, invalidated_artifacts, load_config, save_config
from .config.stages import CALIBRATIONS
from .config.stages import STAGES as STAGE_INFO
from .errors import BundleError

STAGES: tuple[str, ...] = tuple(STAGE_INFO)  # config.stages: every trained network of a run
METHODS = ("ldm", "ltm")
#: the file that makes a run-directory layout a model bundle (``ldm_ood.bundle``)
BUNDLE_META = "model.json"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run. Creating the object touches nothing on disk; ``ensure`` makes folders."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # ---- configuration
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def load_config(self) -> Config:
        return load_config(self.config_path)

    def save_config(self, config: Config) -> None:
        """Write ``config.yaml`` atomically (a temporary file, then a rename)."""
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        save_config(config, tmp)
        os.replace(tmp, self.config_path)

    def config_or(self, fallback: Config | None) -> Config:
        """The run's saved config, else ``fallback`` (saved into the run)."""
        if self.config_path.exists():
            return self.load_config()
        if fallback is None:
            raise FileNotFoundError(f"{self.config_path}: run has no config.yaml; pass --config or --preset")
        self.save_config(fallback)
        return fallback

    # ---- trained models
    def stage_dir(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
        return self.root / stage

    def model_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model.safetensors"

    def model_config_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "config.json"

    def state_path(self, stage: str) -> Path:
        """Optimizer / scheduler / epoch state for resume."""
        return self.stage_dir(stage) / "state.pt"

    def metrics_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "metrics.csv"

    def previews_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "previews"

    def done_path(self, stage: str) -> Path:
        """Written when the stage's training has finished."""
        return self.stage_dir(stage) / "DONE"

    def is_trained(self, stage: str) -> bool:
        return self.model_path(stage).exists() and self.done_path(stage).exists()

    # ---- retraining a finished stage (``training.staging``)
    def staging_dir(self, stage: str) -> Path:
        """``<stage>.staging/``: a fresh training of a finished stage writes here until it is swapped in."""
        return self.stage_dir(stage).with_name(f"{stage}.staging")

    def retired_dir(self, stage: str) -> Path:
        """``<stage>.old/``: the previous stage folder, moved aside only for the moment of the swap."""
        return self.stage_dir(stage).with_name(f"{stage}.old")

    def staged(self) -> RunDir:
        """This run as a staged training sees it: every stage folder is its :meth:`staging_dir`."""
        return _StagedRunDir(self.root)

    # ---- calibration
    @property
    def calibration_dir(self) -> Path:
        return self.root / "calibration"

    @property
    def ood_calibration_path(self) -> Path:
        return self.calibration_dir / "ood.json"

    @property
    def ood_voxel_stats_path(self) -> Path:
        return self.calibration_dir / "ood_voxel_stats.safetensors"

    @property
    def segment_thresholds_path(self) -> Path:
        return self.calibration_dir / "segment_thresholds.safetensors"

    @property
    def segment_calibration_path(self) -> Path:
        return self.calibration_dir / "segment.json"

    @property
    def ltm_calibration_path(self) -> Path:
        return self.calibration_dir / "ltm.json"

    def input_domain_path(self, method: str) -> Path:
        """The plausible-input bounds fitted by ``calibrate --method <method>`` (``data.plausibility``)."""
        return self.calibration_dir / f"{method}_input_domain.json"

    def calibration_record_path(self, method: str) -> Path:
        """What ``calibrate --method <method>`` was made from and the sha256 of what it wrote."""
        return self.calibration_dir / f"{method}_record.json"

    def calibration_paths(self, method: str) -> tuple[Path, ...]:
        """The files ``ldm-ood calibrate --method <method>`` writes (``ldm``, ``ltm`` or ``segment``),
        its statistics first; the input domain and the record last."""
        paths = {
            "ldm": (self.ood_calibration_path, self.ood_voxel_stats_path),
            "ltm": (self.ltm_calibration_path,),
            "segment": (self.segment_calibration_path, self.segment_thresholds_path),
        }
        if method not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {method!r}; one of {tuple(CALIBRATIONS)}")
        own = paths.get(method, (self.calibration_json_path(method),))
        return (*own, self.input_domain_path(method), self.calibration_record_path(method))

    def calibration_json_path(self, method: str) -> Path:
        """The statistics a calibration wrote: ``ood.json`` (ldm), ``ltm.json``, ``segment.json``, else
        ``<method>.json`` (the paper 001 baselines: ``{"residual_threshold": ..., ...}``)."""
        return {"ldm": self.ood_calibration_path}.get(method, self.calibration_dir / f"{method}.json")

    # ---- artifacts made from the configuration (``config.ARTIFACTS``)
    def artifact_paths(self, artifact: str) -> tuple[Path, ...]:
        """A stage (``ldm``): its DONE marker; ``calibration/<method>``: that calibration's files."""
        if artifact.startswith("calibration/"):
            return self.calibration_paths(artifact.split("/", 1)[1])
        return (self.done_path(artifact),)

    def finished_artifacts(self) -> list[str]:
        """The artifacts of ``config.ARTIFACTS`` this run has: finished stages and calibrations made."""
        return [a for a in ARTIFACTS if any(p.exists() for p in self.artifact_paths(a))]

    def stale_artifacts(self, old: Config, new: Config) -> dict[str, list[str]]:
        """``{finished artifact: changed fields}`` for the artifacts that were made with ``old``'s value of a
        field that ``new`` changes (see ``config.SECTION_ARTIFACTS``); empty when nothing is stale."""
        finished = self.finished_artifacts()
        return {a: fields for a, fields in invalidated_artifacts(changed_fields(old, new)).items() if a in finished}

    # ---- outputs
    def scores_path(self, method: str, set_name: str) -> Path:
        return self.root / "scores" / method / f"{set_name}.csv"

    def maps_dir(self, method: str, set_name: str) -> Path:
        return self.root / "maps" / method / set_name

    def segment_dir(self, variant: str, set_name: str) -> Path:
        return self.root / "segment" / variant / set_name

    def segment_scores_path(self, variant: str, set_name: str) -> Path:
        return self.root / "segment" / variant / f"{set_name}.csv"

    @property
    def inference_precision_path(self) -> Path:
        """``precision.json``: the precision each scoring network ran in (training's is ``<stage>/precision.json``)."""
        return self.root / "precision.json"

    @property
    def engines_dir(self) -> Path:
        """``engines/``: networks exported to ONNX / OpenVINO IR, keyed by their weights (``ldm_ood.engines.artifacts``)."""
        return self.root / "engines"

    def precision_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "precision.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_path(self) -> Path:
        return self.report_dir / "index.html"

    # ---- a model bundle (``ldm_ood.bundle``): read-only
    @property
    def bundle_meta_path(self) -> Path:
        """``model.json``: only a model bundle exported by ``ldm-ood export`` has it."""
        return self.root / BUNDLE_META

    @property
    def is_bundle(self) -> bool:
        return self.bundle_meta_path.is_file()

    def check_writable(self, command: str) -> None:
        """:class:`~ldm_ood.errors.BundleError` when this is a model bundle, into which ``command``
        (``"calibrate ldm"``, ``"train ldm"``, ...) would write; nothing otherwise."""
        if self.is_bundle:
            raise BundleError(self.root, f"is a model bundle (it has {BUNDLE_META}) and read-only: `{command}` "
                                         f"would write into it. Score a folder with `--model {self.root} --input DIR "
                                         "--output OUT`; calibrate or train in the run directory it was exported "
                                         "from, then export it again")

    def ensure(self, *dirs: Path) -> None:
        for d in (self.root, *dirs):
            d.mkdir(parents=True, exist_ok=True)


class _StagedRunDir(RunDir):
    """:meth:`RunDir.staged`: the same paths, but each ``<stage>/`` is ``<stage>.staging/``."""

    def stage_dir(self, stage: str) -> Path:
        return RunDir(self.root).staging_dir(stage)
