"""Time and peak memory of the built-in synthetic benchmark generator.

    .venv/bin/python benchmarks/bench_synth.py [--preset cpu] [--out /tmp/ldm-ood-synth]

Writes ``benchmarks/results/synth.json``: wall seconds (total and per stage), peak resident memory
(``resource.getrusage`` maxrss of this process), files and bytes written, cases per set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from ldm_ood.synthetic.cohort import synth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one, removed)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ldm-ood-synth-"))
    stage_end: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int) -> None:
        stage_end[stage] = time.perf_counter() - t0

    result = synth(args.preset, out, seed=args.seed, progress=progress)
    seconds = time.perf_counter() - t0
    files = [p for p in out.rglob("*") if p.is_file()]
    record = {
        "preset": args.preset,
        "seconds_total": round(seconds, 2),
        "seconds_stage_end": {k: round(v, 2) for k, v in stage_end.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "files": len(files),
        "megabytes_written": round(sum(p.stat().st_size for p in files) / 2**20, 1),
        "counts": result.counts,
        "counts_2d": result.counts_2d,
        "cpus": os.cpu_count(),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    dest = Path(__file__).resolve().parent / "results" / "synth.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
