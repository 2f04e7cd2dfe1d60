"""Preprocessing of paper 000 §3.1 as invertible MONAI transforms.

Every scan goes through the same steps before any model sees it:

1. read and validate (:func:`ldm_ood.data.scans.read_scan`: an image file by
   :func:`ldm_ood.data.io.read_image`, a DICOM series by :func:`ldm_ood.data.dicom.read_series`
   with its RAS affine; unreadable / NaN / empty / wrong dims raise
   :class:`~ldm_ood.errors.InputError` naming the file or series);
2. reorient to ``cfg.orientation`` (RAS; ``RA`` for 2D) with MONAI ``Orientation``;
3. intensity: CT clamps to ``cfg.ct_window`` ([-15, 100] HU) and rescales to [0, 1]
   (``ScaleIntensityRange(clip=True)``); other modalities are min–max rescaled to [0, 1]
   (``ScaleIntensity``). This runs *before* the spatial resampling so that padding and
   out-of-field voxels are 0 = air / background, as in the paper's zero padding;
4. resample to ``cfg.spacing`` mm with MONAI ``Spacing`` (bilinear, zeros outside) if set;
5. centre crop / zero pad to ``cfg.grid`` with MONAI ``ResizeWithPadOrCrop``;
6. plausibility measures of the result (:func:`.plausibility.input_stats`: grid coverage, extent,
   foreground, saturation), kept in ``PreprocessMeta.stats`` for the input QC of scoring.

:meth:`Preprocessor.invert` brings an array on the grid (an anomaly map, a healed image) back onto
the input's native grid and affine by MONAI's invertible-transform machinery (``Compose.inverse``
on a ``MetaTensor`` carrying the applied operations). Intensity steps are not inverted (maps keep
their own units). Voxels cropped away by step 5 come back as 0.

Shapes: ``load`` returns ``(1, *grid)`` float32; ``invert`` takes ``grid`` (or ``(1, *grid)``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientation, ResizeWithPadOrCrop, ScaleIntensity, ScaleIntensityRange, Spacing

from ..config import DataConfig
from ..errors import InputError
from .io import Image
from .plausibility import InputStats, input_stats
from .scans import ScanSource, read_scan


@dataclass
class PreprocessMeta:
    """What :meth:`Preprocessor.invert` needs to map a grid array back to the input.

    ``input_shape``/``input_affine``: the file's voxel grid; ``grid_affine``: voxel-to-world of the
    preprocessed array; ``operations``: MONAI's applied-operation records; ``stats``: how plausible
    the scan is as an input of the trained kind (:mod:`.plausibility`).
    """

    path: Path | None
    input_shape: tuple[int, ...]
    input_affine: np.ndarray
    grid_affine: np.ndarray
    operations: list[dict[str, Any]] = field(default_factory=list)
    stats: InputStats | None = None


def _as_affine_nd(affine: np.ndarray, spatial_dims: int) -> np.ndarray:
    """The (d+1)×(d+1) affine of the first ``spatial_dims`` axes of a 4×4 affine."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape == (spatial_dims + 1, spatial_dims + 1):
        return affine
    out = np.eye(spatial_dims + 1)
    out[:spatial_dims, :spatial_dims] = affine[:spatial_dims, :spatial_dims]
    out[:spatial_dims, spatial_dims] = affine[:spatial_dims, 3]
    return out


