"""The fault and bad-input campaign (issue 12): ≥ 100 cases against the real ``ldm-ood`` CLI on tiny runs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_faults.py [--cases PATTERN] [--jobs 1] [--keep] [--rerun]
                                                                  [--cold] [--list] [--work DIR] [--out JSON]

Once per source version it trains a tiny 3D run (first stage, LDM, transformer; calibrated for
``ldm`` and ``ltm``) and a tiny-2d run (calibrated for ``segment``) and caches them in
``<work>/setup/`` (default work folder: ``benchmarks/results/faults-work``). Every case then copies
what it needs (the run, the inputs) into its own folder ``<work>/cases/<case>/``, applies its fault,
runs the CLI as subprocesses with a timeout and classifies the outcome (a case can have several flags):

* ``ok`` — the behaviour is right: a clear error naming the file and the problem with a non-zero
  exit, or a correct result;
* ``misleading`` — an error, but it names the wrong file or problem (or aborts the good cases too);
* ``traceback`` — a Python traceback on stdout/stderr;
* ``silent`` — rc 0 (or results written) although the input was bad or the result is wrong;
* ``data_loss`` — a file that existed (a model, a score row, an input scan) is gone or changed;
* ``outside_root`` — an entry created/modified/deleted outside the run and output folders.

(``hang``: a call ran into its timeout.) How each is detected: :mod:`faults.harness` and
:mod:`faults.observe`; the cases and what "ok" means for each: ``faults/cases_*.py`` (``--list``
prints them). Results go to ``benchmarks/results/faults.json`` (resumable: cases already there are
skipped unless ``--rerun``); the summary and the per-case table are printed.

Each CLI call is forked from a warm interpreter that imported torch and MONAI once
(:mod:`faults.warm`; the child sets its own session, umask, folder, environment and output files
and runs the Typer app as ``python -m ldm_ood`` does): 170 cases take ~12 min on 2 busy cores
instead of ~35. ``--cold`` execs a fresh ``python -m ldm_ood`` per call instead.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import cases_folder, cases_inputs, cases_lifecycle, cases_manifest, cases_models, cases_train  # noqa: E402,F401
from faults.common import CASES, CaseDef  # noqa: E402
from faults.harness import CLASSES, FLAGS, REPO, WARM, Sandbox, base_env  # noqa: E402
from faults.setup import Setup, source_key  # noqa: E402
from faults.warm import Server  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


#: the order of the campaign (and of its table): the issue's classes roughly as it lists them
GROUP_ORDER = ("traversal", "train", "lifecycle", "implausible", "manifest", "model", "broken", "folder", "outputs")


def _select(pattern: str | None) -> list[CaseDef]:
    ordered = sorted(CASES, key=lambda c: GROUP_ORDER.index(c.group) if c.group in GROUP_ORDER else len(GROUP_ORDER))
    if not pattern:
        return ordered
    pats = [p for p in pattern.split(",") if p]
    return [c for c in ordered
            if any((fnmatch.fnmatch(c.name, p) if any(ch in p for ch in "*?[") else p in c.name) for p in pats)]


def _unmount_stale(work: Path) -> None:
    """Mounts a crashed earlier campaign left under ``work`` (tmpfs, read-only binds)."""
    try:
        mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for m in sorted((m for m in mounts if m.startswith(str(work.resolve()) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def run_case(c: CaseDef, setup: Setup, work: Path, keep: bool) -> dict:
    safe = c.name.replace("/", "__")
    sb = Sandbox(work / "cases" / safe, setup, work / "logs" / safe)
    t0 = time.perf_counter()
    error = None
    try:
        verdict = c.fn(sb)
    except Exception:  # a bug of the campaign itself: recorded, not counted as a finding
        error = traceback.format_exc(limit=4)
        from faults.harness import Verdict

        verdict = Verdict()
    try:
        generic = sb.generic()
    except Exception:
        generic = None
        error = (error or "") + traceback.format_exc(limit=4)
    finally:
        sb.cleanup(keep)
    flags = set(verdict.flags) | (generic.flags if generic else set())
    evidence = "; ".join(e for e in (verdict.evidence, generic.evidence if generic else "") if e)
    return {
        "case": c.name, "group": c.group, "expect": c.expect,
        "flags": sorted(flags), "class": "ok" if not flags and not error else ("harness_error" if error else "fault"),
        "evidence": evidence, "harness_error": error, "seconds": round(time.perf_counter() - t0, 1),
        "source_key": source_key(), "mode": "warm" if WARM.server is not None else "cold",
        "calls": [{"args": cl.args, "rc": cl.rc, "seconds": round(cl.seconds, 1), "timed_out": cl.timed_out,
                   "signal": cl.signal_sent, "stderr_tail": cl.stderr[-1500:], "stdout_tail": cl.stdout[-400:]}
                  for cl in sb.calls],
    }


def summary(records: list[dict]) -> dict[str, int]:
    out = {"cases tried": len(records), "ok": sum(1 for r in records if not r["flags"] and not r["harness_error"])}
    for f in FLAGS:
        out[f] = sum(1 for r in records if f in r["flags"])
    out["harness errors"] = sum(1 for r in records if r["harness_error"])
    return out


def summary_line(s: dict[str, int]) -> str:
    keys = ["cases tried", *CLASSES] + [k for k in ("hang", "harness errors") if s.get(k)]
    return "; ".join(f"{k} {s[k]}" for k in keys)


def table(records: list[dict], width: int = 170) -> str:
    name_w = max([len(r["case"]) for r in records] + [4])
    lines = [f"{'case':<{name_w}}  {'class':<22}  evidence", "-" * min(width + name_w, 240)]
    for r in records:
        cls = ",".join(r["flags"]) or ("HARNESS ERROR" if r["harness_error"] else "ok")
        ev = r["evidence"].replace("\n", " ")
        if r["harness_error"]:
            ev = r["harness_error"].strip().splitlines()[-1] + " | " + ev
        lines.append(f"{r['case']:<{name_w}}  {cls:<22}  {ev[:width]}")
    return "\n".join(lines)


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", help="run only cases whose name contains this (comma-separated; * ? [ ] = glob)")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1: one after the other)")
    ap.add_argument("--keep", action="store_true", help="keep each case's folder under <work>/cases/")
    ap.add_argument("--rerun", action="store_true", help="run cases already in the JSON again")
    ap.add_argument("--work", type=Path, default=RESULTS / "faults-work", help="cache and case folders")
    ap.add_argument("--out", type=Path, default=RESULTS / "faults.json", help="results JSON")
    ap.add_argument("--fresh-setup", action="store_true", help="rebuild the cached trained runs")
    ap.add_argument("--list", action="store_true", help="list the cases and what ok means for each, then exit")
    ap.add_argument("--cold", action="store_true",
                    help="exec a fresh `python -m ldm_ood` per call instead of forking a warm interpreter that has "
                         "imported torch/MONAI once (faults/warm.py); same behaviour, 3-5x slower")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    selected = _select(args.cases)
    if args.list:
        for c in selected:
            print(f"{c.name:<60} {c.expect}")
        print(f"{len(selected)} cases")
        return 0
    work = args.work.resolve()
    _unmount_stale(work)
    setup = Setup(work)
    setup.ensure(force=args.fresh_setup)

    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    records: dict[str, dict] = data.get("cases", {})
    todo = [c for c in selected if args.rerun or c.name not in records]
    print(f"{len(selected)} cases selected, {len(selected) - len(todo)} already in {args.out} "
          f"({'--rerun' if args.rerun else 'skipped'}), {len(todo)} to run", flush=True)
    t0 = time.perf_counter()

    def one(c: CaseDef) -> dict:
        rec = run_case(c, setup, work, args.keep)
        cls = ",".join(rec["flags"]) or ("HARNESS ERROR" if rec["harness_error"] else "ok")
        print(f"[{time.perf_counter() - t0:6.0f}s] {c.name:<58} {cls:<20} {rec['evidence'][:110]}", flush=True)
        return rec

    def store(rec: dict) -> None:
        records[rec["case"]] = rec
        data.update({"meta": {"updated": datetime.datetime.now().isoformat(timespec="seconds"),
                              "source_key": source_key(), "git": _git()}, "cases": records})
        _save(args.out, data)

    if todo and not args.cold:
        WARM.server = Server(work, base_env())
    try:
        if args.jobs <= 1:
            for c in todo:
                store(one(c))
        else:
            with ThreadPoolExecutor(args.jobs) as pool:
                for rec in pool.map(one, todo):
                    store(rec)
    finally:
        if WARM.server is not None:
            WARM.server.stop()
            WARM.server = None
    names = [c.name for c in selected]
    chosen = [records[n] for n in names if n in records]
    stale = sum(1 for r in chosen if r.get("source_key") != source_key())
    print()
    print(table(chosen))
    print()
    s = summary(chosen)
    data["summary"] = s
    _save(args.out, data)
    print(summary_line(s))
    if stale:
        print(f"({stale} of these results were made with another source version; --rerun to refresh them)")
    print(f"campaign wall time this call: {time.perf_counter() - t0:.0f}s; results: {args.out}")
    return 0


def _git() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
