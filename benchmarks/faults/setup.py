"""The campaign's trained runs, made once and cached in ``<work>/setup/`` (rebuilt when ``src/`` changes).

* ``cohort/``: ``ldm-ood synth --preset tiny`` (16³ heads, 16² slices);
* ``data3d/``: the ID heads (``id/{train,val,test}``) and ``manifest.csv`` (train / val / test rows),
  ``test.csv`` (the 3 ID test heads, set ``id``), ``kill.csv`` (8 rows: the test heads under 8 ids);
* ``data2d/``: the 2D slices (``2d/...``), ``manifest.csv`` and ``test.csv`` (one ID and one sprite
  slice with its mask);
* ``run3d/``: tiny run: first stage, LDM, transformer, calibrated for ``ldm`` and ``ltm``;
* ``run2d/``: tiny-2d run: first stage, LDM, calibrated for ``segment``;
* ``reference.json``: the scores of ``test.csv`` / ``kill.csv`` (ldm, ltm) and of the 2D
  ``test.csv`` (segment, variant c) in a copy of the runs: what a correct result is.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .harness import PYTHON, REPO, SRC

SETUP_VERSION = 3
ID_TEST = ("head-test-000", "head-test-001", "head-test-002")
KILL_IDS = tuple(f"k{i}-{c}" for i in range(3) for c in ID_TEST)[:8]


def source_key() -> str:
    """sha256 over the package source and this campaign's setup version."""
    h = hashlib.sha256(f"v{SETUP_VERSION}".encode())
    for p in sorted((SRC / "ldm_ood").rglob("*")):
        if p.is_file() and p.suffix in (".py", ".yaml", ".json"):
            h.update(str(p.relative_to(SRC)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _cli(*args: str | Path, cwd: Path, log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="4000",
               LDM_OOD_CACHE_DIR=str(cwd / "cache"))
    t0 = time.perf_counter()
    with log.open("ab") as fh:
        fh.write(f"$ ldm-ood {' '.join(map(str, args))}\n".encode())
        fh.flush()
        rc = subprocess.run([PYTHON, "-m", "ldm_ood", *map(str, args)], cwd=cwd, env=env, stdout=fh, stderr=fh,
                            preexec_fn=lambda: os.umask(0o022)).returncode
    print(f"  setup: ldm-ood {' '.join(map(str, args))}  ({time.perf_counter() - t0:.1f}s)", flush=True)
    if rc != 0:
        raise SystemExit(f"setup step failed (rc {rc}): ldm-ood {' '.join(map(str, args))}; see {log}")


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


class Setup:
    """Paths of the cached runs and inputs (module docstring)."""

    def __init__(self, work: Path):
        self.root = work / "setup"
        self.key_path = self.root / "setup.json"

    def run_dir(self, kind: str) -> Path:
        return self.root / f"run{kind}"

    def data_dir(self, kind: str) -> Path:
        return self.root / f"data{kind}"

    @property
    def reference(self) -> dict:
        return json.loads((self.root / "reference.json").read_text())

    def ready(self) -> bool:
        try:
            return json.loads(self.key_path.read_text())["key"] == source_key()
        except (OSError, ValueError, KeyError):
            return False

    def ensure(self, force: bool = False) -> None:
        if self.ready() and not force:
            return
        print(f"setup: building the cached runs in {self.root} (once per source version)", flush=True)
        t0 = time.perf_counter()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        (self.root / "cache").mkdir()
        log = self.root / "setup.log"
        _cli("synth", "--preset", "tiny", "--out", "cohort", cwd=self.root, log=log)
        self._data3d()
        self._data2d()
        r3, r2 = "run3d", "run2d"
        m3, m2 = self.data_dir("3d") / "manifest.csv", self.data_dir("2d") / "manifest.csv"
        for stage in ("first-stage", "ldm", "transformer"):
            _cli("train", stage, "--run", r3, "--preset", "tiny", "--data", m3, cwd=self.root, log=log)
        for method in ("ldm", "ltm"):
            _cli("calibrate", "--run", r3, "--method", method, cwd=self.root, log=log)
        for stage in ("first-stage", "ldm"):
            _cli("train", stage, "--run", r2, "--preset", "tiny-2d", "--data", m2, cwd=self.root, log=log)
        _cli("calibrate", "--run", r2, "--method", "segment", cwd=self.root, log=log)
        self._reference(log)
        self.key_path.write_text(json.dumps({"key": source_key(), "seconds": round(time.perf_counter() - t0, 1)}))
        print(f"setup: done in {time.perf_counter() - t0:.0f}s", flush=True)

    def _data3d(self) -> None:
        src, dst = self.root / "cohort", self.data_dir("3d")
        shutil.copytree(src / "id", dst / "id")
        rows = []
        for split in ("train", "val", "test"):
            for p in sorted((dst / "id" / split).glob("*.nii.gz")):
                rows.append([p.name[:-7], f"id/{split}/{p.name}", "", "id", split])
        _write(dst / "manifest.csv", ["case_id", "path", "mask", "set", "split"], rows)
        _write(dst / "test.csv", ["case_id", "path", "mask", "set", "split"],
               [[c, f"id/test/{c}.nii.gz", "", "id", "test"] for c in ID_TEST])
        _write(dst / "kill.csv", ["case_id", "path", "mask", "set", "split"],
               [[k, f"id/test/{k.split('-', 1)[1]}.nii.gz", "", "id", "test"] for k in KILL_IDS])

    def _data2d(self) -> None:
        src, dst = self.root / "cohort", self.data_dir("2d")
        shutil.copytree(src / "2d", dst / "2d")
        rows = []
        with (src / "manifest_2d.csv").open(newline="") as fh:
            for r in csv.DictReader(fh):
                rows.append([r["case_id"], r["path"], r["mask"], r["set"], r["split"]])
        keep = [r for r in rows if r[4] != "test"]
        test = [r for r in rows if r[4] == "test" and r[0] == "slice-test-000-0"]
        _write(dst / "manifest.csv", ["case_id", "path", "mask", "set", "split"], keep + test)
        _write(dst / "test.csv", ["case_id", "path", "mask", "set", "split"], test)
        _write(dst / "kill.csv", ["case_id", "path", "mask", "set", "split"],
               [[f"slice-test-000-{i}", f"2d/test/id/slice-test-000-{i}.nii.gz", "", "id", "test"] for i in range(4)])

    def _reference(self, log: Path) -> None:
        ref: dict = {}
        work = self.root / "refwork"
        shutil.copytree(self.run_dir("3d"), work / "run3d")
        shutil.copytree(self.run_dir("2d"), work / "run2d")
        (work / "cache").mkdir()
        d3, d2 = self.data_dir("3d"), self.data_dir("2d")
        for method in ("ldm", "ltm"):
            for name in ("test", "kill"):
                _cli("score", "--run", "run3d", "--method", method, "--data", d3 / f"{name}.csv", cwd=work, log=log)
                with (work / "run3d" / "scores" / method / "id.csv").open(newline="") as fh:
                    ref[f"{method}/{name}"] = {r["case_id"]: r for r in csv.DictReader(fh)}
                (work / "run3d" / "scores" / method / "id.csv").unlink()
        _cli("segment", "--run", "run2d", "--variant", "c", "--data", d2 / "test.csv", cwd=work, log=log)
        for set_name in ("id", "sprites"):
            with (work / "run2d" / "segment" / "c" / f"{set_name}.csv").open(newline="") as fh:
                ref[f"segment/{set_name}"] = {r["case_id"]: r for r in csv.DictReader(fh)}
        (work / "run2d" / "segment" / "c" / "id.csv").unlink()
        _cli("segment", "--run", "run2d", "--variant", "c", "--data", d2 / "kill.csv", cwd=work, log=log)
        with (work / "run2d" / "segment" / "c" / "id.csv").open(newline="") as fh:
            ref["segment/kill"] = {r["case_id"]: r for r in csv.DictReader(fh)}
        ref["thresholds"] = {
            "ldm": json.loads((self.run_dir("3d") / "calibration" / "ood.json").read_text())["threshold"],
            "ltm": json.loads((self.run_dir("3d") / "calibration" / "ltm.json").read_text())["threshold"],
        }
        (self.root / "reference.json").write_text(json.dumps(ref, indent=1))
        shutil.rmtree(work)


__all__ = ["Setup", "ID_TEST", "KILL_IDS", "REPO"]
