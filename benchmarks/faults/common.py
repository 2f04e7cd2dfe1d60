"""What the case modules share: the case registry, the three methods, bad-image writers, judges of rows.

A case is a function ``fn(sb: Sandbox) -> Verdict`` registered with :func:`case` (or :func:`add` in
a loop), declaring its expectation (what "ok" means) in words next to it; the function applies the
fault, runs the CLI and returns the case's own verdict with the judges below. The harness adds the
generic flags (traceback, outside_root, data_loss, torn outputs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from .harness import Call, CsvState, Sandbox, Verdict, expect_error, expect_success, is_flagged, qc_text, read_csv


@dataclass
class CaseDef:
    name: str
    fn: Callable[[Sandbox], Verdict]
    expect: str
    group: str


CASES: list[CaseDef] = []


def add(name: str, expect: str, fn: Callable[[Sandbox], Verdict], group: str = "") -> None:
    if any(c.name == name for c in CASES):
        raise ValueError(f"duplicate case name {name}")
    CASES.append(CaseDef(name, fn, expect, group))


def case(name: str, expect: str, group: str = ""):
    def deco(fn):
        add(name, expect, fn, group)
        return fn
    return deco


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class M:
    """A scoring method as the campaign drives it."""

    name: str  # ldm | ltm | segment
    kind: str  # 3d | 2d
    good_id: str
    good_path: str  # relative to data/
    set_name: str = "id"

    def command(self, run: str = "run") -> list[str]:
        if self.name == "segment":
            return ["segment", "--run", run, "--variant", "c"]
        return ["score", "--run", run, "--method", self.name]

    def csv_rel(self, set_name: str | None = None, run: str = "run") -> str:
        s = set_name or self.set_name
        return f"{run}/segment/c/{s}.csv" if self.name == "segment" else f"{run}/scores/{self.name}/{s}.csv"

    def outputs_rel(self, set_name: str | None = None, run: str = "run") -> str:
        s = set_name or self.set_name
        return f"{run}/segment/c/{s}" if self.name == "segment" else f"{run}/maps/{self.name}/{s}"


LDM = M("ldm", "3d", "head-test-000", "id/test/head-test-000.nii.gz")
LTM = M("ltm", "3d", "head-test-000", "id/test/head-test-000.nii.gz")
SEG = M("segment", "2d", "slice-test-000-0", "2d/test/id/slice-test-000-0.nii.gz")
METHODS = {"ldm": LDM, "ltm": LTM, "segment": SEG}


def prepare(sb: Sandbox, m: M) -> None:
    """Fresh data and run copies for method ``m``."""
    sb.use_data(m.kind)
    sb.use_run(m.kind)


def score(sb: Sandbox, m: M, *extra: str | Path, timeout: float = 240, **kw) -> Call:
    return sb.cli(*m.command(), *extra, timeout=timeout, **kw)


def score_rows(sb: Sandbox, m: M, rows: Sequence[Sequence[str]], name: str = "score.csv") -> Call:
    return score(sb, m, "--data", sb.write_manifest(rows, name))


def good_row(m: M) -> list[str]:
    return [m.good_id, m.good_path, "", m.set_name, "test"]


# ----------------------------------------------------------------------------- images


def base_image(sb: Sandbox, m: M) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(sb.data / m.good_path))
    return np.asarray(img.dataobj).astype(np.float32), np.asarray(img.affine)


def nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` as NIfTI in its own dtype (complex, float64, uint8 ...), affine as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    try:
        img = nib.Nifti1Image(array, aff)
        img.set_qform(aff, code=1)
    except nib.spatialimages.HeaderDataError:  # a singular affine has no qform: stored as the sform alone
        img = nib.Nifti1Image(array, np.eye(4))
        img.set_qform(None, code=0)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))
    return path


def flat(sb: Sandbox) -> Path:
    """A folder for extra inputs, inside data/."""
    p = sb.data / "in"
    p.mkdir(parents=True, exist_ok=True)
    return p


# ----------------------------------------------------------------------------- judges on results


def _score(row: dict[str, str]) -> float:
    try:
        return float(row.get("pred_score", "nan"))
    except ValueError:
        return math.nan


def folder_score(sb: Sandbox, case_id: str) -> float | None:
    p = sb.out / f"{case_id}.txt"
    if not p.exists():
        return None
    try:
        return float(p.read_text().split()[0])
    except (ValueError, IndexError):
        return math.nan


def threshold(sb: Sandbox, m: M) -> float | None:
    return sb.setup.reference["thresholds"].get(m.name)


def judge_flagged(sb: Sandbox, call: Call, m: M, case_id: str, file_name: str, folder: bool = False,
                  problem: str | None = None) -> Verdict:
    """An implausible input: ok = a per-case error naming the file (non-zero exit), or a result that flags
    it OOD (manifest mode: ``flag`` 1 or a non-empty ``qc*`` column; folder mode: the score above the
    calibrated threshold, or a qc file). A normal (unflagged) or NaN score → silent."""
    v = Verdict()
    if call.timed_out:
        return v.add("hang", call.brief())
    if folder:
        s = folder_score(sb, case_id)
        qc = [p.name for p in sb.out.glob(f"{case_id}*") if "qc" in p.name.lower()]
        if s is not None:
            thr = threshold(sb, m)
            if qc:
                return v.add(None, f"flagged by {qc[0]}")
            if math.isnan(s):
                return v.add("silent", f"NaN score in {case_id}.txt, rc {call.rc}")
            if thr is not None and s > thr:
                return v.add(None, f"score {s:.3g} above threshold {thr:.3g}")
            return v.add("silent", f"normal score {s:.4g} (threshold {thr}) in {case_id}.txt, rc {call.rc}")
    else:
        st = sb.csv(m.csv_rel())
        row = st.row(case_id)
        if row is not None:
            s = _score(row)
            if math.isnan(s):
                return v.add("silent", f"NaN pred_score written for {case_id}, rc {call.rc}")
            if is_flagged(row):
                return v.add(None, f"flagged: pred_score {s:.4g}, flag {row.get('flag')} {qc_text(row)}".strip())
            return v.add("silent", f"normal score written: pred_score {s:.4g}, flag {row.get('flag', '-')}, "
                                   f"rc {call.rc}")
    if call.rc == 0:
        return v.add("silent", "rc 0, no result and no error")
    return expect_error(call, [file_name], problem)


def judge_per_case(sb: Sandbox, call: Call, m: M, bad_id: str, bad_name: str, problem: str | None,
                   good_ids: Sequence[str] = (), folder: bool = False) -> Verdict:
    """A bad file in a batch: ok = non-zero exit naming the file and the problem, the good cases scored,
    and no normal result for the bad one. Good cases not scored → misleading (one file aborted the batch)."""
    v = Verdict()
    if folder:
        got = folder_score(sb, bad_id)
        if got is not None:
            v.add("silent", f"a score ({got:.4g}) was written for the bad file {bad_name}")
        missing = [g for g in good_ids if folder_score(sb, g) is None]
    else:
        st = sb.csv(m.csv_rel())
        row = st.row(bad_id)
        if row is not None and not is_flagged(row):
            v.add("silent", f"a normal row was written for the bad file {bad_name}: pred_score {row.get('pred_score')}")
        missing = [g for g in good_ids if st.row(g) is None]
    e = expect_error(call, [bad_name], problem)
    v = merge_v(v, e)
    if missing and call.rc != 0 and not call.traceback and not call.timed_out:
        v.add("misleading", f"good case(s) {', '.join(missing)} not scored: the bad file aborted the batch")
    return v


def merge_v(a: Verdict, b: Verdict) -> Verdict:
    out = Verdict(set(a.flags) | set(b.flags), a.evidence)
    if b.evidence:
        out.add(None, b.evidence)
    return out


def rows_match_reference(sb: Sandbox, st: CsvState, ref: dict[str, dict[str, str]], ids: Sequence[str],
                         tol: float = 1e-6) -> str | None:
    """None when ``st`` holds exactly ``ids`` once each with the reference pred_score."""
    if st.problem():
        return st.problem()
    got = st.ids
    if sorted(got) != sorted(ids):
        missing = sorted(set(ids) - set(got))
        extra = sorted(set(got) - set(ids))
        return f"{st.path.name}: rows {len(got)} (missing {missing[:3]}, extra {extra[:3]})"
    for cid in ids:
        a, b = _score(st.row(cid)), float(ref[cid]["pred_score"])
        if not (abs(a - b) <= tol * max(1.0, abs(b))):
            return f"{cid}: pred_score {a:.6g} differs from a clean run's {b:.6g}"
    return None


__all__ = ["CASES", "CaseDef", "add", "case", "M", "LDM", "LTM", "SEG", "METHODS", "prepare", "score", "score_rows",
           "good_row", "base_image", "nifti", "flat", "judge_flagged", "judge_per_case", "rows_match_reference",
           "expect_error", "expect_success", "read_csv", "Verdict", "Sandbox", "merge_v", "folder_score", "re"]
