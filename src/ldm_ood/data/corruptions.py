"""Near-OOD corruptions of paper 000 §3.1 and the sprite lesions of paper 001 §4.1.

All corruptions act on *preprocessed* images (intensities in [0, 1], background 0) and take the
voxel-to-world ``affine`` so that "left–right", "anterior–posterior", "inferior–superior" and "top"
mean the anatomical directions whatever the array's axis order. Kinds (the set names, in the row
order of paper 000 Table 1 — 14 rows, see :data:`NEAR_OOD_KINDS`):

``noise_<σ>``       add i.i.d. Gaussian noise N(0, σ²) to every voxel, then clip to [0, 1] (the
                    corrupted image stays a valid preprocessed image: the CT window clamp would clip
                    it on reloading anyway). ``clip=False`` keeps the raw sum.
``background_<v>``  set every voxel outside the head to ``v``; the head is :func:`head_mask` (largest
                    connected component of voxels > 0, holes filled in 3D and slice by slice).
``flip_lr|ap|is``   reverse the array axis that the affine maps to the world L–R / A–P / I–S axis.
``chunk_top``       zero ``CHUNK_FRACTION`` (15 %) of the I–S extent of the array, as adjacent axial
                    slices, starting at the most superior slice that contains head and going down.
``chunk_middle``    the same number of slices, centred on the middle of the volume along I–S.
``skull_stripped``  zero everything outside the brain: ``brain_mask`` when given (the synthetic
                    cohort ships one), else :func:`brain_mask_heuristic`.
``scale_<f>``       multiply every voxel by ``f`` (1 % / 10 % intensity-scaling error).

**Known regions** (:mod:`.corruption_regions`): ``chunk_top``, ``chunk_middle``
and ``skull_stripped`` remove tissue from one place, so the voxels they change are a ground truth for
anomaly maps (evaluation.localisation). Noise, scaling and flips change every voxel of the head and
have no region; ``background_<v>`` changes the air outside the head (its "region" is the complement
of the head, not a localised anomaly) and is left out.

Two more kinds, beyond the paper's table (:data:`SIMPLER_KINDS`), make inputs *simpler* than the
training scans: a reconstruction-based (or likelihood-based) detector tends to find them *more*
normal than in-distribution scans (Serrà et al. 2020), which a one-sided score cannot flag.

``smoothed``        Gaussian blur of the whole image, σ = :data:`SMOOTH_SIGMA_VOXELS` (1 voxel) per
                    array axis, as a soft reconstruction kernel would give (moderate: edges and
                    texture soften, anatomy stays recognisable; values stay in [0, 1]).
``fov_emptied``     a too-small reconstruction field of view: every voxel outside a cylinder along
                    I–S (a disc in 2D), centred on the head's in-plane centroid, with radius
                    :data:`FOV_RADIUS_FRACTION` (0.85) of the head's equivalent in-plane radius
                    (√(largest axial head area / π)), is set to background 0. Moderate: it removes the
                    scalp and skull at the widest slices (≈ 28 % of the largest axial head area) and
                    keeps the brain.

Randomness only comes from the ``rng`` / ``seed`` arguments (no global seeding).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from nibabel.orientations import io_orientation
from scipy import ndimage as ndi

from ..errors import BatchFailures, InputError
from .io import IMAGE_SUFFIXES, case_id_of, read_image, read_mask, suffix_of, write_image
from .transforms import from_unit_range_ct, to_unit_range_ct

#: paper 000 Table 1 near-OOD rows, in table order (the text's "15 per case" lists these 14)
NEAR_OOD_KINDS: tuple[str, ...] = (
    "noise_0.01", "noise_0.1", "noise_0.2",
    "background_0.3", "background_0.6", "background_1.0",
    "flip_lr", "flip_ap", "flip_is",
    "chunk_top", "chunk_middle",
    "skull_stripped",
    "scale_0.01", "scale_0.1",
)
#: corruptions beyond paper 000's table whose result is *simpler* than an ID scan (smoother, less tissue)
SIMPLER_KINDS: tuple[str, ...] = ("smoothed", "fov_emptied")
#: every fixed-name corruption ``ldm-ood synth`` writes as a near-OOD set (the paper's 14, then these)
CORRUPTION_KINDS: tuple[str, ...] = NEAR_OOD_KINDS + SIMPLER_KINDS
#: σ of ``smoothed`` in voxels of the array it is applied to
SMOOTH_SIGMA_VOXELS = 1.0
#: radius of the field of view kept by ``fov_emptied``, as a fraction of the head's equivalent in-plane radius
FOV_RADIUS_FRACTION = 0.85
#: fraction of the array's I–S length removed by ``chunk_top`` / ``chunk_middle``
CHUNK_FRACTION = 0.15
#: voxels at or above this preprocessed intensity are bone for the skull-strip heuristic (100 HU)
BONE_THRESHOLD = 0.99
_WORLD_AXIS = {"lr": 0, "ap": 1, "is": 2}


# --------------------------------------------------------------------------- geometry
def anatomical_axis(affine: np.ndarray, ndim: int, world_axis: int) -> tuple[int, int]:
    """``(array_axis, sign)``: which array axis the affine maps to world axis ``world_axis``
    (0 = L→R, 1 = P→A, 2 = I→S in RAS world) and whether index increases (+1) towards R/A/S.

    Raises ``ValueError`` when no array axis maps to it (e.g. I–S of an axial 2D slice).
    """
    affine = np.asarray(affine, dtype=np.float64)
    cols = [*range(ndim), affine.shape[1] - 1]
    ornt = io_orientation(affine[:, cols])
    for ax in range(ndim):
        if not np.isnan(ornt[ax, 0]) and int(ornt[ax, 0]) == world_axis:
            return ax, int(ornt[ax, 1])
    raise ValueError(f"no array axis of this {ndim}D image maps to world axis {'RAS'[world_axis]}")


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.moveaxis(mask.copy(), axis, 0)
    for i in range(out.shape[0]):
        out[i] = ndi.binary_fill_holes(out[i])
    return np.moveaxis(out, 0, axis)


def head_mask(image: np.ndarray, affine: np.ndarray | None = None, threshold: float = 0.0) -> np.ndarray:
    """The head (foreground) of a preprocessed image: largest connected component of
    ``image > threshold`` with enclosed holes filled in 3D and then in every axial slice
    (axial = perpendicular to the affine's I–S axis; the last axis without an affine)."""
    fg = _largest_component(np.asarray(image) > threshold)
    fg = ndi.binary_fill_holes(fg)
    if fg.ndim == 3:
        axis = 2 if affine is None else anatomical_axis(affine, 3, 2)[0]
        fg = _fill_slices(fg, axis)
    return fg


def brain_mask_heuristic(image: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
    """Brain of a preprocessed head CT without a mask: bone = voxels ≥ :data:`BONE_THRESHOLD`
    (≥ 100 HU); the region enclosed by bone in each axial slice, minus the bone dilated by one
    voxel, inside the head; its largest connected component. Raises ``ValueError`` if empty."""
    image = np.asarray(image)
    bone = image >= BONE_THRESHOLD
    if image.ndim == 3:
        inside = _fill_slices(bone, 2 if affine is None else anatomical_axis(affine, 3, 2)[0])
    else:
        inside = ndi.binary_fill_holes(bone)
    brain = inside & ~ndi.binary_dilation(bone) & head_mask(image, affine) & (image > 0)
    if not brain.any():
        raise ValueError("skull-strip heuristic found no brain (no closed bone ring ≥ 100 HU)")
    return _largest_component(brain)


def chunk_slices(kind: str, image: np.ndarray, affine: np.ndarray) -> tuple[int, slice]:
    """``(array_axis, slice)`` of the slab zeroed by ``chunk_top`` / ``chunk_middle``."""
    axis, sign = anatomical_axis(affine, image.ndim, 2)
    n = image.shape[axis]
    k = max(1, int(round(CHUNK_FRACTION * n)))
    if kind == "chunk_middle":
        start = (n - k) // 2
        return axis, slice(start, start + k)
    other = tuple(a for a in range(image.ndim) if a != axis)
    rows = np.flatnonzero(head_mask(image, affine).any(axis=other))
    if rows.size == 0:
        raise ValueError("chunk_top: image has no foreground")
    if sign > 0:  # index increases towards superior: the top is the largest head index
        top = int(rows.max())
        return axis, slice(max(0, top - k + 1), top + 1)
    top = int(rows.min())
    return axis, slice(top, min(n, top + k))


def emptied_fov_mask(image: np.ndarray, affine: np.ndarray, radius_fraction: float = FOV_RADIUS_FRACTION) -> np.ndarray:
    """Boolean ``(*spatial)`` mask of the voxels ``fov_emptied`` sets to 0: outside the cylinder (3D, its
    axis along I–S) or disc (2D) centred on the head's in-plane centroid, of radius ``radius_fraction``
    × √(largest axial head area / π) in voxels of the in-plane axes. Raises ``ValueError`` for an image
    without foreground."""
    x = np.asarray(image)
    head = head_mask(x, affine)
    if not head.any():
        raise ValueError("fov_emptied: image has no foreground")
    axis = anatomical_axis(affine, 3, 2)[0] if x.ndim == 3 else None
    planes = np.moveaxis(head, axis, 0) if axis is not None else head[None]
    area = float(planes.reshape(planes.shape[0], -1).sum(axis=1).max())
    radius = radius_fraction * np.sqrt(area / np.pi)
    centre = np.argwhere(planes.any(axis=0)).mean(axis=0)  # of the head's projection along I–S
    grids = np.meshgrid(*(np.arange(n) for n in planes.shape[1:]), indexing="ij")
    outside = sum((g - c) ** 2 for g, c in zip(grids, centre)) > radius ** 2
    outside = np.broadcast_to(outside, planes.shape)
    return np.moveaxis(outside, 0, axis).copy() if axis is not None else outside[0].copy()


# --------------------------------------------------------------------------- corruptions
def corrupt_array(
    image: np.ndarray,
    affine: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    brain_mask: np.ndarray | None = None,
    clip: bool = True,
) -> np.ndarray:
    """Apply near-OOD corruption ``kind`` (paper 000 §3.1) to a preprocessed image.

    Args:
        image: ``(*spatial)`` float array in [0, 1] (2D or 3D), background 0.
        affine: its voxel-to-world matrix (4×4), used for the anatomical axes.
        kind: one of :data:`CORRUPTION_KINDS` (``noise_<σ>``, ``background_<v>``, ``scale_<f>``
            accept any number).
        rng: the only source of randomness (noise).
        brain_mask: boolean ``(*spatial)`` for ``skull_stripped``.
        clip: clip ``noise_*`` results to [0, 1].
    Returns a new float32 array of the same shape.
    """
    x = np.asarray(image, dtype=np.float32)
    name, _, arg = kind.partition("_")
    if name == "noise":
        y = x + rng.normal(0.0, float(arg), size=x.shape).astype(np.float32)
        return np.clip(y, 0.0, 1.0) if clip else y
    if name == "background":
        y = x.copy()
        y[~head_mask(x, affine)] = float(arg)
        return y
    if name == "flip" and arg in _WORLD_AXIS:
        axis, _ = anatomical_axis(affine, x.ndim, _WORLD_AXIS[arg])
        return np.ascontiguousarray(np.flip(x, axis=axis))
    if kind in ("chunk_top", "chunk_middle"):
        axis, sl = chunk_slices(kind, x, affine)
        y = x.copy()
        index: list[Any] = [slice(None)] * x.ndim
        index[axis] = sl
        y[tuple(index)] = 0.0
        return y
    if kind == "skull_stripped":
        if brain_mask is None:
            brain_mask = brain_mask_heuristic(x, affine)
        brain_mask = np.asarray(brain_mask, dtype=bool)
        if brain_mask.shape != x.shape:
            raise ValueError(f"brain mask shape {brain_mask.shape} differs from image shape {x.shape}")
        return np.where(brain_mask, x, np.float32(0.0)).astype(np.float32)
    if name == "scale":
        return (x * np.float32(float(arg))).astype(np.float32)
    if kind == "smoothed":
        return ndi.gaussian_filter(x, SMOOTH_SIGMA_VOXELS, mode="nearest").astype(np.float32)
    if kind == "fov_emptied":
        return np.where(emptied_fov_mask(x, affine), np.float32(0.0), x).astype(np.float32)
    raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTION_KINDS)}")


