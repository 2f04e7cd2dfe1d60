"""Are two run directories' results identical? Every score CSV value, calibration JSON and output image.

    python benchmarks/compare_runs.py RUNS_A RUNS_B [--out benchmarks/results/compare_runs.json]

``RUNS_A`` and ``RUNS_B`` hold the same runs (e.g. the demo's ``l2`` and ``seg2d``) scored by two
versions of the code. Compared: every ``*.csv`` under them except ``metrics.csv`` (rows matched by
``case_id``; the ``seconds`` column and ``*_path`` columns, which name the folders, are skipped),
every ``calibration/*.json``, and the voxel arrays of every NIfTI output (maps, healed images,
masks). Prints one line (``bit-identical`` or the first differences) and writes the counts as JSON;
exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def _csv_differences(a: Path, b: Path) -> tuple[int, list[str]]:
    rows_a = sorted(csv.DictReader(a.open()), key=lambda r: r["case_id"])
    rows_b = sorted(csv.DictReader(b.open()), key=lambda r: r["case_id"])
    if [r["case_id"] for r in rows_a] != [r["case_id"] for r in rows_b]:
        return 0, [f"{a}: the case ids differ"]
    n, out = 0, []
    for x, y in zip(rows_a, rows_b):
        for k, v in x.items():
            if k == "seconds" or k.endswith("_path"):
                continue
            n += 1
            if v != y.get(k):
                out.append(f"{a} {x['case_id']} {k}: {v} != {y.get(k)}")
    return n, out


def _json_differences(a, b, path: str = "") -> list[str]:
    """Dotted key paths whose values differ (``only in a`` / ``only in b`` for a key present on one side)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}{k} only in a" for k in a if k not in b] + [f"{path}{k} only in b" for k in b if k not in a]
        return out + [d for k in a if k in b for d in _json_differences(a[k], b[k], f"{path}{k}.")]
    return [] if a == b else [f"{path.rstrip('.')} differs"]


def compare(root_a: Path, root_b: Path) -> dict:
    """Counts and differences of everything :mod:`compare_runs` compares (module docstring)."""
    diffs: list[str] = []
    n_csv = n_values = n_json = n_images = 0
    for fa in sorted(root_a.rglob("*.csv")):
        if fa.name == "metrics.csv" or "data" in fa.relative_to(root_a).parts:
            continue
        fb = root_b / fa.relative_to(root_a)
        if not fb.exists():
            diffs.append(f"{fb}: missing")
            continue
        n, d = _csv_differences(fa, fb)
        n_csv, n_values, diffs = n_csv + 1, n_values + n, diffs + d
    for fa in sorted(root_a.rglob("calibration/*.json")):
        n_json += 1
        fb = root_b / fa.relative_to(root_a)
        if not fb.exists():
            diffs.append(f"{fb}: missing")
            continue
        diffs += [f"{fa.relative_to(root_a)}: {k}" for k in _json_differences(json.loads(fa.read_text()),
                                                                               json.loads(fb.read_text()))]
    for fa in sorted(root_a.rglob("*.nii.gz")):
        fb = root_b / fa.relative_to(root_a)
        n_images += 1
        if not fb.exists() or not np.array_equal(np.asarray(nib.load(fa).dataobj), np.asarray(nib.load(fb).dataobj)):
            diffs.append(f"{fa.relative_to(root_a)}: differs")
    return {"a": str(root_a), "b": str(root_b), "csv_files": n_csv, "csv_values": n_values,
            "calibration_files": n_json, "images": n_images, "identical": not diffs, "differences": diffs[:100]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_runs.json"))
    args = p.parse_args()
    res = compare(args.a, args.b)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"{res['csv_files']} CSVs, {res['csv_values']} values (seconds and paths excluded), "
          f"{res['calibration_files']} calibration files, {res['images']} images: "
          + ("bit-identical" if res["identical"] else f"{len(res['differences'])} differences, e.g.\n  "
             + "\n  ".join(res["differences"][:10])))
    sys.exit(0 if res["identical"] else 1)


if __name__ == "__main__":
    main()
