"""What the scoring service does with an uploaded file before the model sees it.

Nothing of the request names a path on the server. The upload is copied into a folder of its own
inside the service's private folder (mode 0700) under a fixed name, and deleted with it after
scoring; its file name is used for one thing, the case id (:func:`upload_case_id`: letters,
digits, ``.``, ``_``, ``-`` only), which names the map and seeds the LDM's noise as in folder mode.

:func:`read_upload` turns the file into an :class:`~ldm_ood.data.io.Image` with the project's reader
(:func:`~ldm_ood.data.io.read_raw`, then :func:`~ldm_ood.data.io.checked_image`, which together are
:func:`~ldm_ood.data.io.read_image`), every problem an :class:`~ldm_ood.errors.UploadError` naming the
upload by its file name:

* 413 — the upload is larger than the limit, or would decompress (gzip) or unpack (zip) to more
  than the image limit (checked while streaming, before anything holds the whole content);
* 400 — the bytes are not a readable NIfTI or zip (not NIfTI at all, a truncated or damaged gzip, a
  header declaring more voxels than the file holds, a damaged zip);
* 422 — a readable NIfTI that is not a usable scan (NaN/Inf voxels, a constant image, another
  dimensionality than the model's, a singular affine, complex or boolean data), or a zip that is
  not one readable DICOM series (none, several, missing slices, mixed orientations ...).

A zip (:func:`read_dicom_zip`) is unpacked into the upload's folder under names made by the service
(an index and the member's sanitized base name; ``__MACOSX`` and hidden members left out), then read
by :func:`ldm_ood.data.dicom.read_series` as one series; its case id is the series'
(:func:`~ldm_ood.data.dicom.series_case_id` of its SeriesInstanceUID), as in folder mode.
"""

from __future__ import annotations

import re
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from ..data.io import Image, case_id_of, checked_image, read_raw
from ..errors import InputError, UploadError

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with entries, an empty zip
CHUNK = 1 << 20

_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


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
    """``problem`` with the server's paths of the upload (``path``, a file or folder, and its folder)
    replaced by the upload's name."""
    return problem.replace(str(path), name).replace(str(path.parent), name)


def unpack_zip(path: Path, folder: Path, max_bytes: int, name: str, max_members: int = 10_000) -> Path:
    """Unpack the zip at ``path`` into ``folder`` (created) under names made here (module docstring),
    at most ``max_members`` files and ``max_bytes`` bytes, counted while unpacking (413 beyond)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UploadError(name, f"not a readable zip archive ({err})", 400) from None
    folder.mkdir(mode=0o700)
    total = 0
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_members:
            raise UploadError(name, f"holds {len(members)} files, more than the {max_members} a series may have", 413)
        for k, member in enumerate(members):
            parts = re.split(r"[/\\]", member.filename)
            if parts[-1].startswith(".") or "__MACOSX" in parts:
                continue
            target = folder / f"{k:05d}-{_UNSAFE.sub('_', parts[-1])[:100]}"
            try:
                with archive.open(member) as src, target.open("wb") as out:
                    while chunk := src.read(CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise UploadError(name, f"unpacks to more than the image limit of {max_bytes} bytes", 413)
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
                raise UploadError(name, f"member {member.filename!r} cannot be unpacked ({err})", 400) from None
    return folder


def read_dicom_zip(path: Path, name: str, spatial_dims: int, max_bytes: int) -> tuple[Image, str]:
    """``(image, case id)`` of the one DICOM series in the zip at ``path`` (module docstring)."""
    from ..data.dicom import find_series, read_series

    folder = unpack_zip(path, path.parent / "series", max_bytes, name)
    try:
        found = find_series(folder)
        if len(found) == 1 and not found[0].problem:
            return read_series(found[0], spatial_dims), found[0].case_id
        read_series(folder, spatial_dims)  # raises, saying what the folder holds instead of one series
        raise InputError(folder, "does not hold one DICOM series")  # pragma: no cover - read_series raised
    except InputError as err:  # named by the series' folder or one of its files: both inside the zip
        raise UploadError(name, _scrubbed(str(err), folder, name).removeprefix(f"{name}: "), 422) from None


def read_upload(path: Path, name: str, spatial_dims: int, max_image_bytes: int) -> tuple[Image, str | None]:
    """``(image, case id)`` of the upload saved at ``path``, checked, of ``spatial_dims`` dimensions
    (module docstring); the case id is a DICOM series' own, None for a NIfTI (its name gives it)."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(ZIP_MAGICS):
        return read_dicom_zip(path, name, spatial_dims, max_image_bytes)
    if head.startswith(GZIP_MAGIC):
        check_decompressed_size(path, max_image_bytes, name)
    elif path.stat().st_size > max_image_bytes:
        raise UploadError(name, f"larger than the image limit of {max_image_bytes} bytes", 413)
    try:
        array, affine = read_raw(path)
    except InputError as err:
        raise UploadError(name, _scrubbed(err.problem, path, name), 400) from None
    try:
        return checked_image(path, array, affine, spatial_dims), None
    except InputError as err:
        raise UploadError(name, _scrubbed(err.problem, path, name), 422) from None


def remove_folder(folder: Path) -> None:
    """Delete an upload's folder and everything in it (nothing of it is kept)."""
    shutil.rmtree(folder, ignore_errors=True)
