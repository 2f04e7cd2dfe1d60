"""ldm-ood: OOD detection and anomaly segmentation of 2D/3D medical images with latent diffusion models.

The library functions behind every CLI command, importable from the top level (loaded on first use)::

    import ldm_ood
    ldm_ood.synth("cpu", "data/")                                   # ldm-ood synth
    ldm_ood.train("runs/l2", "first_stage", preset="cpu", manifest="data/manifest.csv")
    ldm_ood.train("runs/l2", "ldm")                                  # ldm-ood train ldm
    ldm_ood.calibrate_ldm("runs/l2")                                 # ldm-ood calibrate
    ldm_ood.score_ldm("runs/l2", input_dir="new/", output_dir="out/")  # ldm-ood score
    ldm_ood.read_series("dicom/series1/")                            # one DICOM series -> Image (RAS affine)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "ldm_ood.config",
    "RunDir": "ldm_ood.runs",
    "synth": "ldm_ood.synthetic.cohort",
    "corrupt_folder": "ldm_ood.data.corruptions",
    "find_series": "ldm_ood.data.dicom",
    "read_series": "ldm_ood.data.dicom",
    "train": "ldm_ood.training.api",
    "calibrate_ldm": "ldm_ood.methods.ldm.pipeline",
    "score_ldm": "ldm_ood.methods.ldm.pipeline",
    "calibrate_ltm": "ldm_ood.methods.ltm.pipeline",
    "score_ltm": "ldm_ood.methods.ltm.pipeline",
    "calibrate_segment": "ldm_ood.methods.segment.pipeline",
    "segment": "ldm_ood.methods.segment.pipeline",
    "evaluate": "ldm_ood.evaluation.evaluate",
    "build_report": "ldm_ood.report.html",
    "run_benchmark": "ldm_ood.benchmark",
    "export_bundle": "ldm_ood.bundle",
    "open_bundle": "ldm_ood.bundle",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ldm_ood' has no attribute {name!r}")
