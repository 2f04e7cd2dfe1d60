"""Image I/O with the affine kept end to end, and input validation.

Reads NIfTI (``.nii``, ``.nii.gz``), PNG and NPY; writes NIfTI (with the given affine) or PNG.
Every problem raises :class:`~ldm_ood.errors.InputError` naming the file: unreadable or truncated,
wrong dimensionality, NaN/Inf, empty, constant, a mask whose shape differs from its image.

Arrays are in the file's voxel order; channel axes of size 1 are dropped (a PNG is read as
grey-scale). NPY and PNG files have no affine: the identity is used (pixel spacing 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".png", ".npy")


@dataclass
class Image:
    """A loaded image: ``array`` (float32, spatial dims only) and its 4×4 voxel-to-world ``affine``."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim


def suffix_of(path: str | Path) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def case_id_of(path: str | Path) -> str:
    """File name without its image suffix (``sub-01.nii.gz`` -> ``sub-01``)."""
    name = Path(path).name
    suf = suffix_of(path)
    return name[: len(name) - len(suf)] if suf else name


def _read_raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    suf = suffix_of(path)
    if suf in NIFTI_SUFFIXES:
        import nibabel as nib

        img = nib.load(str(path))
        return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64)
    if suf == ".png":
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16", "F") else im)
        # PNG rows are image rows: store as (x, y) = (column, row) like a NIfTI slice
        return arr.astype(np.float32).T, np.eye(4)
    if suf == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32), np.eye(4)
    raise InputError(path, f"unsupported file type {suf!r}; expected one of {', '.join(IMAGE_SUFFIXES)}")


def read_image(
    path: str | Path,
    spatial_dims: int | None = None,
    allow_constant: bool = False,
) -> Image:
    """Read and validate one image.

    Args:
        path: NIfTI / PNG / NPY file.
        spatial_dims: required dimensionality (2 or 3) after dropping singleton axes; None = any of 2, 3.
        allow_constant: masks and maps may be constant; scans may not.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a directory, expected an image file")
    try:
        array, affine = _read_raw(path)
    except InputError:
        raise
    except Exception as err:  # nibabel/PIL/numpy raise many types for truncated or corrupt files
        raise InputError(path, f"unreadable or truncated ({type(err).__name__}: {err})") from None
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 3 and spatial_dims == 2 and 1 in array.shape:
        array = np.squeeze(array)
    wanted = (spatial_dims,) if spatial_dims else (2, 3)
    if array.ndim not in wanted:
        raise InputError(path, f"wrong dimensionality: got shape {array.shape}, expected {' or '.join(f'{d}D' for d in wanted)}")
    if array.size == 0:
        raise InputError(path, "empty image (no voxels)")
    finite = np.isfinite(array)
    if not finite.all():
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise InputError(path, f"contains {n_nan} NaN and {n_inf} Inf voxel(s)")
    if not allow_constant and float(array.max()) == float(array.min()):
        raise InputError(path, f"constant image (every voxel = {float(array.min()):g})")
    return Image(array=array.astype(np.float32, copy=False), affine=affine, path=path)


def read_mask(path: str | Path, like: Image) -> np.ndarray:
    """Read a binary ground-truth mask and check it matches ``like``'s shape. Returns bool array."""
    mask = read_image(path, spatial_dims=like.spatial_dims, allow_constant=True)
    if mask.array.shape != like.array.shape:
        raise InputError(path, f"mask shape {mask.array.shape} differs from image shape {like.array.shape} ({like.path})")
    return mask.array > 0.5


def write_image(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` as NIfTI (``affine`` kept; identity if None) or PNG (scaled to 8 bit).

    PNG is for 2D arrays in [0, 1] (values are clipped). Returns the written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suf = suffix_of(path)
    array = np.asarray(array)
    if suf in NIFTI_SUFFIXES:
        import nibabel as nib

        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        img = nib.Nifti1Image(array.astype(np.float32) if array.dtype != np.uint8 else array, aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        nib.save(img, str(path))
    elif suf == ".png":
        from PIL import Image as PILImage

        if array.ndim != 2:
            raise ValueError(f"{path}: PNG needs a 2D array, got shape {array.shape}")
        data = array if array.dtype == np.uint8 else (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
        PILImage.fromarray(np.ascontiguousarray(data.T)).save(path)
    elif suf == ".npy":
        np.save(path, array)
    else:
        raise ValueError(f"{path}: cannot write {suf!r}; use .nii.gz, .png or .npy")
    return path