def case_rng(seed: int, kind: str, case_id: str) -> np.random.Generator:
    """Generator for one (kind, case): independent of the order in which cases are processed."""
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), zlib.crc32(case_id.encode())])


class Corrupt:
    """MONAI-style array transform: ``Corrupt(kind, seed)(img (C, *spatial), brain_mask=None)``.

    ``img`` may be a MONAI ``MetaTensor`` (its ``.affine`` is used), a tensor or an array; pass
    ``affine`` when it carries none (identity otherwise). Each call draws from this transform's own
    generator (``seed``), so a pipeline is reproducible without global seeding.
    """

    def __init__(self, kind: str, seed: int = 0, clip: bool = True):
        if kind not in CORRUPTION_KINDS and kind.partition("_")[0] not in ("noise", "background", "scale"):
            raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTION_KINDS)}")
        self.kind, self.clip = kind, clip
        self.set_random_state(seed)

    def set_random_state(self, seed: int) -> "Corrupt":
        self.rng = np.random.default_rng(seed)
        return self

    def __call__(self, img: Any, affine: np.ndarray | None = None, brain_mask: Any = None) -> Any:
        is_tensor = isinstance(img, torch.Tensor)
        if affine is None:
            meta_affine = getattr(img, "affine", None)
            affine = np.eye(4) if meta_affine is None else np.asarray(meta_affine, dtype=np.float64)
        if affine.shape != (4, 4):
            a4 = np.eye(4)
            d = affine.shape[0] - 1
            a4[:d, :d], a4[:d, 3] = affine[:d, :d], affine[:d, d]
            affine = a4
        arr = img.detach().cpu().numpy() if is_tensor else np.asarray(img)
        bm = None if brain_mask is None else np.asarray(brain_mask.cpu() if isinstance(brain_mask, torch.Tensor) else brain_mask)
        out = np.stack([
            corrupt_array(c, affine, self.kind, self.rng, None if bm is None else bm.reshape(c.shape) > 0.5, self.clip)
            for c in arr
        ])
        if not is_tensor:
            return out
        res = torch.as_tensor(out, dtype=img.dtype)
        if isinstance(img, MetaTensor):
            return MetaTensor(res, meta=dict(img.meta), applied_operations=list(img.applied_operations))
        return res


