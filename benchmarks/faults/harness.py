"""The fault campaign's sandboxes: one folder per case, its CLI calls, and the generic verdicts.

A case runs in its own folder ``<work>/cases/<name>/``::

    run/    a fresh copy of a trained tiny run (its config.yaml pointed at data/manifest.csv)
    data/   fresh copies of the input scans and the manifests
    out/    the folder-mode output (created by the command, or by the case)
    cache/  LDM_OOD_CACHE_DIR, tmp/ TMPDIR of the command (allowed to change)

Every CLI call is ``python -m ldm_ood ...`` in a subprocess (cwd = the case folder, umask 022,
``OMP_NUM_THREADS=1``, ``COLUMNS`` wide so rich does not wrap paths), with a timeout.

Before the first call the case folder is snapshotted (type, size, mode, mtime, sha256 of every
entry, symlinks not followed); after the case, again. From the two snapshots and the calls:

* ``traceback`` — any call's stdout/stderr holds "Traceback (most recent call last)";
* ``outside_root`` — an entry created, modified or deleted outside the case's write roots
  (``run/``, ``out/``, ``cache/``, ``tmp/`` and any root the case adds);
* ``data_loss`` — an entry outside the write roots that existed before is gone or its content
  changed (an input scan, a manifest), a protected file inside the run (trained models, DONE,
  calibration; the case may release them) is gone or changed, or a complete score-CSV line that
  existed before is gone;
* ``silent`` (generic part) — a torn output left behind: a ``.nii.gz`` that is empty or not a
  complete gzip, or a score CSV with a torn or duplicated row.

Each case adds its own verdict from its declared expectation (the judges of :mod:`.observe` and
:mod:`.common`): ``silent`` for rc 0 (or rows written) on a bad input or a wrong result,
``misleading`` for an error that does not name the file or the problem, ``hang`` for a call that
ran into its timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .observe import (
    CLASSES,
    FLAGS,
    TRACEBACK,
    Call,
    CsvState,
    Entry,
    Verdict,
    _sha,
    changed,
    content_changed,
    entry_of,
    expect_error,
    expect_success,
    gzip_ok,
    is_flagged,
    mentions,
    merge,
    qc_text,
    read_csv,
    snapshot,
)

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
PYTHON = sys.executable
DEFAULT_TIMEOUT = 240

__all__ = ["CLASSES", "FLAGS", "TRACEBACK", "Call", "CsvState", "Entry", "Verdict", "_sha", "changed",
           "content_changed", "entry_of", "expect_error", "expect_success", "gzip_ok", "is_flagged", "merge",
           "mentions", "qc_text", "read_csv", "snapshot", "Sandbox", "Spawned", "wait_for", "tree_state", "REPO",
           "SRC", "PYTHON", "DEFAULT_TIMEOUT", "WARM"]

# ----------------------------------------------------------------------------- sandbox


def base_env() -> dict[str, str]:
    """The environment of every CLI call (and of the warm server): one thread, wide rich output."""
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "4000",
                "NO_COLOR": "1", "TERM": "dumb"})
    return env


class Sandbox:
    """The folder of one case, its inputs, its CLI calls and its write roots (module docstring)."""

    def __init__(self, root: Path, setup: "Any", logs: Path):
        self.root = root
        self.setup = setup
        self.logs = logs
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.tmp, self.cache = root / "tmp", root / "cache"
        self.tmp.mkdir()
        self.cache.mkdir()
        self.out = root / "out"
        self.data = root / "data"
        self.run: Path | None = None
        self.allowed: list[Path] = [self.tmp, self.cache, self.out]
        self.protected: set[str] = set()
        self.keep_rows = True  # complete score-CSV lines that exist before must survive
        self.check_outputs = True  # generic torn-output check on the write roots
        self.calls: list[Call] = []
        self.before: dict[str, Entry] | None = None
        self.mounts: list[Path] = []
        self.notes: list[str] = []
        self._before_lines: dict[str, list[str]] = {}

    # -- contents

    def use_run(self, kind: str = "3d", name: str = "run") -> Path:
        """A fresh copy of the trained ``kind`` run, allowed to change except its models/calibration."""
        dst = self.root / name
        shutil.copytree(self.setup.run_dir(kind), dst, symlinks=True)
        return self.use_run_fixup(dst)

    def use_run_fixup(self, dst: Path) -> Path:
        """Register the run copy at ``dst``: its config.yaml points at data/manifest.csv, it is a write root,
        its models, DONE files and calibration are protected."""
        cfg = dst / "config.yaml"
        manifest = self.data / "manifest.csv"
        cfg.write_text(re.sub(r"(?m)^(\s*manifest:).*$", lambda m: f"{m.group(1)} {manifest}", cfg.read_text()))
        self.allowed.append(dst)
        for p in dst.rglob("*"):
            rel = str(p.relative_to(self.root))
            if p.is_file() and (p.name in ("model.safetensors", "config.json", "DONE") or "calibration" in p.parts):
                self.protected.add(rel)
        if self.run is None:
            self.run = dst
        return dst

    def use_data(self, kind: str = "3d") -> Path:
        """Fresh copies of the ``kind`` cohort's inputs and its manifests in ``data/``."""
        shutil.copytree(self.setup.data_dir(kind), self.data, symlinks=True)
        return self.data

    def release(self, *rels: str) -> None:
        """Files (relative to the case folder, or prefixes) the case may legitimately change."""
        def released(p: str) -> bool:
            return any(p == r or p.startswith(r.rstrip("/") + "/") for r in rels)
        self.protected = {p for p in self.protected if not released(p)}

    def allow(self, path: Path) -> None:
        self.allowed.append(path)

    def write_manifest(self, rows: Sequence[Sequence[str]] | str, name: str = "score.csv",
                       header: Sequence[str] = ("case_id", "path", "mask", "set", "split"),
                       encoding: str = "utf-8", newline: str = "\n") -> Path:
        """A manifest in ``data/``; ``rows`` as lists of cells, or the whole text."""
        path = self.data / name
        if isinstance(rows, str):
            text = rows
        else:
            text = newline.join([",".join(header), *(",".join(r) for r in rows)]) + newline
        path.write_bytes(text.encode(encoding))
        self.prepared(path)
        return path

    def prepared(self, path: Path) -> None:
        """An input made after the 'before' snapshot: counted as existing before (not a write by the CLI)."""
        if self.before is not None:
            self.before[str(path.relative_to(self.root))] = entry_of(path)

    # -- calls

    def begin(self) -> None:
        """The 'before' snapshot (taken once; automatically before the first call)."""
        if self.before is None:
            self.before = snapshot(self.root)
            self.remember_rows()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = base_env()
        env.update({"LDM_OOD_CACHE_DIR": str(self.cache), "TMPDIR": str(self.tmp)})
        env.update(extra or {})
        return env

    def cli(self, *args: str | Path, timeout: float = DEFAULT_TIMEOUT, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Call:
        """Run ``ldm-ood ARGS`` to its end (killed after ``timeout`` s); the call is recorded."""
        return self.spawn(*args, env=env, cwd=cwd).wait(timeout)

    def spawn(self, *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> "Spawned":
        """Start ``ldm-ood ARGS`` (new session, umask 022, stdin /dev/null, output to the harness's log folder),
        forked from the warm server (:mod:`.warm`) when one runs, else as ``python -m ldm_ood``."""
        self.begin()
        self.logs.mkdir(parents=True, exist_ok=True)
        n = len(list(self.logs.glob("*.out")))
        out, err = self.logs / f"{n}.out", self.logs / f"{n}.err"
        argv = [str(a) for a in args]
        if WARM.server is not None:
            proc: Any = WARM.server.start_call(argv, str(cwd or self.root), self.env(env), str(out), str(err))
        else:
            def pre() -> None:
                os.umask(0o022)
                os.setsid()

            with out.open("wb") as fo, err.open("wb") as fe:
                proc = subprocess.Popen([PYTHON, "-m", "ldm_ood", *argv], cwd=cwd or self.root, env=self.env(env),
                                        stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, preexec_fn=pre)
        return Spawned(self, argv, proc, out, err, time.perf_counter())

    # -- mounts (disk full, read-only folders); undone in cleanup()

    def tmpfs(self, path: Path, size: str) -> bool:
        path.mkdir(parents=True, exist_ok=True)
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                            capture_output=True).returncode == 0
        if ok:
            self.mounts.append(path)
        return ok

    def read_only(self, path: Path) -> bool:
        path.mkdir(parents=True, exist_ok=True)
        ok = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
        if ok:
            self.mounts.append(path)
            ok = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True).returncode == 0
        return ok

    def cleanup(self, keep: bool) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        self.mounts.clear()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)
            shutil.rmtree(self.logs, ignore_errors=True)

    # -- results

    def csv(self, rel: str) -> CsvState:
        return read_csv(self.root / rel)

    def generic(self) -> Verdict:
        """traceback / outside_root / data_loss / torn outputs from the calls and the two snapshots."""
        v = Verdict()
        tbs = [c for c in self.calls if c.traceback]
        if tbs:
            v.add("traceback", f"traceback: {tbs[0].tb_line()}")
        if self.before is None:
            return v
        after = snapshot(self.root)
        roots = [str(p.relative_to(self.root)) for p in self.allowed]

        def inside(rel: str) -> bool:
            return any(rel == r or rel.startswith(r + "/") for r in roots)

        created = [r for r in after if r not in self.before and not inside(r)]
        deleted = [r for r in self.before if r not in after and not inside(r)]
        modified = [r for r in after if r in self.before and not inside(r) and changed(self.before[r], after[r])]
        if created or deleted or modified:
            what = [f"+{r}" for r in created[:3]] + [f"-{r}" for r in deleted[:2]] + [f"~{r}" for r in modified[:2]]
            v.add("outside_root", f"outside the run/output folder: {' '.join(what)}")
        lost = [r for r in deleted if self.before[r].kind == "f"]
        lost += [r for r in modified if content_changed(self.before[r], after[r]) and self.before[r].kind == "f"]
        for rel in sorted(self.protected):
            if rel not in after:
                lost.append(rel)
            elif rel in self.before and content_changed(self.before[rel], after[rel]):
                lost.append(rel)
        if self.keep_rows:
            for rel, lines_before in self._before_lines.items():
                if not inside(rel) or not ({"scores", "segment"} & set(Path(rel).parts)):
                    continue
                now = set(read_csv(self.root / rel).lines) if (self.root / rel).exists() else set()
                gone = [ln for ln in lines_before if ln not in now]
                if gone:
                    lost.append(f"{rel} ({len(gone)} of {len(lines_before)} line(s))")
        if lost:
            v.add("data_loss", f"lost or changed: {', '.join(dict.fromkeys(lost[:4]))}")
        if self.check_outputs:
            torn = []
            for rel, e in after.items():
                if not inside(rel) or e.kind != "f" or rel.startswith(("tmp/", "cache/")):
                    continue
                name = Path(rel).name
                if name.endswith(".nii.gz") and not name.startswith(".") and (
                        rel not in self.before or changed(self.before[rel], e)):
                    why = gzip_ok(self.root / rel)
                    if why:
                        torn.append(f"{rel}: {why}")
                if name.endswith(".csv") and ("scores" in Path(rel).parts or "segment" in Path(rel).parts):
                    why = read_csv(self.root / rel).problem()
                    if why:
                        torn.append(why)
            if torn:
                v.add("silent", f"torn output left: {'; '.join(torn[:3])}")
        return v

    def remember_rows(self) -> None:
        """Record the complete lines of every score CSV now (for the data_loss check)."""
        self._before_lines = {}
        for p in self.root.rglob("*.csv"):
            rel = str(p.relative_to(self.root))
            st = read_csv(p)
            good = [ln for i, ln in enumerate(st.lines, start=1) if i not in st.torn]
            if st.no_final_newline and good:
                good = good[:-1]
            self._before_lines[rel] = good


class _Warm:
    server: Any = None  # a faults.warm.Server while the campaign runs warm


WARM = _Warm()


@dataclass
class Spawned:
    """A started CLI call: ``proc`` is a ``subprocess.Popen`` or a :class:`.warm.WarmCall` (pid, poll, wait)."""

    sb: Sandbox
    args: list[str]
    proc: Any
    out: Path
    err: Path
    t0: float
    signal_sent: str | None = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the call's process group (the CLI and anything it started)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        self.signal_sent = signal.Signals(sig).name

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> Call:
        timed_out = False
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait(timeout=60)
            timed_out = True
        call = Call(self.args, None if timed_out else self.proc.returncode, self.out.read_text(errors="replace"),
                    self.err.read_text(errors="replace"), time.perf_counter() - self.t0, timed_out, self.signal_sent,
                    root=str(self.sb.root))
        self.sb.calls.append(call)
        return call


def wait_for(pred: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    t_end = time.perf_counter() + timeout
    while time.perf_counter() < t_end:
        if pred():
            return True
        time.sleep(every)
    return pred()


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of the files under ``root`` (cheap, for polling)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            try:
                st = p.lstat()
            except OSError:
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out
