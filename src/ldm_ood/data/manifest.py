"""Manifests: ``case_id,path[,mask][,set][,split]`` CSV, or a plain folder of images.

``set`` names a test set (``id``, ``noise_0.1``, ``far_mr_t1`` ...); ``split`` is ``train``,
``val`` or ``test``. Relative paths are resolved against the manifest's folder. A row pointing at a
missing file is reported with the manifest line, never silently skipped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .io import IMAGE_SUFFIXES, case_id_of, suffix_of

MANIFEST_COLUMNS = ("case_id", "path", "mask", "set", "split")


@dataclass(frozen=True)
class Case:
    """One input scan (and optional ground-truth mask)."""

    case_id: str
    path: Path
    mask: Path | None = None
    set: str = "test"
    split: str = "test"


def read_manifest(source: str | Path, check_files: bool = True) -> list[Case]:
    """Cases from a manifest CSV or from every image file in a folder (set = folder name)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and suffix_of(p) in IMAGE_SUFFIXES)
        if not files:
            raise InputError(source, f"folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return [Case(case_id=case_id_of(p), path=p, set=source.name) for p in files]
    if not source.exists():
        raise InputError(source, "manifest not found")
    with source.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise InputError(source, "manifest needs a header with at least a 'path' column")
        cases: list[Case] = []
        seen: set[tuple[str, str]] = set()
        for line, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            if not raw:
                raise InputError(source, f"line {line}: empty 'path'")
            path = Path(raw) if Path(raw).is_absolute() else source.parent / raw
            mask_raw = (row.get("mask") or "").strip()
            mask = None if not mask_raw else (Path(mask_raw) if Path(mask_raw).is_absolute() else source.parent / mask_raw)
            case = Case(
                case_id=(row.get("case_id") or "").strip() or case_id_of(path),
                path=path,
                mask=mask,
                set=(row.get("set") or "").strip() or "test",
                split=(row.get("split") or "").strip() or "test",
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
