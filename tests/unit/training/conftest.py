"""A tiny NIfTI cohort with a manifest (train / val / test splits) for end-to-end training tests."""

from pathlib import Path

import numpy as np
import pytest

from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest


def write_cohort(folder: Path, n_train: int = 4, n_val: int = 2, grid=(16, 16, 16), seed: int = 0) -> Path:
    """Smooth random HU volumes in [-15, 100] (CT window) -> ``folder/manifest.csv``."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_train + n_val + 1):
        coarse = rng.uniform(-15, 100, size=tuple(g // 4 for g in grid))
        vol = np.kron(coarse, np.ones((4,) * len(grid))).astype(np.float32)
        path = write_image(folder / f"c{i}.nii.gz", vol, np.eye(4))
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        cases.append(Case(case_id=f"c{i}", path=path, set="id", split=split))
    return write_manifest(folder / "manifest.csv", cases)


@pytest.fixture
def cohort(tmp_path) -> Path:
    return write_cohort(tmp_path / "data")
