"""Score files written row by row, so an interrupted run resumes where it stopped.

A ``RecordWriter`` appends one CSV row per finished case (flushed and fsynced), and reports which
cases are already done; the header is written once. Opening an existing file repairs and migrates
it first, so appending can never corrupt it:

* a **torn last line** (a process killed mid-row: no final newline, or the wrong number of
  fields) is cut off, and a warning names the file and the case;
* a file written by an older version **without some of the current columns** is rewritten
  atomically with them (empty for the old rows); a file with columns this version does not write,
  or in another order, is refused with a clear message.

Reading back (:func:`read_records`) gives a list of dicts and skips a torn last line.

**Part files** (scoring sharded over ``torchrun`` ranks, :mod:`.sharding`): rank ``r`` writes its rows
to ``<set>.csv.parts/rank-<r>.csv`` (:func:`part_path`) with a ``RecordWriter`` of its own;
:func:`merge_parts` appends the rows of every part to ``<set>.csv`` in case order and deletes the
parts. Until then the rows of the parts count as done (:func:`part_records`), so a launch killed
before its merge resumes without losing or repeating a case.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape

from ..artifacts.atomic import atomic_write_text

console = Console(stderr=True)


class RecordWriter:
    """Append-only CSV of per-case results with a fixed column order."""

    def __init__(self, path: str | Path, fieldnames: Iterable[str]):
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._repair()

    def _repair(self) -> None:
        """Cut a torn last line; add columns missing from an older file (module docstring)."""
        raw = self.path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        header = next(csv.reader([lines[0]]), [])
        if not set(header) <= set(self.fieldnames) or [c for c in self.fieldnames if c in header] != header:
            raise ValueError(f"{self.path}: existing columns {header} differ from {self.fieldnames}; "
                             "move or delete the file to start over")
        last = lines[-1]
        torn = len(lines) > 1 and (not last.endswith(("\n", "\r")) or len(next(csv.reader([last]), [])) != len(header))
        if torn:
            case = last.split(",", 1)[0]
            console.print(f"[yellow]{escape(str(self.path))}: the last row (case {escape(case)!r}) was torn by an "
                          "interrupted run; dropped, the case is scored again")
            with self.path.open("r+b") as fh:
                fh.truncate(len(raw) - len(last.encode("utf-8", errors="replace")))
        if header != self.fieldnames:
            rows = read_records(self.path)
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=self.fieldnames)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in self.fieldnames} for r in rows)
            atomic_write_text(self.path, out.getvalue())
            console.print(f"[yellow]{escape(str(self.path))}: written by an older version; columns "
                          f"{', '.join(c for c in self.fieldnames if c not in header)} added (empty for its {len(rows)} rows)")

    def done_ids(self) -> set[str]:
        """case_ids with a complete row already on disk."""
        return {r["case_id"] for r in read_records(self.path)} if self.path.exists() else set()

    def column_values(self, column: str) -> set[str]:
        """The distinct values of ``column`` in the rows on disk."""
        return {r.get(column, "") for r in read_records(self.path)} if self.path.exists() else set()

    def write(self, row: dict[str, Any]) -> None:
        self.write_rows([row])

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` (the header first in a new file), then flush and fsync once."""
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fieldnames, extrasaction="raise")
            if new:
                w.writeheader()
            w.writerows({k: _fmt(row.get(k, "")) for k in self.fieldnames} for row in rows)
            fh.flush()
            os.fsync(fh.fileno())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    return v


def read_records(path: str | Path) -> list[dict[str, str]]:
    """Rows of a score file (a truncated last line from a killed process is dropped)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        n = len(reader.fieldnames or [])
        return [r for r in reader if None not in r.values() and len(r) == n and None not in r]


def parts_dir(path: str | Path) -> Path:
    """``<set>.csv.parts/``: the folder of the part files of the score file ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


def part_path(path: str | Path, rank: int) -> Path:
    """``<set>.csv.parts/rank-<rank>.csv``: where rank ``rank`` of a sharded launch writes its rows."""
    return parts_dir(path) / f"rank-{int(rank)}.csv"


def part_paths(path: str | Path) -> list[Path]:
    """The part files of ``path`` left by any launch (any world size), sorted by name."""
    folder = parts_dir(path)
    return sorted(folder.glob("rank-*.csv")) if folder.is_dir() else []


def part_records(path: str | Path) -> list[dict[str, str]]:
    """The complete rows of every part file of ``path`` (torn last lines skipped)."""
    return [row for part in part_paths(path) for row in read_records(part)]


def merge_parts(path: str | Path, fieldnames: Iterable[str], order: dict[str, int]) -> int:
    """Append the part rows of cases not in ``path`` yet, sorted by ``order[case_id]`` (cases not in
    ``order`` last, as found), then delete the parts; the number of rows added.

    Safe to repeat after a kill: the rows go in with one fsynced append before any part is deleted,
    and a rerun skips the cases already in ``path`` (a torn append is cut by ``RecordWriter``)."""
    parts = part_paths(path)
    if not parts:
        return 0
    writer = RecordWriter(path, fieldnames)
    done = writer.done_ids()
    rows: dict[str, dict[str, str]] = {}
    for row in part_records(path):
        if row["case_id"] not in done:
            rows.setdefault(row["case_id"], row)
    ordered = sorted(rows.values(), key=lambda r: order.get(r["case_id"], len(order)))
    if ordered:
        writer.write_rows({k: r.get(k, "") for k in writer.fieldnames} for r in ordered)
    for part in parts:
        part.unlink()
    with contextlib.suppress(OSError):
        parts_dir(path).rmdir()
    return len(ordered)
