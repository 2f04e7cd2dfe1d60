"""What the scoring service does with an uploaded file before the model sees it.

Nothing of the request names a path on the server. The upload is copied into a folder of its own
inside the service's private folder (mode 0700) under a fixed name, and deleted with it after
scoring; its file name is used for one thing, the case id (:func:`upload_case_id`: letters,
digits, ``.``, ``_``, ``-`` only), which names the map and seeds the LDM's noise as in folder mode.

:func:`read_upload` turns the file into an :class:`~ldm_ood.data.io.Image` with the project's reader
(:func:`~ldm_ood.data.io.read_raw`, then :func:`~ldm_ood.data.io.checked_image`, which together are
:func:`~ldm_ood.data.io.read_image`), every problem an :class:`~ldm_ood.errors.UploadError` naming the
upload by its file name:

* 413 — the upload is larger than the limit, or a gzip upload would decompress to more than the
  image limit (checked by streaming, before anything holds the decompressed bytes);
* 415 — a zip archive (a DICOM series): read by ``ldm_ood.data.dicom`` where that module exists
  (:func:`read_dicom_zip`), refused otherwise;
* 400 — the bytes are not a readable NIfTI (not NIfTI at all, a truncated or damaged gzip, a header
  declaring more voxels than the file holds);
* 422 — a readable NIfTI that is not a usable scan (NaN/Inf voxels, a constant image, another
  dimensionality than the model's, a singular affine, complex or boolean data).
"""

from __future__ import annotations

import re
import shutil
import zlib
from pathlib import Path
from typing import BinaryIO

from ..data.io import Image, case_id_of, checked_image, read_raw
from ..errors import InputError, UploadError

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with entries, an empty zip
CHUNK = 1 << 20

_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def upload_case_id(filename: str | None) -> str:
    """The case id of an upload named ``filename``: its last path component (``/`` or ``\\``) without
    an image suffix, when that is 1-128 letters, digits, ``.``, ``_`` or ``-`` not starting with a dot;
    otherwise ``scan``."""
    base = re.split(r"[/\\]", filename or "")[-1]
    case_id = case_id_of(base) if base else ""
    return case_id if _SAFE_ID.fullmatch(case_id) else "scan"


def save_upload(source: BinaryIO, target: Path, max_bytes: int, name: str) -> int:
    """Copy ``source`` to ``target`` in chunks; its size in bytes, or a 413 past ``max_bytes``."""
    size = 0
    with target.open("wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise UploadError(name, f"larger than the upload limit of {max_bytes} bytes", 413)
            out.write(chunk)
    if size == 0:
        raise UploadError(name, "empty upload (0 bytes)", 400)
    return size


def check_decompressed_size(path: Path, max_bytes: int, name: str) -> None:
    """A 413 when the gzip file at ``path`` decompresses to more than ``max_bytes`` (a gzip bomb or a
    scan too large for the service), found by streaming with bounded memory; damaged data is left to
    the reader (a 400)."""
    inflate, total, pending = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16), 0, b""
    with path.open("rb") as fh:
        while pending or (pending := fh.read(CHUNK)):
            try:
                total += len(inflate.decompress(pending, CHUNK))
            except zlib.error:
                return
            if total > max_bytes:
                raise UploadError(name, f"decompresses to more than the image limit of {max_bytes} bytes", 413)
            if inflate.eof:  # the member ended: a further one may follow
                pending, inflate = inflate.unused_data, zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
            else:
                pending = inflate.unconsumed_tail


def _scrubbed(problem: str, path: Path, name: str) -> str:
    """``problem`` with the server's paths of the upload replaced by the upload's name."""
    return problem.replace(str(path), name).replace(str(path.parent), "<upload>")


def read_dicom_zip(path: Path, name: str, spatial_dims: int) -> Image:
    """A zip of one DICOM series as an image (415 until ``ldm_ood.data.dicom`` is in this build)."""
    # hook: once ldm_ood.data.dicom is merged, unpack the zip here (member base names only, bounded) and return its series
    raise UploadError(name, "is a zip archive (a DICOM series?); this build reads NIfTI only (.nii, .nii.gz): "
                            "convert the series to NIfTI and upload that", 415)


def read_upload(path: Path, name: str, spatial_dims: int, max_image_bytes: int) -> Image:
    """The upload saved at ``path`` as a checked image of ``spatial_dims`` dimensions (module docstring)."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(ZIP_MAGICS):
        return read_dicom_zip(path, name, spatial_dims)
    if head.startswith(GZIP_MAGIC):
        check_decompressed_size(path, max_image_bytes, name)
    elif path.stat().st_size > max_image_bytes:
        raise UploadError(name, f"larger than the image limit of {max_image_bytes} bytes", 413)
    try:
        array, affine = read_raw(path)
    except InputError as err:
        raise UploadError(name, _scrubbed(err.problem, path, name), 400) from None
    try:
        return checked_image(path, array, affine, spatial_dims)
    except InputError as err:
        raise UploadError(name, _scrubbed(err.problem, path, name), 422) from None


def remove_folder(folder: Path) -> None:
    """Delete an upload's folder and everything in it (nothing of it is kept)."""
    shutil.rmtree(folder, ignore_errors=True)
