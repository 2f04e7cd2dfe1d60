"""``ldm-ood export``: write a run's calibrated methods as a model bundle (:mod:`ldm_ood.bundle`).

What goes in, at the run's relative paths:

* the methods that can run (``methods.registry``): their calibration files are present, every network
  their calibration was made with is trained (``config.stages.CALIBRATIONS``), and the calibration
  passes the scoring checks (its files are the recorded ones; no network retrained since:
  ``calibration_files.check_calibration``). A method that fails them is left out with a warning;
* of each network those methods use: ``model.safetensors``, ``config.json`` and ``DONE`` (also of an
  ensemble's members), the weights checked against the sha256 recorded in ``config.json``; resume
  state, metrics, previews and training precision records stay behind;
* ``config.yaml`` (its ``data.manifest``, a path at the training site, cleared: a bundle scores folders);
* ``model.json`` (:func:`describe`), written last.

The bundle is built in a hidden folder beside ``out_dir`` and renamed into place when complete, so
an interrupted export leaves no half bundle. The run's lock is held meanwhile (no training or
calibration changes it under the export).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..artifacts.atomic import atomic_write_text
from ..artifacts.checkpoint import load_model_config
from ..artifacts.integrity import file_sha256
from ..artifacts.lock import run_lock
from ..config import Config
from ..config.stages import CALIBRATIONS, STAGES
from ..errors import BundleError, InputError, IntegrityError, OutputError, StaleArtifactError
from ..methods.registry import METHODS
from ..runs import BUNDLE_META, RunDir
from .format import FORMAT, FORMAT_VERSION, model_id_of, present_files

console = Console(stderr=True)

#: the files of a trained network a bundle carries (``<stage>/`` and an ensemble's member folders)
NETWORK_FILES = ("model.safetensors", "config.json", "DONE")


def network_files(run: RunDir, stage: str) -> list[Path]:
    """The :data:`NETWORK_FILES` below ``<run>/<stage>/`` (an ensemble's members included), sorted."""
    folder = run.stage_dir(stage)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name in NETWORK_FILES) if folder.is_dir() else []


def _why_not_exportable(run: RunDir, method: str) -> str | None:
    """Why ``method`` cannot run from a bundle of ``run`` (None: it can)."""
    from ..methods.calibration_files import check_calibration

    statistics = run.calibration_paths(method)[:-2]
    if not all(p.exists() for p in statistics):
        return "not calibrated"
    for stage in CALIBRATIONS[method].stages:
        names = {p.name for p in network_files(run, stage)}
        if not run.model_config_path(stage).exists() or "model.safetensors" not in names:
            return f"its {stage.replace('_', ' ')} is not trained"
    try:
        check_calibration(run, method)
    except (IntegrityError, StaleArtifactError) as err:
        return str(err)
    return None


def exportable_methods(run: RunDir) -> tuple[list[str], dict[str, str]]:
    """``(methods that can run from a bundle, {method left out: why})``; the second lists only methods
    the run has begun (a calibration file or a trained network), in registry order."""
    methods, left_out = [], {}
    for name in METHODS:
        reason = _why_not_exportable(run, name)
        if reason is None:
            methods.append(name)
        elif any(p.exists() for p in run.calibration_paths(name)) or any(
                run.model_config_path(s).exists() for s in CALIBRATIONS[name].stages):
            left_out[name] = reason
    return methods, left_out


def operating_points(calibration: Mapping[str, Any]) -> dict[str, Any]:
    """The validation ``fpr`` and every ``*threshold`` number of a calibration JSON (per variant
    under ``variants`` for the segmentation's)."""
    out: dict[str, Any] = {k: v for k, v in calibration.items() if (k == "fpr" or k.endswith("threshold"))
                           and isinstance(v, (int, float)) and not isinstance(v, bool)}
    variants = calibration.get("variants")
    if isinstance(variants, Mapping):
        out["variants"] = {name: operating_points(v) for name, v in variants.items() if isinstance(v, Mapping)}
    return out


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def calibration_summary(run: RunDir, method: str) -> dict[str, Any]:
    """``{task, id, n_validation, fpr, ...threshold, [variants]}`` of a method's calibration."""
    record, domain = run.calibration_record_path(method), run.input_domain_path(method)
    return {"task": METHODS[method].task,
            "id": _json(record)["id"] if record.exists() else "",
            "n_validation": _json(domain).get("n") if domain.exists() else None,
            **operating_points(_json(run.calibration_json_path(method)))}


def training_data(cfg: Config) -> dict[str, Any]:
    """What the model was trained on: the preprocessing (grid, spacing, orientation, intensity window)
    and the manifest's cases per split (None when the manifest is not readable at export)."""
    data = cfg.data
    counts = None
    if data.manifest is not None:
        from ..data.manifest import read_manifest

        try:
            counts = dict(Counter(c.split or "none" for c in read_manifest(data.manifest, check_files=False)))
        except (InputError, OSError) as err:
            console.print(f"[yellow]warning: training data summary without case counts: {escape(str(err))}")
    return {"spatial_dims": data.spatial_dims, "grid": list(data.grid),
            "spacing": None if data.spacing is None else list(data.spacing), "orientation": data.orientation,
            "modality": data.modality, "intensity_window": list(data.ct_window) if data.modality == "ct" else None,
            "cases_per_split": counts}


