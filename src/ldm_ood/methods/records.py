"""Score files written row by row, so an interrupted run resumes where it stopped.

A ``RecordWriter`` appends one CSV row per finished case (flushed and fsynced), and reports which
cases are already done; the header is written once. Reading back gives a list of dicts.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable


class RecordWriter:
    """Append-only CSV of per-case results with a fixed column order."""

    def __init__(self, path: str | Path, fieldnames: Iterable[str]):
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as fh:
                header = next(csv.reader(fh), [])
            if header != self.fieldnames:
                raise ValueError(
                    f"{self.path}: existing columns {header} differ from {self.fieldnames}; "
                    "delete the file to start over"
                )

    def done_ids(self) -> set[str]:
        """case_ids with a complete row already on disk."""
        return {r["case_id"] for r in read_records(self.path)} if self.path.exists() else set()

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fieldnames, extrasaction="raise")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k, "")) for k in self.fieldnames})
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
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        n = len(reader.fieldnames or [])
        return [r for r in reader if None not in r.values() and len(r) == n and None not in r]
