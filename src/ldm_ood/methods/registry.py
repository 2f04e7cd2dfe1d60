"""Every scoring method the project has, one line each: the CLI, the benchmark and ``evaluate`` read
this table, so a new method is its folder under :mod:`ldm_ood.methods` plus one :class:`MethodInfo`.

Import-light on purpose (no torch): the CLI builds its ``--method`` choices from it, and evaluation
reads its score columns from it. The functions are imported on first use (:meth:`MethodInfo.calibrate`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..errors import ConfigError

Task = Literal["detection", "segmentation"]


@dataclass(frozen=True)
class MethodInfo:
    """One scoring method.

    ``name``: its key everywhere (``--method``, ``scores/<name>/``, the API's ``calibrate_<name>``);
    ``task``: ``detection`` (a score per scan, evaluated by AUROC per OOD set; paper 000) or
    ``segmentation`` (a map and mask per image, evaluated by Dice and AUPRC; paper 001);
    ``module``: where ``calibrate_fn`` and ``score_fn`` live (the trained stages its calibration is made
    with are ``config.stages.CALIBRATIONS[name].stages``); ``score_options``: the extra keyword
    options its scoring function takes beyond ``manifest, sets, input_dir, output_dir`` (the CLI
    refuses the others); ``columns``: detection methods' evaluated score columns, ``{summary method:
    (CSV column, label)}``, the first being the method's own ``pred_score``; ``reference_keys``: the keys of
    its calibration JSON (``RunDir.calibration_json_path``) holding the validation image scores (a list, or
    a mapping case → score) and the image-level threshold (None: it has none), read by
    :mod:`.operating_point`; ``prepare_fn``: a detection
    method's ``prepare_<name>(run_dir, ...) -> PreparedScoring`` (what ``ScoringSession`` and ``serve`` load once).
    """

    name: str
    task: Task
    paper: str
    description: str
    module: str
    calibrate_fn: str
    score_fn: str
    score_options: tuple[str, ...] = ()
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)
    reference_keys: tuple[str, str | None] = ("val_scores", "score_threshold")
    prepare_fn: str = ""

    def calibrate(self) -> Callable[..., Any]:
        """``calibrate_<name>(run_dir, manifest=None, ...) -> CalibrationResult``."""
        return getattr(importlib.import_module(self.module), self.calibrate_fn)

    def score(self) -> Callable[..., Any]:
        """``score_<name>(run_dir, manifest=None, sets=None, input_dir=None, output_dir=None, ...) -> RunResult``."""
        return getattr(importlib.import_module(self.module), self.score_fn)

    def prepare(self) -> Callable[..., Any]:
        """``prepare_<name>(run_dir, ..., record_precision=True) -> PreparedScoring``; ``ConfigError`` for a
        method that cannot score one scan at a time (the segmentation methods)."""
        if not self.prepare_fn:
            scorable = ", ".join(m.name for m in METHODS.values() if m.prepare_fn)
            raise ConfigError(f"method {self.name!r} cannot be served; the detection methods can: {scorable}")
        return getattr(importlib.import_module(self.module), self.prepare_fn)


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("ldm", "detection", "000", "latent diffusion reconstructions, MSE + LPIPS z-scored (Graham et al. 2023)",
               "ldm_ood.methods.ldm.pipeline", "calibrate_ldm", "score_ldm", score_options=("sequential",),
               columns={"ldm": ("pred_score", "LDM"), "ldm_mse": ("score_mse", "LDM (MSE)"),
                        "ldm_lpips": ("score_lpips", "LDM (LPIPS)"),
                        "ldm_one_sided": ("signed_score", "LDM one-sided (paper)")}, reference_keys=("val_scores", "threshold"),
               prepare_fn="prepare_ldm"),
    MethodInfo("ltm", "detection", "000", "latent transformer likelihood baseline (Graham et al. 2023 §3.3)",
               "ldm_ood.methods.ltm.pipeline", "calibrate_ltm", "score_ltm",
               columns={"ltm": ("pred_score", "LTM")}, reference_keys=("values", "threshold"), prepare_fn="prepare_ltm"),
    MethodInfo("segment", "segmentation", "001", "KL-masked latent healing (Pinaya et al. 2022), variants a-d",
               "ldm_ood.methods.segment.pipeline", "calibrate_segment", "segment", score_options=("variant",),
               reference_keys=("val_scores", None)),
    MethodInfo("fanogan", "segmentation", "001", "f-AnoGAN baseline: WGAN-GP + izi_f encoder, residual |x - G(E(x))| "
               "(Schlegl et al. 2019)", "ldm_ood.methods.fanogan.pipeline", "calibrate_fanogan", "segment_fanogan"),
    MethodInfo("ae", "segmentation", "001",
               "AE (spatial bottleneck) baseline: median-filtered |x - x̂|, mean of its top-k values (Baur et al. 2021)",
               "ldm_ood.methods.autoencoder.pipeline", "calibrate_ae", "segment_ae"),
    MethodInfo("vae", "segmentation", "001",
               "VAE (dense latent) baseline: as ae, decoding the posterior mean (Baur et al. 2021)",
               "ldm_ood.methods.autoencoder.pipeline", "calibrate_vae", "segment_vae"),
    MethodInfo("transformer", "segmentation", "001", "unlikely tokens resampled by the latent transformer (Pinaya et al. 2021)",
               "ldm_ood.methods.transformer_heal.pipeline", "calibrate_transformer", "segment_transformer",
               reference_keys=("val_scores", "image_threshold")),
    MethodInfo("ensemble", "segmentation", "001", "tokens resampled by an ensemble of 8 latent transformers "
               "(Pinaya et al. 2021)", "ldm_ood.methods.transformer_heal.pipeline", "calibrate_ensemble",
               "segment_ensemble", reference_keys=("val_scores", "image_threshold")),
)}


def method(name: str) -> MethodInfo:
    """The registered method ``name``; ``ConfigError`` naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def detection_methods() -> list[MethodInfo]:
    """The detection methods, in registry order (what ``evaluate`` computes AUROCs for)."""
    return [m for m in METHODS.values() if m.task == "detection"]


def detection_columns() -> dict[str, tuple[str, str]]:
    """``{summary method: (score folder, CSV column)}`` over every detection method."""
    return {key: (m.name, column) for m in detection_methods() for key, (column, _) in m.columns.items()}


def method_labels() -> dict[str, str]:
    """``{summary method: label}`` (``ldm_mse`` → ``LDM (MSE)``) over every detection method."""
    return {key: label for m in detection_methods() for key, (_, label) in m.columns.items()}