def benchmark_aucs(run: RunDir) -> dict[str, Any] | None:
    """The run's rows of ``summary.json`` (``ldm-ood evaluate``): ``{"detection_auroc": {method: {set:
    AUROC}}, "segmentation": {variant: {set: {image_auroc, pixel_auprc, best_dice}}}}``; None without one."""
    from ..evaluation.summary import Summary

    if not run.summary_path.exists():
        return None
    try:
        summary = Summary.load(run.summary_path)
    except (ValueError, TypeError, KeyError) as err:
        console.print(f"[yellow]warning: {escape(str(run.summary_path))}: not readable ({escape(str(err))}); "
                      "the bundle has no benchmark AUCs")
        return None
    names = {n for n, p in summary.runs.items() if Path(p).resolve() == run.root.resolve()}
    names = names or (set(summary.runs) if len(summary.runs) == 1 else set())
    detection: dict[str, dict[str, float | None]] = {}
    for d in summary.detection:
        if d.run in names:
            detection.setdefault(d.method, {})[d.set] = d.auroc
    segmentation: dict[str, dict[str, dict[str, float | None]]] = {}
    for s in summary.segmentation:
        if s.run in names:
            segmentation.setdefault(s.variant, {})[s.set] = {"image_auroc": s.image_auroc,
                                                             "pixel_auprc": s.pixel_auprc, "best_dice": s.best_dice}
    return {"detection_auroc": detection, "segmentation": segmentation}


def _versions() -> dict[str, str]:
    import monai
    import torch

    return {"ldm_ood": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version()}


def describe(run: RunDir, cfg: Config, methods: Sequence[str], stages: Sequence[str], files: Mapping[str, str]
             ) -> dict[str, Any]:
    """``model.json`` of a bundle of ``methods`` (and their ``stages``) exported from ``run``, whose
    files are ``{relative path: sha256}``."""
    from ..models.loading import stage_sha256

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id_of(files),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "source_run": run.root.name,
        "preset": cfg.preset,
        "methods": list(methods),
        "networks": {s: {"weights_sha256": stage_sha256(run, s), "finished": run.done_path(s).exists()}
                     for s in stages},
        "training_data": training_data(cfg),
        "calibrations": {m: calibration_summary(run, m) for m in methods},
        "benchmark": benchmark_aucs(run),
        "files": dict(sorted(files.items())),
    }


def _copy_network_file(src: Path, dst: Path) -> None:
    """Copy one network file; weights whose copy does not have the sha256 recorded in their
    ``config.json`` are refused (:class:`IntegrityError` naming the run's file)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if src.name != "model.safetensors":
        return
    recorded = load_model_config(src.parent).get("weights_sha256")
    if recorded is not None and file_sha256(dst) != recorded:
        raise IntegrityError(src, f"its sha256 differs from the one recorded in {src.parent / 'config.json'} when it "
                                  "was trained: the file was changed or corrupted; retrain the stage")


def _check_destination(out: Path, run: RunDir) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(out, "exists and is not an empty folder; export into a new folder")
    if out.resolve().is_relative_to(run.root.resolve()):
        raise OutputError(out, f"lies inside the run {run.root}; export the bundle outside it")


def export_bundle(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Export the run at ``run_dir`` as a model bundle in ``out_dir`` (a new or empty folder); returns
    ``out_dir``. See the module docstring for what goes in. :class:`~ldm_ood.errors.BundleError` when
    the run has no method that can run from a bundle, or is itself a bundle; ``OutputError`` when
    ``out_dir`` is not empty."""
    run, out = RunDir(run_dir), Path(out_dir)
    if run.is_bundle:
        raise BundleError(run.root, "is already a model bundle: copy the folder as it is")
    if not run.config_path.exists():
        raise FileNotFoundError(f"{run.config_path}: not a run directory (no config.yaml)")
    _check_destination(out, run)
    with run_lock(run.root, "export"):
        methods, left_out = exportable_methods(run)
        for name, reason in left_out.items():
            console.print(f"[yellow]warning: method {name} is left out of the bundle: {escape(reason)}")
        if not methods:
            raise BundleError(run.root, "has no method to export: calibrate one first (`ldm-ood calibrate --run "
                                        f"{run.root} --method ldm`)")
        stages = [s for s in STAGES if any(s in CALIBRATIONS[m].stages for m in methods)]
        for stage in stages:
            if not run.done_path(stage).exists():
                console.print(f"[yellow]warning: {escape(str(run.stage_dir(stage)))}: its training has not finished "
                              "(no DONE); the bundle carries its best checkpoint so far")
        staging = out.parent / f".{out.name}.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _fill(run, RunDir(staging), methods, stages)
            files = {rel: file_sha256(staging / rel) for rel in sorted(present_files(staging))}
            meta = describe(run, run.load_config(), methods, stages, files)
            atomic_write_text(staging / BUNDLE_META, json.dumps(meta, indent=2, allow_nan=False))
            if out.exists():
                out.rmdir()
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    console.print(f"bundle {meta['model_id']} ({', '.join(methods)}): {out}")
    return out


def _fill(run: RunDir, bundle: RunDir, methods: Sequence[str], stages: Sequence[str]) -> None:
    """Copy the networks of ``stages`` and the calibrations of ``methods`` from ``run`` into ``bundle``
    and write its ``config.yaml`` (without the training manifest)."""
    for stage in stages:
        for src in network_files(run, stage):
            _copy_network_file(src, bundle.root / src.relative_to(run.root))
    bundle.ensure(bundle.calibration_dir)
    for method in methods:
        for src in run.calibration_paths(method):
            if src.exists():
                shutil.copyfile(src, bundle.calibration_dir / src.name)
    cfg = run.load_config()
    cfg.data.manifest = None
    bundle.save_config(cfg)
