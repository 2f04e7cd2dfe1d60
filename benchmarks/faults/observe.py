"""What the fault campaign observes: CLI calls, folder snapshots, score CSVs, and the verdict judges.

* :class:`Call` — one CLI run (arguments, exit status, stdout/stderr with the case folder shown as
  ``<case>``, timing); ``traceback`` is true when its output holds "Traceback (most recent call last)";
* :func:`snapshot` — type, size, mode, mtime and sha256 of every entry under a folder (symlinks not
  followed); :func:`changed` / :func:`content_changed` compare two entries;
* :func:`read_csv` — a score CSV with its torn lines (wrong number of cells), a missing final
  newline and duplicated case ids; :func:`gzip_ok` — whether a ``.nii.gz`` is complete;
* :class:`Verdict` and the judges of a case's declared expectation: :func:`expect_error` (ok = a
  non-zero exit whose message names the file and matches the problem; rc 0 → ``silent``; another
  file or problem → ``misleading``; a timeout → ``hang``), :func:`expect_success` (ok = rc 0 and a
  correct result; a spurious error → ``misleading``; a wrong result → ``silent``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

TRACEBACK = "Traceback (most recent call last)"
CLASSES = ("ok", "misleading", "traceback", "silent", "data_loss", "outside_root")
FLAGS = CLASSES[1:] + ("hang",)

# ----------------------------------------------------------------------------- calls


@dataclass
class Call:
    """One CLI run: arguments, exit status (None: killed by the harness), output, timing."""

    args: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    signal_sent: str | None = None
    root: str = ""  # the case folder: replaced by <case> in ``text`` (its name must not match a problem regex)

    @property
    def text(self) -> str:
        text = self.stdout + "\n" + self.stderr
        return text.replace(self.root, "<case>") if self.root else text

    @property
    def flat(self) -> str:
        """stdout + stderr with line breaks removed (rich may still wrap long paths)."""
        return re.sub(r"\s*\n\s*", " ", self.text)

    @property
    def error_text(self) -> str:
        """What the CLI said about the failure: stderr from its first ``error:`` on (else stderr without
        library warnings), flat; the judges look for the file names and the problem here only."""
        err = self.stderr.replace(self.root, "<case>") if self.root else self.stderr
        i = err.find("error:")
        if i < 0:
            err = "\n".join(ln for ln in err.splitlines() if "Warning" not in ln and not ln.startswith("  "))
        else:
            err = err[i:]
        return re.sub(r"\s*\n\s*", " ", err)

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.text

    def tb_line(self) -> str:
        """The exception line of the last traceback."""
        lines = [ln for ln in self.text.splitlines() if ln.strip()]
        start = max(i for i, ln in enumerate(lines) if TRACEBACK in ln)
        for ln in lines[start + 1:]:
            if not ln.startswith((" ", "\t")) and not ln.startswith(TRACEBACK):
                return ln.strip()[:220]
        return lines[-1].strip()[:220]

    def error_line(self) -> str:
        """The CLI's 'error:' paragraph, else the last non-empty line of stderr (one line)."""
        err = self.stderr.replace(self.root, "<case>") if self.root else self.stderr
        m = re.search(r"(error:.*)", re.sub(r"\s*\n\s*", " ", err))
        if m:
            return m.group(1)[:300]
        boxed = [ln.strip("│ ").strip() for ln in err.splitlines() if ln.startswith("│")]
        if boxed:  # click/typer usage errors come in a rich box
            return " ".join(b for b in boxed if b)[:300]
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        return (lines[-1] if lines else (self.stdout.strip().splitlines() or [""])[-1])[:300]

    def brief(self) -> str:
        if self.timed_out:
            return f"timed out after {self.seconds:.0f}s"
        if self.traceback:
            return f"rc {self.rc}: traceback: {self.tb_line()}"
        return f"rc {self.rc}: {self.error_line()}" if self.rc else "rc 0"


