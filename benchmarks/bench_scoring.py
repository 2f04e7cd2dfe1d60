"""Paper 000 scoring speed: sequential fp32 reference loop vs batched bf16 chains, side by side.

For the same scans, noise and networks, every mode computes the raw per-t metrics (MSE, 2.5D LPIPS)
and MAE maps (``OODScorer.measure``: encode, multi-start reconstructions, decode, similarity):

* ``reference_fp32``: one chain at a time with one shared PLMS scheduler (the ``ddpm-ood`` loop), fp32;
* ``batched_fp32``: all chains in one UNet call per grid step, fp32 (isolates batching);
* ``batched_bf16``: the default: batched + bf16 autocast + channels-last.

One calibration (fitted on the reference metrics of the same scans) scores every mode, so the score
differences come only from the mode. Reports seconds per scan (total and reconstruction-only),
the speed-up, max |Δ pred_score| vs the reference, and the peak RSS growth of each mode.

    .venv/bin/python benchmarks/bench_scoring.py                 # cpu preset sizes, random-init nets
    .venv/bin/python benchmarks/bench_scoring.py --run runs/x    # a trained run's networks

Writes ``benchmarks/results/scoring.json``. Timings vary run to run on shared machines: compare
modes within one run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ldm_ood.config import load_config
from ldm_ood.models.diffusion import build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.runs import RunDir
from ldm_ood.scoring.ood import fit_calibration
from ldm_ood.scoring.pipeline import OODScorer, ScoringModels, case_seed, load_scoring_models
from ldm_ood.scoring.reconstruct import reconstruct

RESULTS = Path(__file__).parent / "results" / "scoring.json"


class PeakRSS:
    """Peak resident set size (bytes) above the level at ``start``, sampled every 5 ms."""

    def __init__(self) -> None:
        self.page = 4096
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = self._rss()
        self._stop.clear()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _scans(n: int, grid: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Smooth head-like random volumes in [0, 1]: ``(n, 1, *grid)``."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in grid], indexing="ij"))
    out = []
    for _ in range(n):
        r = np.sqrt((g**2).sum(0)) + 0.05 * rng.standard_normal()
        out.append(np.clip((r < 0.8) * 0.6 + (np.abs(r - 0.85) < 0.05) * 0.4 + rng.normal(0, 0.02, grid), 0, 1))
    return torch.tensor(np.stack(out)[:, None], dtype=torch.float32)


def _models(args, cfg) -> ScoringModels:
    if args.run:
        return load_scoring_models(RunDir(args.run), cfg, torch.device("cpu"))
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, cfg.data.spatial_dims).eval()
    unet = build_unet(cfg.ldm, cfg.data.spatial_dims, cfg.first_stage.embedding_dim).eval()
    lp = None
    if "lpips" in cfg.score.metrics:
        from ldm_ood.models.perceptual import load_lpips

        lp = load_lpips("cpu")
    return ScoringModels(fs, unet, 1.0, latent_multiple(cfg.ldm), cfg.ldm, cfg.data.spatial_dims, lp)


def _run_mode(models, cfg, x, ids, sequential: bool, bf16: bool) -> dict:
    import copy

    m = copy.deepcopy(models)  # prepare_for_inference changes memory format: keep modes independent
    scorer = OODScorer(m, cfg.score, sequential=sequential, bf16=bf16)
    bs = cfg.score.batch_size
    seeds = [case_seed(cfg.score.seed, c) for c in ids]
    values = {k: [] for k in scorer.metrics}
    t_total = t_rec = 0.0
    # warm-up (first-call allocations, oneDNN kernel selection) on one short chain, untimed
    full = scorer.starts, scorer.t_values, scorer.map_t_values
    s0 = (min(t for t in scorer.starts if t > 0),)
    scorer.starts = scorer.t_values = scorer.map_t_values = s0
    scorer.measure(x[:bs], seeds[:bs])
    scorer.starts, scorer.t_values, scorer.map_t_values = full
    scorer.calls.calls = scorer.calls.evals = 0
    with PeakRSS() as mem:
        for i in range(0, x.shape[0], bs):
            t0 = time.perf_counter()
            met = scorer.measure(x[i : i + bs], seeds[i : i + bs])
            t_total += time.perf_counter() - t0
            for k in scorer.metrics:
                values[k].append(met.values[k].numpy())
        # reconstruction alone (encode + all chains), timed separately
        for i in range(0, x.shape[0], bs):
            t0 = time.perf_counter()
            reconstruct(m.first_stage, m.unet, scorer.scheduler, x[i : i + bs], scorer.starts, seeds[i : i + bs],
                        m.scale_factor, m.latent_multiple, scorer.mode, bf16)
            t_rec += time.perf_counter() - t0
    n = x.shape[0]
    print(f"{scorer.mode} bf16={bf16}: {t_total / n:.2f} s/scan (reconstruct {t_rec / n:.2f})", flush=True)
    return {
        "mode": scorer.mode, "bf16": bf16, "seconds_per_scan": t_total / n, "reconstruct_seconds_per_scan": t_rec / n,
        "unet_calls_per_scan_batch": scorer.calls.calls / max(1, -(-n // bs)), "peak_rss_growth_mb": mem.growth_mb,
        "values": {k: np.concatenate(v).tolist() for k, v in values.items()},
        "t_values": list(scorer.t_values), "map_t_values": list(scorer.map_t_values), "n_chains": len(scorer.starts),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--run", default=None, help="trained run directory (default: random-init networks)")
    p.add_argument("--scans", type=int, default=2)
    p.add_argument("--num-t-values", type=int, default=None, help="override score.num_t_values")
    p.add_argument("--steps", type=int, default=None, help="override score.num_inference_steps")
    p.add_argument("--no-lpips", action="store_true", help="MSE only (LPIPS cost is the same in every mode)")
    p.add_argument("--skip-batched-fp32", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    score = {"bf16": True}
    if args.num_t_values:
        score["num_t_values"] = args.num_t_values
    if args.steps:
        score["num_inference_steps"] = args.steps
    if args.no_lpips:
        score["metrics"] = ("mse",)
    cfg = RunDir(args.run).load_config() if args.run else load_config(preset=args.preset)
    cfg = cfg.model_copy(update={"score": cfg.score.model_copy(update=score)})
    models = _models(args, cfg)
    x = _scans(args.scans, tuple(cfg.data.grid))
    ids = [f"scan{i}" for i in range(args.scans)]

    runs = {"reference_fp32": _run_mode(models, cfg, x, ids, sequential=True, bf16=False)}
    if not args.skip_batched_fp32:
        runs["batched_fp32"] = _run_mode(models, cfg, x, ids, sequential=False, bf16=False)
    runs["batched_bf16"] = _run_mode(models, cfg, x, ids, sequential=False, bf16=True)

    ref = runs["reference_fp32"]
    cal = fit_calibration(ids, {k: np.asarray(v) for k, v in ref["values"].items()}, ref["t_values"], ref["map_t_values"], 0.05)
    ref_scores = cal.score({k: np.asarray(v) for k, v in ref["values"].items()})["pred_score"]
    for name, r in runs.items():
        s = cal.score({k: np.asarray(v) for k, v in r["values"].items()})["pred_score"]
        r["pred_score"] = s.tolist()
        r["max_abs_score_diff_vs_reference"] = float(np.abs(s - ref_scores).max())
    fast = runs["batched_bf16"]
    summary = {
        "preset": args.preset if not args.run else f"run:{args.run}",
        "grid": list(cfg.data.grid), "scans": args.scans, "batch_size": cfg.score.batch_size,
        "num_t_values": len(ref["t_values"]), "num_inference_steps": cfg.score.num_inference_steps,
        "metrics": list(cfg.score.metrics), "n_chains": ref["n_chains"],
        "speedup_total": ref["seconds_per_scan"] / fast["seconds_per_scan"],
        "speedup_reconstruct": ref["reconstruct_seconds_per_scan"] / fast["reconstruct_seconds_per_scan"],
        "max_abs_score_diff_bf16_batched_vs_fp32_reference": fast["max_abs_score_diff_vs_reference"],
        "val_score_std_for_scale": float(np.std(ref_scores, ddof=1)) if args.scans > 1 else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "modes": {k: {kk: vv for kk, vv in v.items() if kk != "values"} for k, v in runs.items()},
        "note": "random-init networks" if not args.run else "trained networks",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "modes"}, indent=2))
    for k, v in runs.items():
        print(f"{k:15s} {v['seconds_per_scan']:8.2f} s/scan  reconstruct {v['reconstruct_seconds_per_scan']:8.2f} s/scan  "
              f"peak +{v['peak_rss_growth_mb']:.0f} MB  max|Δscore| {v['max_abs_score_diff_vs_reference']:.4f}")


if __name__ == "__main__":
    main()
