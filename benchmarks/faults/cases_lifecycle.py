"""Scoring over time: kill -9 and resume, a torn last row, two concurrent writers, a stale model, a
recalibration between two partial runs, a full disk, permissions, read-only and odd output folders.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import stat
from pathlib import Path
from typing import Callable

from .common import (
    LDM,
    LTM,
    SEG,
    M,
    Sandbox,
    Verdict,
    add,
    expect_error,
    expect_success,
    flat,
    good_row,
    prepare,
    read_csv,
    rows_match_reference,
    score,
)
from .harness import gzip_ok, wait_for
from .setup import KILL_IDS

STALE = r"stale|out of date|outdated|retrain|re-run|rerun|recalibrate|newer|changed since|was built on|--force"


def _ref(sb: Sandbox, m: M, name: str) -> dict:
    return sb.setup.reference[f"{m.name}/{name}" if m.name != "segment" else f"segment/{name}"]


def _kill_manifest(sb: Sandbox, m: M) -> tuple[Path, list[str]]:
    if m.name == "segment":
        return sb.data / "kill.csv", [f"slice-test-000-{i}" for i in range(4)]
    return sb.data / "kill.csv", list(KILL_IDS)


# ----------------------------------------------------------------------------- kill -9 during score, resume

def _kill_score(m: M) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        manifest, ids = _kill_manifest(sb, m)
        target = sb.root / m.csv_rel()
        p = sb.spawn(*m.command(), "--data", manifest)
        wait_for(lambda: (target.exists() and len(read_csv(target).rows) >= 1) or not p.running(), timeout=120,
                 every=0.01)
        early = not p.running()
        p.kill()
        p.wait(timeout=30)
        st = read_csv(target)
        v = Verdict()
        if st.torn or st.no_final_newline:
            v.add("silent", f"kill -9 left a torn row in {target.name} (lines {st.torn})")
        n_killed = len(st.rows)
        call = score(sb, m, "--data", manifest)
        ref = sb.setup.reference.get("segment/kill" if m.name == "segment" else f"{m.name}/kill")
        res = expect_success(call, lambda: rows_match_reference(sb, read_csv(target), ref, ids))
        out = Verdict(v.flags | res.flags, v.evidence)
        return out.add(None, f"{n_killed}/{len(ids)} rows at the kill{' (it had finished)' if early else ''}; "
                             f"resume: {res.evidence}")
    return fn


for _m in (LDM, LTM, SEG):
    add(f"score/{_m.name}/kill9_then_resume", "no torn row after kill -9; the rerun completes every case once, "
        "scores equal to a clean run", _kill_score(_m), "lifecycle")


# ----------------------------------------------------------------------------- torn last row, then resume

def _torn_row(m: M) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        ref = _ref(sb, m, "test" if m.name != "segment" else "id")
        test = sb.data / "test.csv"
        if m.name == "segment":  # the id set only
            text = test.read_text().splitlines()
            test = sb.write_manifest("\n".join(text[:1] + [ln for ln in text[1:] if ",id," in ln]) + "\n", "t.csv")
        ids = list(ref)
        rows = list(ref.values())
        header = list(rows[0])
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        w.writeheader()
        for r in rows[:-1] if len(rows) > 1 else rows:
            w.writerow(r)
        text = buf.getvalue()
        last = text.rstrip("\n").rsplit("\n", 1)[1] if len(rows) > 1 else ""
        if len(rows) == 1:  # one row: tear it
            text = text[: len(text) - len(text.rstrip("\n").rsplit("\n", 1)[1]) // 2 - 1]
            ids_complete: list[str] = []
        else:
            text = text[: len(text) - len(last) // 2 - 1]  # the last written row cut in half
            ids_complete = ids[:-2]
        target = sb.root / m.csv_rel()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        sb.check_outputs = False
        call = score(sb, m, "--data", test)
        st = read_csv(target)
        if call.rc != 0 and not call.traceback:
            v = expect_error(call, [target.name], r"torn|incomplete|truncat|corrupt|malformed|last line")
            return v
        v = expect_success(call, lambda: rows_match_reference(sb, st, ref, ids))
        if call.rc == 0 and not re.search(r"torn|incomplete|truncat|dropp|partial", call.flat, re.I):
            v.add(None, "(the dropped torn row was not mentioned)")
        return v.add(None, f"{len(ids_complete)} complete row(s) kept")
    return fn


for _m in (LDM, LTM, SEG):
    add(f"score/{_m.name}/torn_last_row_then_resume", "a torn last CSV row is dropped (and logged) on resume, the "
        "file parses, every case once with its clean-run score; or a clear refusal", _torn_row(_m), "lifecycle")


# ----------------------------------------------------------------------------- two writers

def _concurrent(m: M) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        manifest, ids = _kill_manifest(sb, m)
        a = sb.spawn(*m.command(), "--data", manifest)
        b = sb.spawn(*m.command(), "--data", manifest)
        ca, cb = a.wait(), b.wait()
        st = read_csv(sb.root / m.csv_rel())
        v = Verdict()
        refused = [c for c in (ca, cb) if c.rc not in (0, None)]
        for c in refused:
            if not c.traceback and not re.search(r"lock|another|running|busy|in use|concurrent", c.flat, re.I):
                v.add("misleading", f"second writer failed without saying why: {c.error_line()}")
        ref = sb.setup.reference.get("segment/kill" if m.name == "segment" else f"{m.name}/kill")
        problem = rows_match_reference(sb, st, ref, ids)
        if problem:
            v.add("silent", f"two concurrent runs: {problem}")
        else:
            v.add(None, f"rc {ca.rc}/{cb.rc}; {len(st.rows)} rows, each case once")
        return v
    return fn


for _m in (LDM, LTM):
    add(f"score/{_m.name}/two_concurrent_runs", "two score runs on one run dir: a lock refuses the second (clearly) "
        "or every case is written once", _concurrent(_m), "lifecycle")


# ----------------------------------------------------------------------------- stale model, recalibration

def _stale_first_stage(m: M) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        sb.release("run/first_stage")
        over = sb.data / "seed.yaml"
        over.write_text("first_stage: {optim: {seed: 7}}\n")
        train = sb.cli("train", "first-stage", "--run", "run", "--config", over, timeout=180)
        if train.rc != 0:
            return expect_success(train)
        call = score(sb, m, "--data", sb.data / "test.csv")
        if call.rc != 0:
            return expect_error(call, [], STALE)
        if re.search(STALE, call.flat, re.I):
            return Verdict().add(None, "rc 0 with a stale warning")
        ref = _ref(sb, m, "test" if m.name != "segment" else "id")
        row = read_csv(sb.root / m.csv_rel()).row(next(iter(ref)))
        got = row["pred_score"][:8] if row else "-"
        return Verdict().add("silent", f"old {'LDM' if m.name != 'ltm' else 'LTM'} + calibration used on the retrained "
                                       f"first stage without a word: {next(iter(ref))} "
                                       f"{float(next(iter(ref.values()))['pred_score']):.4g} -> {got}")
    return fn


for _m in (LDM, LTM, SEG):
    add(f"stale/{_m.name}/score_after_first_stage_retrained", "score refuses (or warns about) the LDM/LTM and "
        "calibration built on the previous first stage", _stale_first_stage(_m), "lifecycle")


def _recalibrate_between(m: M) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        sb.release("run/calibration")
        sb.keep_rows = False  # a new file may be started
        first = sb.write_manifest([good_row(m)], "first.csv")
        c1 = score(sb, m, "--data", first)
        before = read_csv(sb.root / m.csv_rel()).row(m.good_id)
        text = (sb.data / "manifest.csv").read_text().splitlines()
        val = [ln for ln in text if ln.endswith(",val")]
        cal = sb.write_manifest("\n".join([text[0], *val[:2]]) + "\n", "cal2.csv")
        c2 = sb.cli("calibrate", "--run", "run", "--method", m.name, "--data", cal)
        c3 = score(sb, m, "--data", sb.data / "test.csv")
        if c1.rc != 0 or c2.rc != 0:
            return expect_success(c1 if c1.rc else c2)
        if c3.rc != 0:
            return expect_error(c3, [], r"calibrat")
        st = read_csv(sb.root / m.csv_rel())
        calib_cols = [k for k in st.header if "calib" in k.lower()]
        if calib_cols and len({r[calib_cols[0]] for r in st.rows}) == 1:
            return Verdict().add(None, f"one {calib_cols[0]} across rows")
        if re.search(r"calibrat", c3.flat, re.I):
            return Verdict().add(None, "rc 0 with a calibration warning")
        now = st.row(m.good_id)
        if before and now and before["pred_score"] != now["pred_score"]:
            return Verdict().add(None, "the old row was rescored under the new calibration")
        return Verdict().add("silent", f"{st.path.name} mixes two calibrations: {m.good_id} "
                                       f"({before['pred_score'][:7] if before else '-'}) from the first, "
                                       f"{len(st.rows) - 1} row(s) from the second, no calibration column or warning")
    return fn


for _m in (LDM, LTM):
    add(f"stale/{_m.name}/recalibrate_between_partial_runs", "resuming under a different calibration starts a new "
        "file, refuses, or tags each row with its calibration", _recalibrate_between(_m), "lifecycle")


# ----------------------------------------------------------------------------- disk full

def _fill(path: Path) -> None:
    """Fill the file system of ``path`` to the last few KB."""
    filler = path / ".filler"
    try:
        with filler.open("wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass
    size = filler.stat().st_size
    with filler.open("r+b") as fh:
        fh.truncate(max(0, size - 6 * 1024))


def _disk_full(m: M, where: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        sb.use_data(m.kind)
        if where == "whole_run":
            run = sb.root / "run"
            if not sb.tmpfs(run, "12m"):
                return Verdict().add(None, "tmpfs mount refused: not run")
            shutil.copytree(sb.setup.run_dir(m.kind), run, dirs_exist_ok=True, symlinks=True)
            sb.use_run_fixup(run)
            _fill(run)
        else:
            sb.use_run(m.kind)
            if where == "maps":
                mount = sb.root / m.outputs_rel().rsplit("/", 1)[0]
            else:
                mount = sb.out
            if not sb.tmpfs(mount, "20k"):
                return Verdict().add(None, "tmpfs mount refused: not run")
        manifest, ids = _kill_manifest(sb, m)
        if where == "folder":
            d = flat(sb)
            for p in sorted((sb.data / Path(m.good_path).parent).glob("*.nii.gz")):
                shutil.copy(p, d / p.name)
            call = score(sb, m, "--input", d, "--output", sb.out)
            out_dir = sb.out
            names = ["out"]
        else:
            call = score(sb, m, "--data", manifest)
            out_dir = sb.root / m.outputs_rel()
            names = [m.outputs_rel().split("/", 1)[1]] if where == "maps" else ["run"]
        v = expect_error(call, names, r"no space|disk full|ENOSPC|errno 28")
        # rows pointing at maps that are missing or torn
        st = read_csv(sb.root / m.csv_rel())
        bad_rows = []
        for r in st.rows:
            for k in ("map_path", "healed_path", "mask_path"):
                if r.get(k):
                    p = sb.root / r[k]
                    why = "missing" if not p.exists() else gzip_ok(p)
                    if why:
                        bad_rows.append(f"{r['case_id']} {k} {why}")
        if bad_rows:
            v.add("silent", f"rows whose outputs are broken: {bad_rows[:2]}")
        if out_dir.exists():
            leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".") and p.name != ".filler"]
            if leftovers:
                v.add(None, f"(temporary files left: {leftovers[:2]})")
        return v
    return fn


for _m, _w in ((LDM, "maps"), (LDM, "folder"), (LDM, "whole_run"), (SEG, "maps")):
    add(f"diskfull/{_m.name}/{_w}", "full disk (tmpfs): error naming the output path and 'no space'; no 0-byte or "
        "torn outputs, no row without its outputs, models intact", _disk_full(_m, _w), "lifecycle")


# ----------------------------------------------------------------------------- permissions under umask 022

def _modes(sb: Sandbox, roots: list[Path]) -> list[str]:
    """Files/folders created or modified under ``roots`` whose mode is not 0644 / 0755."""
    bad = []
    for root in roots:
        if not root.exists():
            continue
        for p in [root, *root.rglob("*")]:
            rel = str(p.relative_to(sb.root))
            prev = sb.before.get(rel) if sb.before else None
            st = p.lstat()
            if prev is not None and prev.mtime_ns == st.st_mtime_ns:
                continue
            mode = stat.S_IMODE(st.st_mode)
            want = 0o755 if stat.S_ISDIR(st.st_mode) else 0o644
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                if mode != want:
                    bad.append(f"{rel} {mode:04o}")
    return bad


def _permissions(kind: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        m = SEG if kind == "segment" else LDM
        prepare(sb, m)
        if kind == "score_manifest":
            call, roots = score(sb, LDM, "--data", sb.data / "test.csv"), [sb.run / "scores", sb.run / "maps"]
        elif kind == "score_folder":
            d = flat(sb)
            shutil.copy(sb.data / LDM.good_path, d)
            call, roots = score(sb, LDM, "--input", d, "--output", sb.out), [sb.out]
        elif kind == "segment":
            call, roots = score(sb, SEG, "--data", sb.data / "test.csv"), [sb.run / "segment"]
        elif kind == "calibrate":
            sb.release("run/calibration")
            call, roots = sb.cli("calibrate", "--run", "run", "--method", "ltm"), [sb.run / "calibration"]
        else:  # train
            sb.release("run/transformer")
            call, roots = sb.cli("train", "transformer", "--run", "run", timeout=120), [sb.run / "transformer"]
        bad = _modes(sb, roots)
        return expect_success(call, lambda: f"{len(bad)} output(s) not 0644/0755 under umask 022: "
                                            f"{', '.join(bad[:3])}" if bad else None)
    return fn


for _k in ("score_manifest", "score_folder", "segment", "calibrate", "train"):
    add(f"perms/{_k}", "every file written under umask 022 is 0644 (folders 0755), not 0600", _permissions(_k),
        "lifecycle")


# ----------------------------------------------------------------------------- output folders and run paths

def _outputs(kind: str) -> Callable[[Sandbox], Verdict]:
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, LDM)
        d = flat(sb)
        shutil.copy(sb.data / LDM.good_path, d)
        if kind == "read_only_output":
            if not sb.read_only(sb.out):
                return Verdict().add(None, "read-only bind mount refused: not run")
            return expect_error(score(sb, LDM, "--input", d, "--output", sb.out), ["out"], r"read-only|permission")
        if kind == "read_only_maps":
            maps = sb.run / "maps"
            if not sb.read_only(maps):
                return Verdict().add(None, "read-only bind mount refused: not run")
            return expect_error(score(sb, LDM, "--data", sb.data / "test.csv"), ["maps"], r"read-only|permission")
        if kind == "output_is_a_file":
            f = sb.data / "results.txt"
            f.write_text("not a folder\n")
            return expect_error(score(sb, LDM, "--input", d, "--output", f), ["results.txt"],
                                r"not a (folder|directory)|exists|file")
        if kind == "symlinked_run_dir":
            (sb.root / "runlink").symlink_to("run")
            call = sb.cli(*LDM.command("runlink"), "--data", sb.data / "test.csv")
            ref = sb.setup.reference["ldm/test"]
            return expect_success(call, lambda: rows_match_reference(sb, read_csv(sb.run / "scores/ldm/id.csv"),
                                                                    ref, list(ref)))
        if kind == "unicode_space_paths":
            u = sb.data / "scans ü é"
            u.mkdir()
            shutil.copy(sb.data / LDM.good_path, u / "hé llo.nii.gz")
            out = sb.root / "out" / "résultats 1"
            call = score(sb, LDM, "--input", u, "--output", out)
            return expect_success(call, lambda: None if (out / "hé llo.txt").exists() and gzip_ok(
                out / "hé llo.nii.gz") is None else "no hé llo.txt / .nii.gz")
        if kind == "input_without_output":
            return expect_error(score(sb, LDM, "--input", d), ["--output"], r"together|output")
        if kind == "input_missing":
            return expect_error(score(sb, LDM, "--input", sb.data / "nope", "--output", sb.out), ["nope"],
                                r"folder|director|does not exist|no such")
        if kind == "input_empty":
            e = sb.data / "empty"
            e.mkdir()
            return expect_error(score(sb, LDM, "--input", e, "--output", sb.out), ["empty"], r"no image|empty")
        if kind == "score_method_segment":
            return expect_error(sb.cli("score", "--run", "run", "--method", "segment"), ["segment"], r"segment")
        if kind == "unknown_set_flag":
            return expect_error(score(sb, LDM, "--data", sb.data / "test.csv", "--set", "id", "--set", "nosuch"),
                                ["nosuch"], r"set")
        if kind == "evaluate_without_scores":
            call = sb.cli("evaluate", "--run", "run")
            if call.rc == 0 and re.search(r"warning.*no scores", call.flat, re.I | re.S):
                return Verdict().add(None, "rc 0 with a warning: no scores at all")
            return expect_error(call, [], r"score")
        raise ValueError(kind)
    return fn


for _k, _e in (("read_only_output", "error naming the read-only output folder"),
               ("read_only_maps", "error naming the read-only maps folder"),
               ("output_is_a_file", "error: --output is a file"),
               ("symlinked_run_dir", "a symlinked --run works, results equal a clean run"),
               ("unicode_space_paths", "unicode and spaces in input/output paths work"),
               ("input_without_output", "usage error: --input needs --output"),
               ("input_missing", "error naming the missing input folder"),
               ("input_empty", "error naming the empty input folder"),
               ("score_method_segment", "usage error: segment is not a detection method"),
               ("unknown_set_flag", "error naming the unknown set"),
               ("evaluate_without_scores", "evaluate on a run without scores: clear error or warning")):
    add(f"outputs/{_k}", _e, _outputs(_k), "outputs")

