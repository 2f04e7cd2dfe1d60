"""A calibrated tiny 2D run (``tiny_runs.build_tiny_2d_run``: random networks saved as trained ones),
its LDM and variant-c segmentation calibrated on the 3 validation slices, and its bundle, built once."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny_runs import build_tiny_2d_run

from ldm_ood.bundle import export_bundle
from ldm_ood.methods.ldm.pipeline import calibrate_ldm
from ldm_ood.methods.segment.pipeline import calibrate_segment
from ldm_ood.runs import RunDir


@dataclass(frozen=True)
class Exported:
    run: RunDir
    bundle: Path
    scans: Path  # a folder of 2 good slices


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("bundle")
        run, folder = build_tiny_2d_run(root)
        calibrate_ldm(run.root, progress=False, device="cpu")
        calibrate_segment(run.root, variants=["c"], device="cpu")
        scans = root / "scans"
        scans.mkdir()
        for name in ("f0.nii.gz", "f1.nii.gz"):
            shutil.copyfile(folder / name, scans / name)
        return Exported(run, export_bundle(run.root, root / "model"), scans)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def bundle_copy(exported, tmp_path) -> Path:
    """A private copy of the bundle, to tamper with."""
    return Path(shutil.copytree(exported.bundle, tmp_path / "model"))