class Corruptd:
    """Dictionary version of :class:`Corrupt`: corrupts ``data[key]`` for each of ``keys``
    (channel-first), using ``data[brain_mask_key]`` for ``skull_stripped`` when given."""

    def __init__(self, keys: str | Sequence[Hashable], kind: str, seed: int = 0,
                 brain_mask_key: Hashable | None = None, clip: bool = True):
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.brain_mask_key = brain_mask_key
        self.corrupt = Corrupt(kind, seed, clip)

    def set_random_state(self, seed: int) -> "Corruptd":
        self.corrupt.set_random_state(seed)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        bm = d.get(self.brain_mask_key) if self.brain_mask_key is not None else None
        for k in self.keys:
            d[k] = self.corrupt(d[k], brain_mask=bm)
        return d


# --------------------------------------------------------------------------- sprites (paper 001)
def add_sprites(
    slice2d: np.ndarray,
    rng: np.random.Generator,
    head: np.ndarray | None = None,
    n_sprites: tuple[int, int] = (1, 3),
) -> tuple[np.ndarray, np.ndarray]:
    """Paint 1–3 random sprites into a preprocessed 2D slice (paper 001 §4.1, Appendix C).

    Each sprite is a filled ellipse (random axes 4–15 % of the image size, random rotation) or a
    square / rectangle (sides 6–20 %), with a constant intensity drawn bright (U(0.7, 1)) or dark
    (U(0, 0.1)) with equal probability, centred on a random pixel of the head eroded by 2 pixels and
    clipped to the head (``head``; default :func:`head_mask` of the slice).

    Returns ``(image, mask)``: float32 ``(H, W)`` and a boolean mask that is True exactly where
    ``image`` differs from ``slice2d``.
    """
    x = np.asarray(slice2d, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"add_sprites needs a 2D slice, got shape {x.shape}")
    head = head_mask(x) if head is None else np.asarray(head, dtype=bool)
    core = ndi.binary_erosion(head, iterations=2)
    core = core if core.any() else head
    if not core.any():
        raise ValueError("add_sprites: slice has no head to put sprites in")
    centres = np.argwhere(core)
    size = min(x.shape)
    ii, jj = np.meshgrid(np.arange(x.shape[0]), np.arange(x.shape[1]), indexing="ij")
    out = x.copy()
    n = int(rng.integers(n_sprites[0], n_sprites[1] + 1))
    for _ in range(100):
        ci, cj = centres[int(rng.integers(len(centres)))]
        theta = rng.uniform(0, np.pi)
        u = (ii - ci) * np.cos(theta) + (jj - cj) * np.sin(theta)
        v = -(ii - ci) * np.sin(theta) + (jj - cj) * np.cos(theta)
        if rng.random() < 0.5:
            a, b = rng.uniform(0.04, 0.15, size=2) * size
            shape = (u / max(a, 0.5)) ** 2 + (v / max(b, 0.5)) ** 2 <= 1.0
        else:
            a, b = rng.uniform(0.03, 0.10, size=2) * size
            shape = (np.abs(u) <= max(a, 0.5)) & (np.abs(v) <= max(b, 0.5))
        value = rng.uniform(0.7, 1.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.1)
        out[shape & head] = np.float32(value)
        n -= int(bool((shape & head).any()))
        if n <= 0 and (out != x).any():
            break
    return out, out != x


