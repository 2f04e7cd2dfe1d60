"""Reading one NIfTI file whole and checked: gzip integrity, header kind, a usable affine.

nibabel streams a ``.nii.gz`` and stops once it has the voxels, so a file whose gzip trailer (CRC
and length) was cut off, or whose last block is damaged, used to load without a word. Here the
file is read once, decompressed whole by :func:`gzip.decompress` (which checks the CRC and length
of every member) and the decompressed bytes are handed to nibabel (``from_bytes``): integrity is
checked without decompressing twice. The gzip magic, not the suffix, decides whether a file is
decompressed, so a plain NIfTI named ``.nii.gz`` (or a compressed one named ``.nii``) is read too.

The affine is nibabel's ``.affine`` (sform when its code is set, else qform, else the pixdim
diagonal). An affine with NaN/Inf entries or a degenerate 3×3 part (2×2 for a 2D image) cannot
map voxels to positions: MONAI's ``Orientation`` later fails on it with a message naming only a
Python object, so :func:`~ldm_ood.data.io.read_image` refuses it (:func:`check_affine`), naming
the file. A header that declares more voxels than the file holds is refused before nibabel
allocates them.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError

#: |det| of the 3×3 part over the product of its column norms below this = degenerate (columns
#: (nearly) parallel or zero); the ratio is 1 for any orthogonal affine, whatever the voxel size
DEGENERATE_RATIO = 1e-6

_GZIP_MAGIC = b"\x1f\x8b"


def decompressed(path: Path, raw: bytes) -> bytes:
    """``raw`` gunzipped (every member, CRC and length checked) when it starts with the gzip magic."""
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise InputError(path, f"unreadable or truncated gzip data ({type(err).__name__}: {err}); the file was "
                               "cut short or damaged in transfer, copy or export it again") from None


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(voxels in the file's dtype with nibabel's scaling applied, 4×4 affine)`` of a NIfTI-1/2 file.

    The voxels are not cast, so the caller can judge the stored dtype and range before converting
    to float32; the caller checks the affine (:func:`check_affine`) once it knows the image's
    dimensionality.
    """
    import nibabel as nib

    data = decompressed(path, path.read_bytes())
    if len(data) < nib.Nifti1Header.sizeof_hdr:
        raise InputError(path, f"unreadable or truncated: {len(data)} bytes, shorter than a NIfTI header")
    klass = next((k for k in (nib.Nifti2Image, nib.Nifti1Image) if k.header_class.may_contain_header(data)), None)
    if klass is None:
        raise InputError(path, "not a NIfTI file (no NIfTI-1 or NIfTI-2 header at its start)")
    img = klass.from_bytes(data)
    _check_size(path, img.dataobj, len(data))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)


def _check_size(path: Path, proxy, n_bytes: int) -> None:
    """Refuse a header whose voxels do not fit in the file, before anything is allocated for them
    (a damaged ``dim`` field could otherwise ask for terabytes). ``proxy``: nibabel's ArrayProxy."""
    shape, dtype = tuple(proxy.shape), np.dtype(proxy.dtype)
    if any(n < 0 for n in shape):
        raise InputError(path, f"invalid NIfTI header: negative size in dim {shape}")
    need, have = math.prod(shape) * dtype.itemsize, n_bytes - int(proxy.offset)
    if need > have:
        raise InputError(path, f"unreadable or truncated: the header declares {shape} voxels of {dtype} "
                               f"({need} bytes) but the file holds {max(have, 0)} bytes of voxel data")


def check_affine(path: Path, affine: np.ndarray, dims: int = 3) -> None:
    """Refuse an affine with NaN/Inf entries or a degenerate (singular) ``dims``×``dims`` part.

    ``dims`` is the image's dimensionality: a 3D scan needs its 3×3 part; a 2D image is
    preprocessed with the in-plane part only (first two rows and columns), singular when the slice
    does not lie in the plane of its first two voxel axes, while its third column may be anything
    (2D tools often leave it zero).
    """
    if not np.isfinite(affine).all():
        raise InputError(path, f"singular affine: it holds NaN/Inf entries ({_rows(affine)}); "
                               "fix the header's sform/qform before scoring")
    part = affine[:dims, :dims]
    norms = np.linalg.norm(part, axis=0)
    ratio = abs(float(np.linalg.det(part))) / float(np.prod(norms)) if np.all(norms > 0) else 0.0
    if ratio < DEGENERATE_RATIO:
        where = ("its 3×3 part" if dims == 3 else
                 "its in-plane 2×2 part (the first two voxel axes do not span the slice's plane)")
        raise InputError(path, f"singular affine: |det| of {where} ≈ 0 ({_rows(affine)}), so voxels cannot "
                               "be mapped to positions (reoriented, resampled); fix the header's sform/qform "
                               "before scoring")


def _rows(affine: np.ndarray) -> str:
    return "rows " + "; ".join(" ".join(f"{v:g}" for v in row) for row in affine[:3])
