"""The scoring service under a bounded load on localhost: throughput, latency, failures, memory.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_serve.py [--preset tiny] [--requests 500]
        [--concurrency 2] [--workers 1] [--queue 4] [--model DIR | --run DIR] [--work DIR] [--out JSON]

Without ``--model`` / ``--run`` it makes a model once and keeps it in ``<work>/`` (default
``benchmarks/results/serve-work/<preset>``): ``ldm-ood synth`` of the preset's cohort, ``train
first-stage`` and ``train ldm``, ``calibrate``, ``export`` to ``<work>/model``. It then starts
``ldm-ood serve --model`` (``--port 0``) as a process and sends ``--requests`` POST /v1/score from
``--concurrency`` client threads (the cohort's ID test scans and its near-OOD scans in turn), each
thread waiting for its answer before sending the next; ``--concurrency`` at most ``workers + queue``,
so every request is admitted and any failure is the service's. Then one burst of ``workers + queue
+ 4`` simultaneous requests shows what is refused beyond the queue (429s expected), and SIGTERM
stops the server (its exit code is recorded).

Recorded (JSON, also printed): requests per minute over the timed run, client latency p50 / p95 /
max (ms), the server's own ``seconds`` and ``queue_seconds`` p50, failures and status counts, the
server process's RSS (``/proc/<pid>/status`` VmRSS, MiB) after start, after 10 warm-up requests,
every 50 requests and at the end, and the machine (CPU, cores, torch threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
RESULTS = REPO / "benchmarks" / "results"


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS", "1"), COLUMNS="300", **extra)


def _cli(*args: object, log: Path) -> None:
    t0 = time.perf_counter()
    with log.open("ab") as fh:
        rc = subprocess.run([sys.executable, "-m", "ldm_ood", *map(str, args)], stdout=fh, stderr=fh, env=_env()).returncode
    print(f"  ldm-ood {' '.join(map(str, args))}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if rc != 0:
        raise SystemExit(f"ldm-ood {' '.join(map(str, args))} failed (rc {rc}); see {log}")


def make_model(preset: str, work: Path) -> Path:
    """``<work>/model``: a bundle of a freshly trained and calibrated ``preset`` run (made once)."""
    model = work / "model"
    if (model / "model.json").exists():
        return model
    work.mkdir(parents=True, exist_ok=True)
    log = work / "setup.log"
    print(f"making a {preset} model in {work} (once)", flush=True)
    if not (work / "cohort" / "manifest.csv").exists():
        _cli("synth", "--preset", preset, "--out", work / "cohort", log=log)
    for stage in ("first-stage", "ldm"):
        if not (work / "run" / stage.replace("-", "_") / "DONE").exists():
            _cli("train", stage, "--run", work / "run", "--preset", preset, "--data", work / "cohort" / "manifest.csv",
                 log=log)
    _cli("calibrate", "--run", work / "run", log=log)
    _cli("export", "--run", work / "run", "--out", model, log=log)
    return model


def scans_of(cohort: Path) -> list[tuple[str, Path]]:
    """``(upload name, file)`` of the cohort's ID test scans and its near-OOD ones (what a QC gate sees)."""
    scans = [(p.name, p) for p in sorted((cohort / "id" / "test").glob("*.nii.gz"))]
    return scans + [(f"{p.parent.name}-{p.name}", p) for p in sorted((cohort / "near").glob("*/*.nii.gz"))]


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]) if len(values) > 1 else values[0]


def start_server(args: argparse.Namespace, source: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ldm_ood", "serve", *source, "--port", "0", "--workers",
                                 str(args.workers), "--queue", str(args.queue), "--keep-maps", "8"],
                                stdout=fh, stderr=subprocess.STDOUT, env=_env())
    deadline = time.monotonic() + 300
    while "http://127.0.0.1:" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start; see {log}")
        time.sleep(0.1)
    url = "http://127.0.0.1:" + log.read_text().split("http://127.0.0.1:")[1].split()[0].rstrip("/;,—")
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)