# --------------------------------------------------------------------------- folders (CLI)
@dataclass
class CorruptFolderResult:
    """Outcome of :func:`corrupt_folder`: the written files and the failed ones."""

    kind: str
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    failures: BatchFailures = field(default_factory=BatchFailures)


def _find_mask(mask_dir: Path | None, case_id: str) -> Path | None:
    if mask_dir is None:
        return None
    for suf in IMAGE_SUFFIXES:
        p = mask_dir / f"{case_id}{suf}"
        if p.exists():
            return p
    return None


def corrupt_file(
    kind: str, path: Path, out_path: Path, seed: int = 0, mask_path: Path | None = None,
    ct_window: tuple[float, float] | None = (-15.0, 100.0),
) -> Path:
    """Corrupt one image file into ``out_path`` (same grid and affine).

    With ``ct_window`` the file is CT in HU: it is clamped and rescaled to [0, 1] (paper 000 §3.1),
    corrupted, and stored back as ``lo + x (hi - lo)`` HU so that the CT preprocessing reproduces the
    corrupted [0, 1] image exactly. Without it the file must already be in [0, 1] (PNG: 0–255).
    """
    image = read_image(path)
    if ct_window is not None:
        x = to_unit_range_ct(image.array, ct_window)
    else:
        x = image.array / 255.0 if suffix_of(path) == ".png" else image.array
        if x.min() < -1e-6 or x.max() > 1 + 1e-6:
            raise InputError(path, f"intensities span [{x.min():g}, {x.max():g}], expected preprocessed [0, 1] "
                             "(pass a CT window for HU images)")
    brain = read_mask(mask_path, image) if mask_path is not None else None
    y = corrupt_array(x, image.affine, kind, case_rng(seed, kind, case_id_of(path)), brain_mask=brain)
    if ct_window is not None:
        y = from_unit_range_ct(y, ct_window)
    return write_image(out_path, y, image.affine)


