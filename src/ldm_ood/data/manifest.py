"""Manifests: ``case_id,path[,mask][,set][,split]`` CSV, or a plain folder of images and DICOM series.

A folder's cases are its entries named like images (:func:`folder_images`: hidden files and
other names are ignored; a broken link or a directory with an image name fails as its own case)
and every DICOM series anywhere in its tree (:func:`~.dicom.find_series`: one case per
SeriesInstanceUID, its case id :func:`~.dicom.series_case_id`; a DICOM file that cannot be read
is a case of its own that fails). A manifest row's ``path`` may also name a folder holding one
DICOM series.

``set`` names a test set (``id``, ``noise_0.1``, ``far_mr_t1`` ...); ``split`` is ``train``,
``val`` or ``test`` (any case; stored lower-case). Relative paths are resolved against the
manifest's folder. A row pointing at a missing file is reported with the manifest line, never
silently skipped.

``case_id`` and ``set`` name output files and folders (``scores/<method>/<set>.csv``,
``maps/<method>/<set>/<case_id>.nii.gz``), so each must be a plain name (:func:`plain_name`): no
path separator, not ``.``/``..``, no leading dot, no control character. Anything else is refused
with the manifest line, so no manifest can make a command write outside its output folder.
The file is read as UTF-8 (a byte-order mark is accepted); rows with fewer cells than the header
are errors, not silently shifted.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .dicom import Series, find_series
from .io import IMAGE_SUFFIXES, case_id_of, suffix_of

MANIFEST_COLUMNS = ("case_id", "path", "mask", "set", "split")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Case:
    """One input scan (and optional ground-truth mask). A DICOM series found in a folder tree has
    ``series`` set and ``path`` its folder; :attr:`source` is what :func:`~.scans.read_scan` reads."""

    case_id: str
    path: Path
    mask: Path | None = None
    set: str = "test"
    split: str = "test"
    series: Series | None = None

    @property
    def source(self) -> Path | Series:
        """The series when the case is one, else the image file (or series folder) ``path``."""
        return self.series if self.series is not None else self.path


def plain_name(value: str) -> str | None:
    """Why ``value`` cannot name a file or folder inside an output folder, or None when it can."""
    if not value:
        return "is empty"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if value in (".", "..") or value.startswith("."):
        return "starts with a dot"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "contains a control character"
    if len(value) > 200:
        return "is longer than 200 characters"
    return None


def _checked(source: Path, line: int, column: str, value: str) -> str:
    problem = plain_name(value)
    if problem is not None:
        raise InputError(source, f"line {line}: {column} {value!r} {problem}; it names output files, so it must be a "
                                 "plain name (letters, digits, spaces, . _ + - and the like)")
    return value


def _split(source: Path, line: int, raw: str) -> str:
    split = raw.strip().lower() or "test"
    if split not in SPLITS:
        raise InputError(source, f"line {line}: split {raw.strip()!r} is not one of {', '.join(SPLITS)}")
    return split


def folder_images(folder: Path) -> list[Path]:
    """Every entry of ``folder`` named like an image, sorted; hidden and other names are ignored.

    An entry counts by its name alone: a name ending in an image suffix (:data:`IMAGE_SUFFIXES`,
    any case) that does not start with a dot. It is listed whatever it is, so a dangling symbolic
    link, a link loop, a directory or a FIFO named ``x.nii.gz`` becomes a case that fails on its
    own with the reason (:func:`~ldm_ood.data.io.check_file`), never a silent skip; a link to an
    image file anywhere is read through. Hidden entries (``.x.nii.gz``, macOS ``._x.nii.gz``) and
    names without an image suffix (``notes.txt``, ``x.nii.bak``) are not inputs and are ignored.

    Raises :class:`InputError` up front when the folder cannot be listed or a case id is not a
    plain name (:func:`plain_name`); an empty list when it holds no image names.
    """
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and suffix_of(p) in IMAGE_SUFFIXES)
    except OSError as err:
        raise InputError(folder, f"cannot list the folder ({err.strerror})") from None
    for p in entries:
        case_id = case_id_of(p)
        problem = plain_name(case_id)
        if problem is not None:
            raise InputError(p, f"case id {case_id!r} {problem}; it names output files, so rename the file")
    return entries


def folder_inputs(folder: Path) -> list[Case]:
    """The cases of a folder (set = its name): its image files (:func:`folder_images`), then its DICOM
    series (:func:`~.dicom.find_series`). Raises :class:`InputError` up front when it holds neither,
    or two inputs give one case id (``a.nii`` and ``a.nii.gz``, a file named like a series' UID:
    their outputs would collide)."""
    cases = [Case(case_id=case_id_of(p), path=p, set=folder.name) for p in folder_images(folder)]
    cases += [Case(case_id=s.case_id, path=s.folder, set=folder.name, series=s) for s in find_series(folder)]
    if not cases:
        raise InputError(folder, f"folder holds no image files ({', '.join(IMAGE_SUFFIXES)}; hidden files are "
                                 "ignored) and no DICOM series in its tree")
    seen: dict[str, Case] = {}
    for c in cases:
        if c.case_id in seen:
            first = seen[c.case_id]
            raise InputError(folder, f"{_named(first)} and {_named(c)} give the same case id {c.case_id!r}; their "
                                     "outputs would collide, keep one of them")
        seen[c.case_id] = c
    return cases


def _named(case: Case) -> str:
    if case.series is None:
        return case.path.name
    return f"DICOM series {case.series.uid} ({case.path})" if case.series.uid else str(case.series.files[0])


def read_manifest(source: str | Path, check_files: bool = True) -> list[Case]:
    """Cases from a manifest CSV or from every image file in a folder (set = folder name)."""
    source = Path(source)
    if source.is_dir():
        return folder_inputs(source)
    if not source.exists():
        raise InputError(source, "manifest not found")
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(source, f"not a UTF-8 text manifest (byte {err.start}: {err.reason}); is it an image? "
                                 "pass a CSV manifest or a folder of images") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "path" not in [f.strip() for f in reader.fieldnames]:
        raise InputError(source, "manifest needs a header with at least a 'path' column")
    reader.fieldnames = [f.strip() for f in reader.fieldnames]
    cases: list[Case] = []
    seen: set[tuple[str, str]] = set()
    for line, row in enumerate(reader, start=2):
        if None in row.values():
            raise InputError(source, f"line {line}: {sum(v is not None for v in row.values())} of "
                                     f"{len(reader.fieldnames)} columns; every row needs a cell per header column")
        raw = (row.get("path") or "").strip()
        if not raw:
            raise InputError(source, f"line {line}: empty 'path'")
        path = Path(raw) if Path(raw).is_absolute() else source.parent / raw
        mask_raw = (row.get("mask") or "").strip()
        mask = None if not mask_raw else (Path(mask_raw) if Path(mask_raw).is_absolute() else source.parent / mask_raw)
        case = Case(
            case_id=_checked(source, line, "case_id", (row.get("case_id") or "").strip() or case_id_of(path)),
            path=path,
            mask=mask,
            set=_checked(source, line, "set", (row.get("set") or "").strip() or "test"),
            split=_split(source, line, row.get("split") or ""),
        )
        key = (case.set, case.case_id)
        if key in seen:
            raise InputError(source, f"line {line}: duplicate case_id {case.case_id!r} in set {case.set!r}")
        seen.add(key)
        if check_files:
            if not path.exists():
                raise InputError(source, f"line {line}: {path} does not exist")
            if mask is not None and not mask.exists():
                raise InputError(source, f"line {line}: mask {mask} does not exist")
        cases.append(case)
    if not cases:
        raise InputError(source, "manifest has no rows")
    return cases


def write_manifest(path: str | Path, cases: list[Case]) -> Path:
    """Write ``cases`` with paths relative to the manifest's folder where possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        try:
            return str(Path(p).resolve().relative_to(path.parent.resolve()))
        except ValueError:
            return str(p)

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_COLUMNS)
        for c in cases:
            w.writerow([c.case_id, rel(c.path), rel(c.mask), c.set, c.split])
    return path


def select(cases: list[Case], split: str | None = None, set_name: str | None = None) -> list[Case]:
    """Cases of a split and/or a set."""
    return [c for c in cases if (split is None or c.split == split) and (set_name is None or c.set == set_name)]


def set_names(cases: list[Case], split: str | None = "test") -> list[str]:
    """Set names in first-seen order (of one split, or all when ``split`` is None)."""
    out: list[str] = []
    for c in cases:
        if (split is None or c.split == split) and c.set not in out:
            out.append(c.set)
    return out
