"""Image I/O with the affine kept end to end, and input validation.

Reads NIfTI (``.nii``, ``.nii.gz``; :mod:`.nifti`), PNG and NPY; writes NIfTI (with the given
affine) or PNG. Every problem raises :class:`~ldm_ood.errors.InputError` naming the file, so a
batch records it for that case and goes on with the others:

* the path: missing, a directory, a dangling symbolic link or a link loop, not a regular file (a
  FIFO would block the read), an empty (0-byte) file;
* the bytes: unreadable or truncated (a ``.nii.gz`` whose gzip data or CRC/length trailer is
  damaged, a NIfTI header declaring more voxels than the file holds, a PNG cut short: every
  chunk's CRC is verified), a ``.nii`` that is not NIfTI (text, say), an NPY that needs pickle
  (object dtype), an ``.npz`` archive, an animated PNG, a 16-bit colour PNG (Pillow would cut it
  to 8 bits);
* the data type: complex (the imaginary part would be dropped), boolean for a scan (it is a
  mask), structured (an RGB NIfTI), anything not integer or floating point;
* the geometry: wrong dimensionality (a 4D time series says so); no voxels; an affine with
  NaN/Inf entries or a singular 3×3 part (for a 2D image: a singular in-plane 2×2 part);
* the values, judged in the file's own dtype before the float32 cast: NaN/Inf, values beyond
  the float32 range (they would become Inf), a constant scan.

Arrays are in the file's voxel order; singleton axes beyond the third (and, for 2D, a singleton
third axis) are dropped. A PNG is read as grey-scale (8- or 16-bit grey kept as is; palette and
8-bit colour converted to luminance). NPY and PNG files have no affine: the identity is used
(pixel spacing 1).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .nifti import check_affine, read_nifti

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".png", ".npy")

#: PIL modes kept as they are (one grey channel, 8/16/32-bit integer or float); others become "L"
_GREY_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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


def check_file(path: Path) -> None:
    """Refuse a path that is not a readable, non-empty regular file (before anything opens it).

    A symbolic link is followed; one whose target is missing, or that loops, is named as such.
    A FIFO, socket or device is refused without opening it (reading a FIFO would block).
    """
    try:
        st = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(path, "symbolic link loop (the link resolves back to itself); point it at an "
                                   "image file") from None
        if path.is_symlink():
            raise InputError(path, f"dangling symbolic link (its target {os.readlink(path)} does not exist)") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(path, "file not found") from None
        raise InputError(path, f"cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, "is a directory, expected an image file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, "not a regular file (a FIFO, socket or device), expected an image file")
    if st.st_size == 0:
        raise InputError(path, "empty file (0 bytes)")


def _read_png(path: Path) -> np.ndarray:
    """Grey-scale voxels of a PNG as ``(x, y) = (column, row)``, in the stored integer dtype."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        im.verify()  # walks every chunk to the end (CRCs, IEND): a cut file fails here, not silently
    with PILImage.open(path) as im:  # verify() leaves the image unusable: open it again to decode
        if getattr(im, "n_frames", 1) > 1:
            raise InputError(path, f"animated PNG with {im.n_frames} frames; expected one image")
        if im.format == "PNG":
            with path.open("rb") as fh:  # IHDR is the first chunk: bit depth at byte 24, colour type at 25
                bit_depth, colour_type = fh.read(26)[24:26]
            if bit_depth == 16 and colour_type != 0:
                raise InputError(path, f"16-bit colour or grey+alpha PNG (colour type {colour_type}): it would be "
                                       "read at 8 bits; store the scan as a 16-bit grey-scale PNG, NIfTI or NPY")
        im.load()
        arr = np.asarray(im if im.mode in _GREY_MODES else im.convert("L"))
    return arr.T  # PNG rows are image rows: store as (x, y) = (column, row) like a NIfTI slice


def _read_npy(path: Path) -> np.ndarray:
    """The array of an NPY file; pickled content is refused (``allow_pickle=False`` stays)."""
    with path.open("rb") as fh:
        head = fh.read(len(np.lib.format.MAGIC_PREFIX))
    if head.startswith(b"PK"):
        raise InputError(path, "an .npz archive, expected a single array saved with numpy.save (.npy)")
    if head != np.lib.format.MAGIC_PREFIX:
        raise InputError(path, "not an NPY file (it does not start with the NPY magic string)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise InputError(path, "holds Python objects (object dtype), which are refused: loading them would "
                               "need pickle; save a numeric array") from None