def corrupt_folder(
    kind: str, in_dir: str | Path, out_dir: str | Path, seed: int = 0,
    mask_dir: str | Path | None = None, ct_window: tuple[float, float] | None = (-15.0, 100.0),
) -> CorruptFolderResult:
    """Apply corruption ``kind`` to every image in ``in_dir``, writing same-named files to ``out_dir``.

    ``mask_dir`` holds brain masks named like the images (for ``skull_stripped``). A bad file is
    recorded and the others still run; a :class:`~ldm_ood.errors.BatchError` is raised at the end
    if any failed (``ldm-ood corrupt``).
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTION_KINDS)}")
    if not in_dir.is_dir():
        raise InputError(in_dir, "not a folder")
    files = sorted(p for p in in_dir.iterdir() if p.is_file() and suffix_of(p) in IMAGE_SUFFIXES)
    if not files:
        raise InputError(in_dir, f"folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    result = CorruptFolderResult(kind=kind, out_dir=out_dir)
    mdir = None if mask_dir is None else Path(mask_dir)
    for p in files:
        with result.failures.guard(case_id_of(p), p):
            result.written.append(
                corrupt_file(kind, p, out_dir / p.name, seed, _find_mask(mdir, case_id_of(p)), ct_window)
            )
    result.failures.raise_if_any(f"corrupt {kind}")
    return result