def run_load(url: str, scans: list[tuple[str, Path]], n: int, concurrency: int, pid: int) -> dict:
    """``n`` requests from ``concurrency`` threads; latencies, server timings, statuses, RSS samples."""
    payloads = [(name, p.read_bytes()) for name, p in scans]
    lock, counter = threading.Lock(), iter(range(n))
    latencies, server_s, queue_s, statuses, rss = [], [], [], Counter(), []

    def worker() -> None:
        with httpx.Client(timeout=300) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                try:
                    r = client.post(f"{url}/v1/score", files={"file": (name, data, "application/octet-stream")})
                    status = r.status_code
                except httpx.TransportError as err:
                    status, r = f"transport: {type(err).__name__}", None
                elapsed = time.perf_counter() - t0
                with lock:
                    statuses[status] += 1
                    latencies.append(elapsed)
                    if r is not None and status == 200:
                        body = r.json()
                        server_s.append(body["seconds"])
                        queue_s.append(body["queue_seconds"])
                    done = sum(statuses.values())
                    if done % 50 == 0:
                        rss.append((done, round(rss_mib(pid), 1)))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "latencies": latencies, "server_s": server_s, "queue_s": queue_s, "statuses": statuses,
            "rss": rss}


def burst(url: str, scan: tuple[str, Path], size: int) -> dict[str, int]:
    """``size`` requests at once (a barrier): the status of each."""
    (name, path), barrier = scan, threading.Barrier(size)
    data = path.read_bytes()

    def one(_: int) -> int:
        barrier.wait()
        return httpx.post(f"{url}/v1/score", files={"file": (name, data)}, timeout=300).status_code

    with ThreadPoolExecutor(size) as pool:
        return {str(k): v for k, v in sorted(Counter(pool.map(one, range(size))).items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--queue", type=int, default=4)
    ap.add_argument("--model", type=Path, help="a model bundle to serve (default: make one of --preset)")
    ap.add_argument("--run", type=Path, help="a calibrated run directory to serve instead")
    ap.add_argument("--scans", type=Path, help="a folder of NIfTI scans to send (default: the cohort's)")
    ap.add_argument("--work", type=Path, help="where the model is made (default: benchmarks/results/serve-work/<preset>)")
    ap.add_argument("--out", type=Path, help="JSON (default: benchmarks/results/serve_<preset>.json)")
    args = ap.parse_args()
    if args.concurrency > args.workers + args.queue:
        raise SystemExit("--concurrency must be at most --workers + --queue (every request admitted)")
    work = args.work or RESULTS / "serve-work" / args.preset
    if args.run is not None:
        source = ["--run", str(args.run)]
    else:
        source = ["--model", str(args.model or make_model(args.preset, work))]
    scans = [(p.name, p) for p in sorted(args.scans.glob("*.nii*"))] if args.scans else scans_of(work / "cohort")
    if not scans:
        raise SystemExit("no scans to send (--scans)")
    log = work / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(args, source, log)
    try:
        model = httpx.get(f"{url}/v1/model").json()
        rss_start = rss_mib(proc.pid)
        warm = run_load(url, scans, 10, 1, proc.pid)
        rss_warm = rss_mib(proc.pid)
        load = run_load(url, scans, args.requests, args.concurrency, proc.pid)
        rss_end = rss_mib(proc.pid)
        over = burst(url, scans[0], args.workers + args.queue + 4)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = "killed after 120 s"
    lat = [x * 1000 for x in load["latencies"]]
    failures = sum(v for k, v in load["statuses"].items() if k != 200)
    import torch

    result = {
        "preset": args.preset, "model_id": model["model_id"], "method": model["method"],
        "grid": model["input"]["grid"], "requests": args.requests, "concurrency": args.concurrency,
        "workers": args.workers, "queue": args.queue, "scans_cycled": len(scans),
        "requests_per_minute": round(60 * args.requests / load["wall_s"], 1), "wall_s": round(load["wall_s"], 1),
        "latency_ms": {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                       "max": round(max(lat), 1), "mean": round(statistics.fmean(lat), 1)},
        "server_seconds_p50": round(percentile(load["server_s"], 50), 3) if load["server_s"] else None,
        "queue_seconds_p50": round(percentile(load["queue_s"], 50), 3) if load["queue_s"] else None,
        "failures": failures, "status_counts": {str(k): v for k, v in load["statuses"].items()},
        "warmup_failures": sum(v for k, v in warm["statuses"].items() if k != 200),
        "rss_mib": {"after_start": round(rss_start, 1), "after_warmup": round(rss_warm, 1), "end": round(rss_end, 1),
                    "growth_over_run": round(rss_end - rss_warm, 1), "every_50": load["rss"]},
        "burst_beyond_queue": {"requests": args.workers + args.queue + 4, "statuses": over},
        "server_exit_code_after_sigterm": exit_code,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__},
    }
    out = args.out or RESULTS / f"serve_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
