"""The voxels a localised near-OOD corruption removes: a ground truth for anomaly maps.

``chunk_top``, ``chunk_middle`` and ``skull_stripped`` (:data:`REGION_KINDS`) remove tissue from one place
(:mod:`.corruptions`), so the voxels they change score maps in ``evaluation.localisation``. Noise, scaling
and flips change every voxel of the head and have no region; ``background_<v>`` changes the air outside
the head and is left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .corruptions import brain_mask_heuristic, chunk_slices

#: corruptions that remove tissue from a known region (:func:`corruption_region`)
REGION_KINDS: tuple[str, ...] = ("chunk_top", "chunk_middle", "skull_stripped")


def corruption_region(
    image: np.ndarray, affine: np.ndarray, kind: str, brain_mask: np.ndarray | None = None,
) -> np.ndarray:
    """The voxels that corruption ``kind`` (one of :data:`REGION_KINDS`) removes from ``image``.

    ``chunk_top`` / ``chunk_middle``: the slab of :func:`chunk_slices` where ``image`` holds tissue
    (``> 0``; zeroing a background voxel changes nothing); ``skull_stripped``: the tissue outside the
    brain (``brain_mask``, else :func:`brain_mask_heuristic`). Same arguments as :func:`corrupt_array`,
    same image; it is exactly ``corrupt_array(image, ...) != image``.

    Args:
        image: ``(*spatial)`` preprocessed image in [0, 1], the uncorrupted scan.
    Returns a boolean array of ``image``'s shape. Raises ``ValueError`` for a kind without a region.
    """
    x = np.asarray(image, dtype=np.float32)
    tissue = x != 0
    if kind in ("chunk_top", "chunk_middle"):
        axis, sl = chunk_slices(kind, x, affine)
        slab = np.zeros(x.shape, dtype=bool)
        index: list[Any] = [slice(None)] * x.ndim
        index[axis] = sl
        slab[tuple(index)] = True
        return slab & tissue
    if kind == "skull_stripped":
        brain = brain_mask_heuristic(x, affine) if brain_mask is None else np.asarray(brain_mask, dtype=bool)
        if brain.shape != x.shape:
            raise ValueError(f"brain mask shape {brain.shape} differs from image shape {x.shape}")
        return ~brain & tissue
    raise ValueError(f"corruption {kind!r} has no localised region; only {', '.join(REGION_KINDS)} have one")
