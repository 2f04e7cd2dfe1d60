"""DICOM series: found by SeriesInstanceUID in a folder tree, read into an :class:`~.io.Image` with a RAS affine.

* :func:`find_series` walks a folder tree and groups its DICOM files by *SeriesInstanceUID*
  (0020,000E), wherever in the tree they lie; each group is one :class:`Series` (one case).
* :func:`read_series` reads one series (a :class:`Series`, or a folder holding exactly one)
  through pydicom and returns its voxels and their voxel-to-world affine in RAS, so that the
  volume goes through the same preprocessing as a NIfTI (reorientation, spacing, crop/pad, CT
  window: :mod:`.transforms`).

**Which files are DICOM.** A regular file whose bytes 128–131 are the ``DICM`` marker (DICOM
Part 10), whatever its name; a file named ``*.dcm``, ``*.dicom`` or ``*.ima`` without the marker
is parsed as a raw DICOM data set, and one that is not DICOM at all is reported (it may have been
a slice). Hidden files and folders, image files of :data:`~.io.IMAGE_SUFFIXES` and other files
without the marker are not inputs; a ``DICOMDIR`` index is skipped. Links are followed (each file
and folder is read once).

**Geometry** (DICOM Part 3 C.7.6.2.1.1). Pixel ``(column i, row j)`` of a slice lies at
``ImagePositionPatient + i·Δc·X + j·Δr·Y`` in the patient's LPS frame, where ``X``, ``Y`` are the
row and column direction cosines of *ImageOrientationPatient* and ``(Δr, Δc)`` = *PixelSpacing*
(row spacing first). Slices are sorted by their position along the normal ``n = X × Y`` (never
by InstanceNumber or file name). The volume is ``array[i, j, k]`` (column, row, slice) and its
LPS affine has columns ``Δc·X``, ``Δr·Y``, the slice step ``(P_last − P_first) / (N − 1)`` (a
gantry tilt keeps its shear) and ``P_first``; the RAS affine is ``diag(−1, −1, 1, 1)`` times it.
A single slice takes *SpacingBetweenSlices*, else *SliceThickness*, else 1 mm along ``n``.

**Values.** *RescaleSlope* / *RescaleIntercept* (or a Modality LUT) are applied per slice by
pydicom's ``apply_modality_lut``, so CT is in Hounsfield units.

**Refused** with an :class:`~ldm_ood.errors.InputError` whose path is the series' folder and whose
message names its UID and the problem: a file that is not DICOM or cannot be read; no pixel
data; multi-frame or colour files; missing geometry (*ImageOrientationPatient*,
*ImagePositionPatient*, *PixelSpacing*); mixed orientations, slice shapes or pixel spacings; two
slices at one position; irregular slice spacing (missing slices; tolerance
:data:`SPACING_TOLERANCE` of the slice step); slice positions off a straight line; and what
:func:`~.io.read_image` refuses of any scan (wrong dimensionality, NaN/Inf, a constant volume).

**Case ids** (:func:`series_case_id`): the UID itself when it is a plain name of at most 64
letters, digits, dots, dashes and underscores (every conformant UID, digits and dots, is); any
other UID keeps those characters (others become ``_``), cut to 48, plus ``-`` and the first 8 hex
digits of its sha256, so that two UIDs never share an id. A file or folder that could not be read
as part of a series is a case of its own (:attr:`Series.problem` set), its id made the same way
from its path relative to the searched root.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .io import IMAGE_SUFFIXES, Image, check_file, check_values, spatial_array, suffix_of
from .nifti import DEGENERATE_RATIO

#: names taken as DICOM even without the ``DICM`` marker (then parsed as a raw data set)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: the Media Storage SOP Class of a DICOMDIR index (no image)
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: largest deviation of one slice gap (and of a slice from the line of positions) from the slice step,
#: as a fraction of the step: a missing slice is a deviation of 1.0, rounding of positions far below 0.02
SPACING_TOLERANCE = 0.02
#: two slices closer than this (mm) along the normal are at the same position
SAME_POSITION_MM = 1e-3
#: largest difference between two slices' direction cosines that still counts as one orientation
ORIENTATION_TOLERANCE = 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_MARKER_OFFSET, _MARKER = 128, b"DICM"
_PLAIN = re.compile(r"[0-9A-Za-z_.-]{1,64}")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class Series:
    """One DICOM series (one case): its ``uid`` (SeriesInstanceUID), ``folder`` (the deepest folder
    holding all its files), ``files`` and ``case_id`` (:func:`series_case_id`).

    ``problem`` is set for a file or folder that could not be read as part of any series (``uid``
    empty, ``files`` the unreadable file or none); :func:`read_series` raises it.
    """

    uid: str
    folder: Path
    files: tuple[Path, ...]
    case_id: str
    problem: str | None = None


def series_case_id(uid: str) -> str:
    """A plain, filesystem-safe case id of a SeriesInstanceUID (module docstring: the rule)."""
    if _PLAIN.fullmatch(uid) and not uid.startswith("."):
        return uid
    kept = re.sub(r"[^0-9A-Za-z_.-]", "_", uid)[:48].lstrip(".") or "series"
    return f"{kept}-{hashlib.sha256(uid.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _pydicom():
    import pydicom

    return pydicom


# ---------------------------------------------------------------------------------------------- finding
def _has_marker(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(_MARKER_OFFSET + len(_MARKER))
    return head[_MARKER_OFFSET:] == _MARKER


def _dicom_named(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def _candidate(path: Path) -> bool | str:
    """True for a DICOM file to read, False for a file that is not an input, or the problem of a
    file named like DICOM that cannot be read (a FIFO is never opened)."""
    if path.name.startswith(".") or suffix_of(path) in IMAGE_SUFFIXES:
        return False
    if _dicom_named(path):
        try:
            check_file(path)
        except InputError as err:
            return err.problem
        return True
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        return _has_marker(path)
    except OSError:
        return False  # a dangling link or unreadable file without a DICOM name: not an input


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(DICOM files to read, [(path, problem)] of unreadable ones)`` under ``root``, sorted; every
    real file and folder visited once (links are followed, loops are not)."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()

    def failed(err: OSError) -> None:
        problems.append((Path(err.filename), f"cannot list the folder ({err.strerror}); a DICOM series in it "
                                             "would be missed"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=failed, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            verdict = _candidate(path)
            if isinstance(verdict, str):
                problems.append((path, verdict))
            elif verdict and os.path.realpath(path) not in seen_files:
                seen_files.add(os.path.realpath(path))
                files.append(path)
    return files, problems


def _series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of one DICOM file (header only); None for a DICOMDIR index."""
    pydicom = _pydicom()
    marked = _has_marker(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not marked)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for damaged files
        detail = " ".join(str(err).split())
        raise InputError(path, f"not a readable DICOM file ({type(err).__name__}: {detail})") from None
    sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if sop_class == DICOMDIR_SOP_CLASS or path.name.upper() == "DICOMDIR":
        return None
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not uid and marked:
        raise InputError(path, "a DICOM file without SeriesInstanceUID (0020,000E): it belongs to no series")
    if not uid:
        raise InputError(path, "not a DICOM file: no DICM marker, and read as a raw DICOM data set it has no "
                               "SeriesInstanceUID (0020,000E)")
    return uid


