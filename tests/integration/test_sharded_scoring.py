"""Scoring sharded over 2 ``torchrun`` processes (CPU, gloo) writes the files one process writes.

The tiny 2D run of ``tiny_runs`` (random networks), calibrated in this process, scores a manifest of
16 test slices in two sets plus an unreadable one: ``ldm-ood score`` / ``segment`` in one process, then
under ``torchrun --nproc_per_node=2``; the CSVs (every column but the timing ``seconds``, row order
included) and every written image must be identical. Then a rank is killed (``kill -9``) mid-run and
the launch rerun: again the same files, no case lost or repeated. A launch on a run another command
holds stops on every rank.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny_runs import _slice, build_tiny_2d_run

from ldm_ood.artifacts.lock import run_lock
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, read_manifest, write_manifest
from ldm_ood.methods.ldm.pipeline import calibrate_ldm
from ldm_ood.methods.records import part_path, parts_dir
from ldm_ood.methods.segment.pipeline import calibrate_segment

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
       "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "LDM_OOD_CACHE_DIR": os.environ["LDM_OOD_CACHE_DIR"]}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ldm_ood"]
SINGLE = [sys.executable, "-m", "ldm_ood"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(run, manifest)``: the tiny run calibrated for LDM and segmentation variant c; the manifest has its
    3 val slices and 16 test slices (sets ``id`` and ``far_x``) plus the unreadable ``bad``."""
    root = tmp_path_factory.mktemp("shard")
    run, _ = build_tiny_2d_run(root)
    calibrate_ldm(run.root, progress=False)
    calibrate_segment(run.root, variants=["c"], device="cpu")
    rng = np.random.default_rng(5)
    cases = [c for c in read_manifest(root / "data" / "manifest.csv", check_files=False) if c.split == "val"]
    cases += [Case(f"s{i:02d}", write_image(root / "more" / f"s{i:02d}.nii.gz", _slice(rng)),
                   set="far_x" if i % 3 == 0 else "id", split="test") for i in range(16)]
    cases.insert(8, Case("bad", root / "data" / "bad.nii.gz", set="id", split="test"))
    return run, write_manifest(root / "more" / "manifest.csv", cases)


def _launch(cmd: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=ENV)


def _outputs(folders: list[Path]) -> dict[str, object]:
    """Every CSV (rows without the timings ``seconds``, ``score_seconds``) and image (array and affine) under
    ``folders``, by relative path."""
    out: dict[str, object] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            key = str(path.relative_to(folder.parent))
            if path.suffix == ".csv":
                with path.open(newline="") as fh:
                    out[key] = [{k: v for k, v in row.items() if k not in ("seconds", "score_seconds")}
                                for row in csv.DictReader(fh)]
            elif path.is_file() and not path.name.startswith("."):  # not a temporary of a killed atomic write
                image = nib.load(path)
                array = np.asarray(image.dataobj)
                out[key] = (array.tobytes(), array.dtype.str, image.affine.tobytes())
    return out


def _clear(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of worker ``rank`` among the children of the ``torchrun`` process (``RANK`` in its environment)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher.pid and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def _kill_mid_run(args: list[str], rank: int, part: Path) -> int:
    """Launch on 2 ranks, stop ``rank`` once its part file ``part`` holds a row, kill it (SIGKILL); the
    number of rows it had written. The launch must end with an error."""
    launcher = subprocess.Popen([*TORCHRUN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not (part.exists() and len(part.read_text().splitlines()) >= 2):
            assert launcher.poll() is None, launcher.stderr.read()[-4000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        pid = _rank_pid(launcher, rank)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        written = len(part.read_text().splitlines()) - 1
        os.kill(pid, signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    return written


def test_ldm_scores_and_maps_of_two_ranks_equal_one_process_also_after_a_rank_is_killed(run):
    run_dir, manifest = run
    folders = [run_dir.root / "scores", run_dir.root / "maps"]
    args = ["score", "--run-dir", str(run_dir.root), "--data", str(manifest)]

    with run_lock(run_dir.root, "another command"):  # the run is busy: every rank stops, nothing is written
        locked = _launch(TORCHRUN, *args)
    assert locked.returncode != 0 and " ".join(locked.stderr.split()).count("is writing to this run directory") == 2
    assert not (run_dir.root / "scores").exists()

    single = _launch(SINGLE, *args)
    assert single.returncode == 1 and "bad" in single.stderr  # the unreadable case is named, the rest scored
    expected = _outputs(folders)
    assert [r["case_id"] for r in expected["scores/ldm/id.csv"]] == [f"s{i:02d}" for i in range(16) if i % 3]
    assert len(expected["scores/ldm/far_x.csv"]) == 6 and len([k for k in expected if k.startswith("maps/")]) == 16

    _clear(folders)
    sharded = _launch(TORCHRUN, *args)
    assert sharded.returncode != 0 and "bad" in sharded.stderr
    assert _outputs(folders) == expected
    assert not parts_dir(run_dir.scores_path("ldm", "id")).exists()  # merged, then deleted

    _clear(folders)  # rank 1 killed after its first row: its part stays, nothing is merged
    written = _kill_mid_run(args, 1, part_path(run_dir.scores_path("ldm", "id"), 1))
    assert 1 <= written < 6  # of rank 1's 6 cases of set id (far_x's 3 batches dealt first: s01 s02 | s05 s07 | s11 s13)
    assert not run_dir.scores_path("ldm", "id").exists()
    again = _launch(TORCHRUN, *args)
    assert again.returncode != 0 and "bad" in again.stderr
    assert _outputs(folders) == expected


def test_segmentation_of_two_ranks_equals_one_process_and_a_killed_rank_0_resumes_in_one_process(run):
    run_dir, manifest = run
    folders = [run_dir.root / "segment"]
    args = ["segment", "--run-dir", str(run_dir.root), "--data", str(manifest), "--variant", "c", "--set", "id"]

    assert _launch(SINGLE, *args).returncode == 1
    expected = _outputs(folders)
    assert len(expected["segment/c/id.csv"]) == 10 and len(expected) == 1 + 3 * 10  # healed, map, mask per case

    _clear(folders)
    assert _launch(TORCHRUN, *args).returncode != 0
    assert _outputs(folders) == expected

    _clear(folders)  # rank 0 (the lock holder) killed; then a single process finishes and merges the parts
    written = _kill_mid_run(args, 0, part_path(run_dir.segment_scores_path("c", "id"), 0))
    assert 1 <= written < 6  # of rank 0's 6 cases (batches of 2: s01 s02 | s05 s07 | s10 s11)
    assert _launch(SINGLE, *args).returncode == 1
    assert _outputs(folders) == expected
    assert not parts_dir(run_dir.segment_scores_path("c", "id")).exists()
