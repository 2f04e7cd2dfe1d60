"""Throughput of ``ldm-ood score``: 1 process × 1 thread, 2 processes × 1 thread (torchrun), 1 process × 2 threads.

    .venv/bin/python benchmarks/bench_shard.py [--preset tiny] [--work /tmp/bench-shard] [--repeats 1]

Builds a run once in ``--work`` (the preset's built-in cohort, first stage and LDM trained for
``--epochs`` epochs, LDM calibration; fp32 so that results can be compared bit for bit), then scores
every test set (or ``--set``) with the CLI three ways, from scratch each time, and once more with
nothing left to do: the start-up cost (imports, networks, checks) that every launch pays once.

Per setting: wall seconds (the best of ``--repeats``), start-up seconds, scans, scoring seconds
(wall − start-up) and scans per second of scoring, the speed-up over 1 × 1, whether the CSVs and maps
equal the 1 × 1 run's (every column but ``seconds``), and the load average before and after (the
machine must be otherwise idle for the numbers to mean anything). Writes JSON (``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from ldm_ood.precision_policy import machine_fingerprint

OUT = Path(__file__).parent / "results" / "shard.json"

SETTINGS = (  # name, processes, threads per process
    ("1 process x 1 thread", 1, 1),
    ("2 processes x 1 thread", 2, 1),
    ("1 process x 2 threads", 1, 2),
)


def build_run(work: Path, preset: str, epochs: int) -> Path:
    """``<work>/run``: trained (``epochs`` epochs) and calibrated once; reused when it exists."""
    run = work / "run"
    if (run / "calibration").is_dir():
        return run
    from ldm_ood.methods.ldm.pipeline import calibrate_ldm
    from ldm_ood.synthetic.cohort import synth
    from ldm_ood.training.api import train

    data = synth(preset, work / "data")
    optim = {"max_epochs": epochs, "preview_every": 1000}
    over = work / "config.yaml"
    over.write_text(yaml.safe_dump({"preset": preset, "first_stage": {"optim": optim}, "ldm": {"optim": optim},
                                    "score": {"precision": "fp32"}}))
    train(run, "first_stage", config_path=over, manifest=data.manifest)
    train(run, "ldm")
    calibrate_ldm(run, progress=False)
    return run


def _outputs(run: Path) -> dict[str, object]:
    """The score CSVs (rows without ``seconds``) and maps (arrays) of the run."""
    out: dict[str, object] = {}
    for path in sorted((run / "scores" / "ldm").glob("*.csv")):
        with path.open(newline="") as fh:
            out[path.name] = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]
    for path in sorted((run / "maps" / "ldm").rglob("*.nii.gz")):
        out[str(path.relative_to(run))] = np.asarray(nib.load(path).dataobj).tobytes()
    return out


def _launch(run: Path, processes: int, threads: int, sets: list[str]) -> float:
    """Wall seconds of one ``ldm-ood score`` (under ``torchrun`` for several processes)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "ldm_ood"]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "ldm_ood"]
    cmd += ["score", "--run-dir", str(run), *(a for s in sets for a in ("--set", s))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return seconds


def _clear(run: Path) -> None:
    for folder in (run / "scores" / "ldm", run / "maps" / "ldm"):
        shutil.rmtree(folder, ignore_errors=True)


def measure(run: Path, sets: list[str], repeats: int) -> dict:
    rows, reference = [], None
    for name, processes, threads in SETTINGS:
        load_before = list(os.getloadavg())
        walls = []
        for _ in range(repeats):
            _clear(run)
            walls.append(_launch(run, processes, threads, sets))
        outputs = _outputs(run)
        startup = min(_launch(run, processes, threads, sets) for _ in range(repeats))  # all scored: start-up only
        reference = reference if reference is not None else outputs
        scans = sum(len(v) for k, v in outputs.items() if k.endswith(".csv"))
        wall = min(walls)
        rows.append({"setting": name, "processes": processes, "threads_per_process": threads,
                     "wall_s": round(wall, 3), "startup_s": round(startup, 3), "scans": scans,
                     "scoring_s": round(wall - startup, 3), "scans_per_s": round(scans / max(wall - startup, 1e-9), 3),
                     "identical_to_1x1": outputs == reference, "load_before": load_before,
                     "load_after": list(os.getloadavg())})
    base = rows[0]["scans_per_s"]
    for row in rows:
        row["speedup_vs_1x1"] = round(row["scans_per_s"] / base, 3)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", help="3D preset of the run (tiny or demo)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-shard"), help="where the run is built (reused)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs of each stage")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="only these test sets (repeatable)")
    ap.add_argument("--repeats", type=int, default=1, help="launches per setting; the fastest counts")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    run = build_run(args.work, args.preset, args.epochs)
    report = {"benchmark": "sharded scoring throughput", "preset": args.preset, "run": str(run),
              "machine": {**machine_fingerprint(), "cpus": os.cpu_count()}, **measure(run, args.sets, args.repeats),
              "notes": "scoring_s = wall_s - startup_s (startup_s: the same launch with every scan already scored); "
                       "identical_to_1x1: CSVs (all columns but seconds) and map arrays equal the 1 x 1 run's"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
