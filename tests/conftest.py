"""Shared fixtures (keep small): a seeded generator, a tiny RAS head-like volume, one torch thread.

The precision self-check's machine cache (``precision_policy.cache_path``) goes to a folder of the
test session, never to the user's ``~/.cache``.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

os.environ["LDM_OOD_CACHE_DIR"] = tempfile.mkdtemp(prefix="ldm-ood-test-cache-")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def tiny_head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image (20, 24, 22) in [0, 1], affine (RAS, 2 mm), brain mask)``: an ellipsoidal "head" with
    scalp 0.4, a bone shell 1.0 and a brain 0.3–0.5, air 0 outside."""
    shape = (20, 24, 22)
    ii, jj, kk = np.indices(shape, dtype=float)
    r = np.sqrt(((ii - 9.5) / 8) ** 2 + ((jj - 11.5) / 10) ** 2 + ((kk - 10.5) / 9) ** 2)
    img = np.zeros(shape, np.float32)
    img[r <= 1.0] = 0.4
    img[r <= 0.9] = 1.0
    brain = r <= 0.75
    img[brain] = (0.3 + 0.2 * (kk[brain] / shape[2])).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-19, -23, -21)
    return img, affine, brain


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin contention on a shared CPU.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