def _read_raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(voxels in the file's dtype, 4×4 affine)``."""
    suf = suffix_of(path)
    if suf in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suf == ".png":
        return _read_png(path), np.eye(4)
    if suf == ".npy":
        return _read_npy(path), np.eye(4)
    raise InputError(path, f"unsupported file type {suf!r}; expected one of {', '.join(IMAGE_SUFFIXES)}")


def check_dtype(path: Path, dtype: np.dtype, allow_bool: bool) -> None:
    """Refuse data types that are not a scan: complex, structured (RGB), boolean (unless a mask)."""
    if dtype.kind == "c":
        raise InputError(path, f"complex-valued data (dtype {dtype}) is not a scan of the trained kind; "
                               "store its magnitude as a real-valued image")
    if dtype.kind == "b" and not allow_bool:
        raise InputError(path, f"boolean data (dtype {dtype}) is a mask, not a scan")
    if dtype.kind == "V":
        raise InputError(path, f"structured data (dtype {dtype}, e.g. an RGB NIfTI) is not a single-channel "
                               "scan; store one grey-scale channel")
    if dtype.kind not in "biuf":
        raise InputError(path, f"data type {dtype} is not numeric; expected integer or floating-point voxels")


def spatial_array(path: Path, array: np.ndarray, spatial_dims: int | None) -> np.ndarray:
    """``array`` without its singleton non-spatial axes, checked against the wanted dimensionality."""
    shape = array.shape
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 3 and spatial_dims == 2 and 1 in array.shape:
        array = np.squeeze(array)
    wanted = (spatial_dims,) if spatial_dims else (2, 3)
    if array.ndim not in wanted:
        volumes = int(np.prod(shape[3:])) if len(shape) > 3 else 1
        hint = (f" ({volumes} volumes along the 4th and later axes: a time series or a multi-channel image, "
                "not one scan; store one volume per file)" if volumes > 1 else "")
        raise InputError(path, f"wrong dimensionality: got shape {array.shape}, expected "
                               f"{' or '.join(f'{d}D' for d in wanted)}{hint}")
    if array.size == 0:
        raise InputError(path, "empty image (no voxels)")
    return array


def check_values(path: Path, array: np.ndarray, allow_constant: bool) -> None:
    """Refuse NaN/Inf, values a float32 cannot hold, and (unless allowed) a constant image.

    Judged on the file's own dtype, before the cast to float32: a float64 value beyond the float32
    range is reported as such, not as the Inf the cast would make of it. One min and one max pass
    (NaN propagates through both; they are only counted when present).
    """
    lo, hi = array.min(), array.max()
    if array.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise InputError(path, f"contains {n_nan} NaN and {n_inf} Inf voxel(s)")
    peak = max(abs(lo), abs(hi)) if array.dtype.kind == "f" else 0  # integers all fit (|int64| < 1e19)
    if peak > _FLOAT32_MAX:
        raise InputError(path, f"values beyond the float32 range (max |value| = "
                               f"{np.format_float_scientific(peak, precision=4)} > {_FLOAT32_MAX:.6g}, dtype "
                               f"{array.dtype}); scans are processed as float32: rescale the data")
    if not allow_constant and np.float32(lo) == np.float32(hi):
        raise InputError(path, f"constant image (every voxel = {float(lo):g})")


def read_image(
    path: str | Path,
    spatial_dims: int | None = None,
    allow_constant: bool = False,
) -> Image:
    """Read and validate one image (module docstring: what is refused, and why).

    Args:
        path: NIfTI / PNG / NPY file.
        spatial_dims: required dimensionality (2 or 3) after dropping singleton axes; None = any of 2, 3.
        allow_constant: the file is a mask or a map, which may be constant (and boolean); a scan may
            be neither.
    """
    path = Path(path)
    array, affine = read_raw(path)
    return checked_image(path, array, affine, spatial_dims, allow_constant)


def read_raw(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The first half of :func:`read_image`: ``(voxels in the file's dtype, 4×4 affine)`` of a file
    that is there and readable; :class:`InputError` when the path or the bytes are unusable."""
    path = Path(path)
    check_file(path)
    try:
        return _read_raw(path)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - nibabel/PIL/numpy raise many types for corrupt files
        detail = " ".join(str(err).split())  # one line, whatever the library put in its message
        raise InputError(path, f"unreadable or truncated ({type(err).__name__}: {detail})") from None


def checked_image(path: str | Path | None, array: np.ndarray, affine: np.ndarray, spatial_dims: int | None = None,
                  allow_constant: bool = False) -> Image:
    """The second half of :func:`read_image`: the voxels :func:`read_raw` gave, checked (data type,
    dimensionality, affine, values) and cast to float32; :class:`InputError` naming ``path`` when the
    content is not a usable scan."""
    path = None if path is None else Path(path)
    check_dtype(path, array.dtype, allow_bool=allow_constant)
    array = spatial_array(path, array, spatial_dims)
    check_affine(path, affine, dims=array.ndim)
    check_values(path, array, allow_constant)
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