class Preprocessor:
    """Paper 000 §3.1 preprocessing for one :class:`~ldm_ood.config.DataConfig`.

    >>> pre = Preprocessor(load_config(preset="tiny").data)       # doctest: +SKIP
    >>> x, meta = pre.load("scan.nii.gz")                         # x: (1, 16, 16, 16) in [0, 1]
    >>> img = pre.invert(anomaly_map, meta)                       # img.array: scan's shape, affine
    """

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        d = cfg.spatial_dims
        if cfg.modality == "ct":
            lo, hi = cfg.ct_window
            intensity = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
        else:
            intensity = ScaleIntensity(minv=0.0, maxv=1.0)
        steps: list[Any] = [Orientation(axcodes=cfg.orientation[:d], labels=None), intensity]
        if cfg.spacing is not None:
            steps.append(Spacing(pixdim=tuple(cfg.spacing), mode="bilinear", padding_mode="zeros"))
        steps.append(ResizeWithPadOrCrop(spatial_size=tuple(cfg.grid), mode="constant", value=0.0))
        self.transform = Compose(steps)

    # ------------------------------------------------------------------ forward
    def apply(self, image: Image) -> tuple[torch.Tensor, PreprocessMeta]:
        """Preprocess an already-read :class:`Image` (array ``(*spatial)``) to ``(1, *grid)``."""
        d = self.cfg.spatial_dims
        if image.array.ndim != d:
            raise InputError(image.path, f"expected a {d}D image, got shape {image.array.shape}")
        mt = MetaTensor(
            torch.as_tensor(np.ascontiguousarray(image.array), dtype=torch.float32)[None],
            affine=torch.as_tensor(_as_affine_nd(image.affine, d), dtype=torch.float64),
        )
        out = self.transform(mt)
        if tuple(out.shape[1:]) != tuple(self.cfg.grid):  # defensive: MONAI always gives the grid
            raise InputError(image.path, f"preprocessed shape {tuple(out.shape[1:])} != grid {self.cfg.grid}")
        meta = PreprocessMeta(
            path=image.path,
            input_shape=tuple(int(s) for s in image.array.shape),
            input_affine=np.asarray(image.affine, dtype=np.float64),
            grid_affine=np.asarray(out.affine, dtype=np.float64),
            operations=copy.deepcopy(out.applied_operations),
        )
        x = out.as_tensor().to(torch.float32).contiguous()
        meta.stats = input_stats(x, out.applied_operations[-1]["orig_size"], self.cfg.grid)
        return x, meta

    def load(self, source: ScanSource) -> tuple[torch.Tensor, PreprocessMeta]:
        """Read, validate and preprocess ``source`` (an image file, a DICOM series or a folder holding
        one: :func:`~.scans.read_scan`). Returns ``(x (1, *grid) float32 in [0, 1], meta)``."""
        image = read_scan(source, spatial_dims=self.cfg.spatial_dims)
        return self.apply(image)

    # ------------------------------------------------------------------ inverse
    def invert(self, array: np.ndarray | torch.Tensor, meta: PreprocessMeta) -> Image:
        """Map ``array`` (``grid`` or ``(1, *grid)``) back to the input's voxel grid and affine.

        Returns an :class:`Image` whose ``array`` has ``meta.input_shape`` and whose ``affine`` is
        ``meta.input_affine`` (ready for :func:`ldm_ood.data.io.write_image`).
        """
        t = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array.detach().cpu())
        t = t.to(torch.float32)
        if t.ndim == self.cfg.spatial_dims:
            t = t[None]
        if tuple(t.shape[1:]) != tuple(self.cfg.grid) or t.shape[0] != 1:
            raise InputError(meta.path, f"array to invert has shape {tuple(t.shape)}, expected grid {self.cfg.grid}")
        mt = MetaTensor(t, affine=torch.as_tensor(meta.grid_affine))
        mt.applied_operations = copy.deepcopy(meta.operations)
        inv = self.transform.inverse(mt)
        out = inv.as_tensor()[0].numpy().astype(np.float32)
        if out.shape != meta.input_shape:  # pragma: no cover - would be a MONAI bug
            raise RuntimeError(f"{meta.path}: inverse gave shape {out.shape}, expected {meta.input_shape}")
        return Image(array=out, affine=meta.input_affine.copy(), path=meta.path)


def to_unit_range_ct(hu: np.ndarray, window: tuple[float, float] = (-15.0, 100.0)) -> np.ndarray:
    """Paper 000 §3.1 CT intensity step as a plain function: clamp to ``window`` then rescale to [0, 1]."""
    lo, hi = window
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def from_unit_range_ct(x: np.ndarray, window: tuple[float, float] = (-15.0, 100.0)) -> np.ndarray:
    """Inverse of :func:`to_unit_range_ct` on [0, 1] data: ``lo + x (hi - lo)`` HU.

    Used to store data defined on the preprocessed [0, 1] scale (corruptions, non-CT far-OOD
    classes) as Hounsfield-equivalent files that the CT preprocessing maps back exactly.
    """
    lo, hi = window
    return (lo + np.asarray(x, dtype=np.float64) * (hi - lo)).astype(np.float32)