def _unreadable(root: Path, path: Path, problem: str) -> Series:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.name
    is_file = path != root and not path.is_dir()
    return Series("", path.parent if is_file else path, (path,) if is_file else (), series_case_id(rel), problem)


def _common_folder(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def find_series(root: str | Path) -> list[Series]:
    """Every DICOM series under the folder ``root`` (its subfolders included), one :class:`Series`
    per SeriesInstanceUID, plus one per file or folder that could not be read (``problem`` set),
    sorted by folder and case id; ``[]`` when the tree holds no DICOM file. Only headers are read."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "does not exist" if not root.exists() else "is not a folder")
    files, problems = _walk(root)
    by_uid: dict[str, list[Path]] = {}
    unreadable = [_unreadable(root, p, problem) for p, problem in problems]
    for path in files:
        try:
            uid = _series_uid(path)
        except InputError as err:
            unreadable.append(_unreadable(root, path, err.problem))
            continue
        if uid is not None:
            by_uid.setdefault(uid, []).append(path)
    found = [Series(uid, _common_folder(f), tuple(f), series_case_id(uid)) for uid, f in by_uid.items()]
    return sorted(found + unreadable, key=lambda s: (str(s.folder), s.case_id))


def _one_series(folder: Path) -> Series:
    """The only series under ``folder``; anything else (none, several, an unreadable file) is refused."""
    found = find_series(folder)
    bad = [s for s in found if s.problem]
    if bad:
        raise InputError(bad[0].files[0] if bad[0].files else bad[0].folder, bad[0].problem or "")
    if not found:
        raise InputError(folder, "holds no DICOM files (files with the DICM marker, or named "
                                 f"{', '.join('*' + s for s in DICOM_SUFFIXES)})")
    if len(found) > 1:
        listed = "; ".join(f"{s.uid} in {s.folder}" for s in found)
        raise InputError(folder, f"holds {len(found)} DICOM series ({listed}); read one series at a time "
                                 "(find_series lists them)")
    return found[0]


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class _Slice:
    path: Path
    ds: Any


def _refuse(series: Series, problem: str) -> InputError:
    return InputError(series.folder, f"DICOM series {series.uid}: {problem}")


def _floats(series: Series, s: _Slice, keyword: str, n: int) -> np.ndarray:
    value = s.ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (n,) or not np.isfinite(out).all():
        tag = s.ds.data_element(keyword).tag if keyword in s.ds else None
        where = f" {tag}" if tag is not None else ""
        state = "missing" if value is None else f"not {n} finite numbers ({value!r})"
        raise _refuse(series, f"{s.path.name}: {keyword}{where} is {state}; the slice cannot be placed in the "
                              "patient (a secondary capture or projection image has no patient geometry: "
                              "convert it to PNG/NIfTI to score it as a plain image)")
    return out


def _read_slices(series: Series) -> list[_Slice]:
    pydicom = _pydicom()
    slices = []
    for path in series.files:
        try:
            ds = pydicom.dcmread(path, force=not _has_marker(path))
        except Exception as err:  # noqa: BLE001 - pydicom raises many types for damaged files
            detail = " ".join(str(err).split())
            raise _refuse(series, f"{path.name}: unreadable or truncated ({type(err).__name__}: {detail})") from None
        slices.append(_Slice(path, ds))
    no_pixels = [s.path.name for s in slices if not any(t in s.ds for t in _PIXEL_TAGS)]
    if no_pixels:
        kinds = sorted({str(s.ds.get("Modality", "?")) for s in slices if s.path.name in no_pixels})
        raise _refuse(series, f"no pixel data in {len(no_pixels)} of {len(slices)} file(s) (e.g. {no_pixels[0]}, "
                              f"modality {', '.join(kinds)}): not an image series (a report, RT plan or "
                              "presentation state?)")
    for s in slices:
        frames = int(s.ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise _refuse(series, f"{s.path.name}: a multi-frame file ({frames} frames): only single-frame "
                                  "slices are read; convert the series to NIfTI (e.g. dcm2niix) to score it")
        samples = int(s.ds.get("SamplesPerPixel", 1) or 1)
        if samples != 1:
            raise _refuse(series, f"{s.path.name}: colour data ({samples} samples per pixel, "
                                  f"{s.ds.get('PhotometricInterpretation', '?')}): not a grey-scale scan")
    return slices


def _same(series: Series, slices: list[_Slice], name: str, values: list[Any], equal) -> None:
    """Refuse a series whose slices differ in ``name`` (first differing pair named)."""
    for s, v in zip(slices[1:], values[1:]):
        if not equal(v, values[0]):
            raise _refuse(series, f"mixed {name}: {_show(values[0])} in {slices[0].path.name} but {_show(v)} in "
                                  f"{s.path.name}; one series must be one volume (was a localizer or another "
                                  "acquisition exported under this SeriesInstanceUID?)")


def _show(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return "[" + ", ".join(f"{x:g}" for x in v) + "]"
    if isinstance(v, tuple):
        return "×".join(str(x) for x in v)
    return str(v)


def _check_spacing(series: Series, slices: list[_Slice], order: np.ndarray, along: np.ndarray) -> float:
    """The slice step (mm) along the normal; refuse slices at one position and irregular gaps."""
    names = [slices[k].path.name for k in order]
    gaps = np.diff(along[order])
    same = np.flatnonzero(gaps < SAME_POSITION_MM)
    if same.size:
        i = int(same[0])
        raise _refuse(series, f"{same.size} pair(s) of slices share a position "
                              f"(e.g. {names[i]} and {names[i + 1]} at {along[order][i]:.3f} mm along the slice "
                              "normal): several volumes (echoes, phases, time points) share this SeriesInstanceUID, "
                              "or a file is there twice")
    step = float(np.median(gaps))
    off = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step)
    if off.size:
        i = int(off[0])
        missing = int(round(gaps[i] / step)) - 1
        hint = f" ({missing} slice(s) missing?)" if missing >= 1 else ""
        raise _refuse(series, f"irregular slice spacing: slices are {step:g} mm apart, but {gaps[i]:g} mm between "
                              f"{names[i]} and {names[i + 1]}{hint}; {off.size} gap(s) of {len(gaps)} differ by more "
                              f"than {SPACING_TOLERANCE:.0%}: missing or extra slices")
    return step


def _geometry(series: Series, slices: list[_Slice]) -> tuple[np.ndarray, np.ndarray]:
    """``(slice order, 4×4 LPS affine)`` of the series (module docstring), its consistency checked."""
    orientations = [_floats(series, s, "ImageOrientationPatient", 6) for s in slices]
    _same(series, slices, "orientations (ImageOrientationPatient)", orientations,
          lambda a, b: np.allclose(a, b, rtol=0, atol=ORIENTATION_TOLERANCE))
    shapes = [(int(s.ds.get("Rows", 0) or 0), int(s.ds.get("Columns", 0) or 0)) for s in slices]
    _same(series, slices, "slice shapes (Rows×Columns)", shapes, lambda a, b: a == b)
    spacings = [_floats(series, s, "PixelSpacing", 2) for s in slices]
    _same(series, slices, "pixel spacings (PixelSpacing)", spacings, lambda a, b: np.allclose(a, b, rtol=1e-5))
    positions = np.stack([_floats(series, s, "ImagePositionPatient", 3) for s in slices])

    x, y = orientations[0][:3], orientations[0][3:]
    if not (abs(np.linalg.norm(x) - 1) < 1e-3 and abs(np.linalg.norm(y) - 1) < 1e-3 and abs(x @ y) < 1e-3):
        raise _refuse(series, f"ImageOrientationPatient {_show(orientations[0])} is not two orthogonal unit vectors")
    normal = np.cross(x, y)
    row_spacing, col_spacing = spacings[0]
    if row_spacing <= 0 or col_spacing <= 0:
        raise _refuse(series, f"PixelSpacing {_show(spacings[0])} is not positive")
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    if len(slices) > 1:
        step = _check_spacing(series, slices, order, along)
        first, last = positions[order[0]], positions[order[-1]]
        slice_vector = (last - first) / (len(slices) - 1)
        line = first + np.arange(len(slices))[:, None] * slice_vector
        drift = np.linalg.norm(positions[order] - line, axis=1)
        if drift.max() > SPACING_TOLERANCE * step:
            k = int(drift.argmax())
            raise _refuse(series, f"slice positions are not on one line: {slices[order[k]].path.name} lies "
                                  f"{drift[k]:.3g} mm off the line from the first to the last slice")
    else:
        ds = slices[0].ds
        thickness = next((float(v) for v in (ds.get("SpacingBetweenSlices"), ds.get("SliceThickness"))
                          if v not in (None, "") and float(v) > 0), 1.0)
        slice_vector = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = x * col_spacing
    lps[:3, 1] = y * row_spacing
    lps[:3, 2] = slice_vector
    lps[:3, 3] = positions[order[0]]
    return order, lps


def _pixels(series: Series, s: _Slice) -> np.ndarray:
    """One slice's modality values (HU for CT) as ``(columns, rows)`` float64."""
    from pydicom.pixels import apply_modality_lut

    try:
        raw = s.ds.pixel_array
        values = apply_modality_lut(raw, s.ds)
    except Exception as err:  # noqa: BLE001 - decoders raise many types (missing plugin, damaged data)
        detail = " ".join(str(err).split())
        raise _refuse(series, f"{s.path.name}: unreadable pixel data ({type(err).__name__}: {detail})") from None
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (int(s.ds.Rows), int(s.ds.Columns)):
        raise _refuse(series, f"{s.path.name}: pixel data of shape {values.shape}, expected Rows×Columns "
                              f"{int(s.ds.Rows)}×{int(s.ds.Columns)}")
    return values.T


def read_series(source: str | Path | Series, spatial_dims: int | None = None) -> Image:
    """Read one DICOM series: ``source`` a :class:`Series` (from :func:`find_series`) or a folder
    holding exactly one series (its subfolders included).

    Returns an :class:`~.io.Image` whose ``array`` is ``(columns, rows, slices)`` float32 modality
    values (HU for CT), a single slice ``(columns, rows)`` when ``spatial_dims`` is 2, ``affine``
    the RAS voxel-to-world matrix and ``path`` the series' folder. Anything the module docstring
    lists as refused raises :class:`~ldm_ood.errors.InputError`.
    """
    series = source if isinstance(source, Series) else _one_series(Path(source))
    if series.problem:
        raise InputError(series.files[0] if series.files else series.folder, series.problem)
    slices = _read_slices(series)
    order, lps = _geometry(series, slices)
    volume = np.stack([_pixels(series, slices[k]) for k in order], axis=-1)
    affine = LPS_TO_RAS @ lps
    try:
        volume = spatial_array(series.folder, volume, spatial_dims)
        if volume.ndim == 2:
            _check_in_plane(series, affine)
        check_values(series.folder, volume, allow_constant=False)
    except InputError as err:
        raise _refuse(series, err.problem) from None
    return Image(array=volume.astype(np.float32), affine=affine, path=series.folder)


def _check_in_plane(series: Series, affine: np.ndarray) -> None:
    """A single slice read as a 2D image is preprocessed in the axial (R, A) plane: refuse a slice
    whose plane has no extent there (sagittal, coronal) with that reason, not as a singular affine."""
    part = affine[:2, :2]
    norms = np.linalg.norm(part, axis=0)
    ratio = abs(float(np.linalg.det(part))) / float(np.prod(norms)) if np.all(norms > 0) else 0.0
    if ratio < DEGENERATE_RATIO:
        plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(np.cross(affine[:3, 0], affine[:3, 1]))))]
        raise _refuse(series, f"a single {plane} slice: a 2D model reads axial slices (its preprocessing keeps the "
                              "right and anterior axes), and this slice's plane has no extent in them")