# ----------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Entry:
    kind: str  # f(ile) d(ir) l(ink) o(ther)
    size: int
    mode: int
    mtime_ns: int
    sha: str | None = None
    target: str | None = None


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_of(p: Path) -> Entry | None:
    try:
        st = p.lstat()
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return Entry("l", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, target=os.readlink(p))
    if stat.S_ISDIR(st.st_mode):
        return Entry("d", 0, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    if stat.S_ISREG(st.st_mode):
        try:
            sha = _sha(p)
        except OSError:
            sha = "unreadable"
        return Entry("f", st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, sha)
    return Entry("o", 0, stat.S_IMODE(st.st_mode), st.st_mtime_ns)


def snapshot(root: Path) -> dict[str, Entry]:
    """Every entry under ``root`` (symlinks not followed) by relative path."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            e = entry_of(p)
            if e is not None:
                out[str(p.relative_to(root))] = e
    return out


def changed(a: Entry, b: Entry) -> bool:
    """Modified: content, type, mode or (for files and links) mtime differ; a folder's mtime is ignored."""
    if a.kind != b.kind or a.mode != b.mode or a.target != b.target:
        return True
    if a.kind == "d":
        return False
    return a.sha != b.sha or a.size != b.size or a.mtime_ns != b.mtime_ns


def content_changed(a: Entry, b: Entry) -> bool:
    return a.kind != b.kind or a.sha != b.sha or a.target != b.target


# ----------------------------------------------------------------------------- CSV helpers


@dataclass
class CsvState:
    path: Path
    exists: bool
    header: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    torn: list[int] = field(default_factory=list)  # line numbers with the wrong number of cells
    lines: list[str] = field(default_factory=list)
    no_final_newline: bool = False

    @property
    def ids(self) -> list[str]:
        return [r.get("case_id", "") for r in self.rows]

    @property
    def duplicates(self) -> list[str]:
        seen, dup = set(), []
        for i in self.ids:
            if i in seen and i not in dup:
                dup.append(i)
            seen.add(i)
        return dup

    def row(self, case_id: str) -> dict[str, str] | None:
        for r in self.rows:
            if r.get("case_id") == case_id:
                return r
        return None

    def problem(self) -> str | None:
        if not self.exists:
            return None
        if self.torn:
            return f"{self.path.name}: torn/garbled line(s) {self.torn[:3]}"
        if self.no_final_newline and self.lines:
            return f"{self.path.name}: last line has no newline (torn)"
        if self.duplicates:
            return f"{self.path.name}: case(s) written twice {self.duplicates[:3]}"
        return None


def read_csv(path: Path) -> CsvState:
    path = Path(path)
    if not path.exists():
        return CsvState(path, False)
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    st = CsvState(path, True, no_final_newline=bool(text) and not text.endswith("\n"))
    st.lines = text.splitlines()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        st.header = next(reader)
    except StopIteration:
        return st
    for i, cells in enumerate(reader, start=2):
        if len(cells) != len(st.header):
            st.torn.append(i)
            continue
        st.rows.append(dict(zip(st.header, cells, strict=True)))
    return st


def is_flagged(row: dict[str, str]) -> bool:
    """A row marks its case OOD: ``flag`` 1, or a non-empty quality-control reason."""
    qc = " ".join(v for k, v in row.items() if "qc" in k.lower() and v not in ("", "0", "ok", "none", "None"))
    return row.get("flag", "") in ("1", "True", "true") or bool(qc.strip())


def qc_text(row: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in row.items() if "qc" in k.lower() and v)


def gzip_ok(path: Path) -> str | None:
    """Why ``path`` is not a complete .nii.gz, or None."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return f"unreadable ({err})"
    if not data:
        return "0 bytes"
    try:
        body = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        return f"not a complete gzip ({type(err).__name__})"
    if len(body) < 352:
        return f"{len(body)} bytes after gunzip, less than a NIfTI header"
    return None


# ----------------------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    flags: set[str] = field(default_factory=set)
    evidence: str = ""

    def add(self, flag: str | None, why: str) -> "Verdict":
        if flag:
            self.flags.add(flag)
        self.evidence = f"{self.evidence}; {why}" if self.evidence else why
        return self


def mentions(text: str, name: str) -> bool:
    """``name`` (a file name, a relative path, an id) occurs in ``text`` as a whole path component run
    (``out`` matches ``/case/out/x.txt`` but not ``outputs``)."""
    return re.search(r"(?<![\w-])" + re.escape(name.rstrip("/")) + r"(?![\w-])", text) is not None


def _names(call: Call, names: Iterable[str]) -> list[str]:
    """The ``names`` (file names, paths, ids) the call's output does not mention."""
    text = call.error_text
    return [n for n in names if n and not mentions(text, n)]


def expect_error(call: Call, names: Sequence[str] = (), problem: str | None = None) -> Verdict:
    """Ok: non-zero exit, the output names every one of ``names`` and matches ``problem`` (regex, any case)."""
    v = Verdict()
    if call.timed_out:
        return v.add("hang", call.brief())
    if call.rc == 0:
        return v.add("silent", "rc 0, no error for a bad input")
    if call.traceback:
        return v.add(None, call.brief())
    missing = _names(call, names)
    if missing:
        return v.add("misleading", f"error does not name {', '.join(missing)}: {call.error_line()}")
    if problem and not re.search(problem, call.error_text, re.I):
        return v.add("misleading", f"error does not say /{problem}/: {call.error_line()}")
    if re.search(r" object at 0x[0-9a-f]+", call.error_text):
        return v.add("misleading", f"the message is an internal object's repr: {call.error_line()}")
    return v.add(None, call.error_line())


def expect_success(call: Call, check: Callable[[], str | None] | None = None) -> Verdict:
    """Ok: exit 0 and ``check()`` (the result is right) returns None; else its problem → silent."""
    v = Verdict()
    if call.timed_out:
        return v.add("hang", call.brief())
    if call.rc != 0:
        if call.traceback:
            return v.add(None, call.brief())
        return v.add("misleading", f"spurious error for a good input: {call.error_line()}")
    problem = check() if check else None
    if problem:
        return v.add("silent", problem)
    return v.add(None, "rc 0, result checked")


def merge(*verdicts: Verdict) -> Verdict:
    out = Verdict()
    for v in verdicts:
        out.flags |= v.flags
        if v.evidence:
            out.add(None, v.evidence)
    return out
