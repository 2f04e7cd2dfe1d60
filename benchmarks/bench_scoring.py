"""Paper 000 scoring cost: the official setting, the project default and ``fast``, side by side.

On the same networks and scans, each row scores with one named ``score.setting``
(``config.schema.SCORE_SETTINGS``):

* ``paper`` (the official setting): 50 starts × 100 PLMS steps, one chain at a time with ONE shared PLMS
  scheduler (``execution="reference"``: the ``ddpm-ood`` loop, whose PLMS history leaks from one chain
  into the next), fp32, each reconstruction decoded and measured alone;
* ``default``: the same grid, all chains batched with a fresh PLMS history per chain, the measured
  precision (``score.precision: auto``);
* ``fast``: 10 starts on a 10-step DDIM grid, batched, the measured precision;
* ``default_fp32`` (``--isolate-leak``): ``default`` in fp32, so ``paper`` vs it is the shared history alone.

Per row: seconds per scan, UNet evaluations per scan (counted, and ``reconstruct.unet_evaluations``),
both as a ratio to ``paper``, the largest |Δ pred_score| vs ``default`` (the per-chain-reset
reference), and the whole path's cost (``evaluation.cost``): FLOPs per scan of each component
(encode, codebook, UNet, decode, LPIPS; MSE and MAE maps by hand count), their achieved FLOP/s and %
of this machine's measured peak (matmul and conv3d microbenchmarks, fp32 and bf16, 1 and N threads).

Scores: ``paper`` and ``default`` share the t-values, so ``paper`` is scored with ``default``'s
calibration (the Δ is then the execution's alone); ``fast`` has its own. Calibrations are fitted on
``--cal-scans`` other scans of the same kind.

    .venv/bin/python benchmarks/bench_scoring.py                         # cpu preset, random-init nets
    .venv/bin/python benchmarks/bench_scoring.py --run runs/x            # a trained run's networks
    .venv/bin/python benchmarks/bench_scoring.py --preset paper --scans 1 --cal-scans 2   # paper sizes (GPU)

Two optional rows: ``--lpips-row`` (2.5D LPIPS per reconstruction vs input features once, fp32/bf16)
and ``--paper-t-values N`` (the ``paper`` preset's UNet on this latent, reference fp32 vs batched bf16).

Writes ``benchmarks/results/scoring.json``. Timings vary run to run on shared machines: compare
rows within one run only.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ldm_ood.artifacts.atomic import atomic_write_text
from ldm_ood.config import ScoreConfig, load_config
from ldm_ood.data.io import read_image
from ldm_ood.data.manifest import read_manifest
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.evaluation.cost import ComponentMeter, achieved, best_peak, elementwise_flops, measure_peak
from ldm_ood.methods import inference_precision
from ldm_ood.methods.ldm.calibration import fit_calibration
from ldm_ood.methods.ldm.pipeline import OODScorer, ScoringModels, load_scoring_models
from ldm_ood.methods.ldm.reconstruct import (
    chain_starts,
    decode_chains,
    default_t_values,
    denoise_latents,
    inference_grid,
    reconstruct,
    snap_to_grid,
    unet_evaluations,
)
from ldm_ood.models.diffusion import build_inference_scheduler, build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.precision import autocast, prepare_for_inference
from ldm_ood.runs import RunDir
from ldm_ood.samplers.noise import case_seed, make_noise

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


def _manifest_scans(manifest: str, cfg, split: str, n: int) -> torch.Tensor:
    """The first ``n`` scans of set ``id`` and ``split`` in ``manifest``, preprocessed: ``(n, 1, *grid)``."""
    cases = [c for c in read_manifest(manifest) if c.split == split and c.set == "id"][:n]
    if len(cases) < n:
        raise SystemExit(f"{manifest}: {len(cases)} ID scans of split {split!r}, {n} asked")
    pre = Preprocessor(cfg.data)
    return torch.stack([pre.apply(read_image(c.path))[0].float() for c in cases])


def _nonzero_output(unet: torch.nn.Module) -> torch.nn.Module:
    """MONAI zero-initialises the UNet's output conv (ε ≡ 0 at random init): perturb the all-zero
    parameters so ε depends on the input, as a trained UNet's does."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in unet.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return unet


def _models(args, cfg) -> ScoringModels:
    if args.run:
        return load_scoring_models(RunDir(args.run), cfg, torch.device("cpu"))
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, cfg.data.spatial_dims).eval()
    unet = _nonzero_output(build_unet(cfg.ldm, cfg.data.spatial_dims, cfg.first_stage.embedding_dim).eval())
    lp = None
    if "lpips" in cfg.score.metrics:
        from ldm_ood.models.perceptual import load_lpips

        lp = load_lpips("cpu")
    return ScoringModels(fs, unet, 1.0, latent_multiple(cfg.ldm), cfg.ldm, cfg.data.spatial_dims, lp)


def _measure_all(scorer: OODScorer, x: torch.Tensor, seeds: list[int], bs: int) -> dict[str, np.ndarray]:
    """Raw metric values ``{metric: (n, n_t)}`` of every scan, ``bs`` scans per batch."""
    values: dict[str, list[np.ndarray]] = {k: [] for k in scorer.metrics}
    for i in range(0, x.shape[0], bs):
        met = scorer.measure(x[i : i + bs], seeds[i : i + bs])
        for k in scorer.metrics:
            values[k].append(met.values[k].numpy())
    return {k: np.concatenate(v) for k, v in values.items()}


def _run_row(name: str, models: ScoringModels, score: ScoreConfig, x, ids, cal_x, cal_ids, calibrate: bool) -> dict:
    """One setting: warm-up, then the timed pass over ``x`` through a :class:`ComponentMeter`."""
    m = copy.deepcopy(models)  # precision layouts change the networks: keep rows independent
    one = dict(decode_batch=1, measure_batch=1) if score.sequential else {}  # official: one reconstruction at a time
    scorer = OODScorer(m, score, grid=tuple(x.shape[2:]), **one)
    bs = score.batch_size
    seeds = [case_seed(score.seed, c) for c in ids]
    meter = ComponentMeter()
    # warm-up (first-call allocations, kernel selection, the meter's FLOPs per input shape) on one short chain
    full = scorer.starts, scorer.t_values, scorer.map_t_values
    s0 = (min(t for t in scorer.starts if t > 0),)
    scorer.starts = scorer.t_values = scorer.map_t_values = s0
    with meter.watch(m):
        scorer.measure(x[:bs], seeds[:bs])
    scorer.starts, scorer.t_values, scorer.map_t_values = full
    scorer.calls.calls = scorer.calls.evals = 0
    meter.reset()
    values: dict[str, list[np.ndarray]] = {k: [] for k in scorer.metrics}
    t_total = 0.0
    with PeakRSS() as mem, meter.watch(m):
        for i in range(0, x.shape[0], bs):
            t0 = time.perf_counter()
            met = scorer.measure(x[i : i + bs], seeds[i : i + bs])
            t_total += time.perf_counter() - t0
            for k in scorer.metrics:
                values[k].append(met.values[k].numpy())
    n = x.shape[0]
    evals = scorer.calls.evals / n
    cal_values = (_measure_all(scorer, cal_x, [case_seed(score.seed, c) for c in cal_ids], bs) if calibrate else None)
    print(f"{name}: {scorer.execution} {inference_precision.dtypes(scorer.precision)}: {t_total / n:.2f} s/scan, "
          f"{evals:.0f} UNet evaluations/scan", flush=True)
    return {
        "setting": name, "execution": scorer.execution, "precision": inference_precision.dtypes(scorer.precision),
        "sampler": score.sampler, "num_inference_steps": score.num_inference_steps, "num_t_values": len(scorer.t_values),
        "t_values": list(scorer.t_values), "map_t_values": list(scorer.map_t_values), "n_chains": len(scorer.starts),
        "seconds_per_scan": t_total / n, "unet_evaluations_per_scan": evals,
        "unet_evaluations_per_scan_by_hand": unet_evaluations(scorer.starts, inference_grid(scorer.scheduler), score.sampler),
        "unet_calls_per_scan_batch": scorer.calls.calls / max(1, -(-n // bs)), "peak_rss_growth_mb": mem.growth_mb,
        "values": {k: np.concatenate(v) for k, v in values.items()}, "cal_values": cal_values,
        "_usage": meter.usage, "_dtype_of": {"encode": _dt(scorer, "first_stage"), "decode": _dt(scorer, "first_stage"),
                                             "codebook": "fp32", "unet": _dt(scorer, "unet"), "lpips": _dt(scorer, "lpips")},
    }


def _dt(scorer: OODScorer, network: str) -> str:
    return "bf16" if scorer.bf16_of(network) else "fp32"


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _lpips_row(models, cfg, x, seed: int) -> dict:
    """2.5D LPIPS of one scan's decoded score reconstructions: per reconstruction vs input features once."""
    from ldm_ood.models.perceptual import lpips_volume, lpips_volume_many

    scorer = OODScorer(models, cfg.score, bf16=False)  # fp32 reconstructions; only LPIPS is timed
    rec = reconstruct(models.first_stage, models.unet, scorer.scheduler, x[:1], scorer.t_values, [seed],
                      models.scale_factor, models.latent_multiple)
    imgs = torch.cat([im for _, im in decode_chains(models.first_stage, rec.latents[0], cfg.score.requantize, False)]).clamp(0, 1)
    recons, lp = imgs[None], models.lpips_model
    t_per, per = _timed(lambda: torch.stack([lpips_volume(lp, recons[:, j], x[:1]) for j in range(recons.shape[1])], 1))
    t_many, many = _timed(lambda: lpips_volume_many(lp, x[:1], recons))
    lpips_volume_many(lp, x[:1], recons[:, :1], bf16=True)  # warm-up of the bf16 kernels
    t_bf, bf = _timed(lambda: lpips_volume_many(lp, x[:1], recons, bf16=True))
    row = {
        "reconstructions": recons.shape[1], "per_reconstruction_fp32_seconds": t_per, "many_fp32_seconds": t_many,
        "many_bf16_seconds": t_bf, "speedup_many_fp32": t_per / t_many, "speedup_many_bf16": t_per / t_bf,
        "max_abs_diff_many_vs_per_reconstruction_fp32": float((many - per).abs().max()),
        "max_abs_diff_bf16_vs_fp32": float((bf - many).abs().max()),
        "max_rel_diff_bf16_vs_fp32": float(((bf - many).abs() / many.abs()).max()),
        "lpips_fp32": many[0].tolist(),
    }
    print(f"lpips: per-reconstruction {t_per:.2f} s, many fp32 {t_many:.2f} s, many bf16 {t_bf:.2f} s "
          f"(rel. bf16 diff {row['max_rel_diff_bf16_vs_fp32']:.1e})", flush=True)
    return row


def _paper_unet_row(cfg, latent: tuple[int, ...], n_t: int) -> dict:
    """Paper-size UNet on this preset's latent: reconstruction (denoising) only, reference fp32 vs batched bf16."""
    paper = load_config(preset="paper").ldm
    torch.manual_seed(0)
    unet = _nonzero_output(build_unet(paper, cfg.data.spatial_dims, latent[0]).eval())
    sch = build_inference_scheduler(paper, cfg.score.sampler, cfg.score.num_inference_steps)
    grid = inference_grid(sch)
    starts = chain_starts(snap_to_grid(default_t_values(n_t, paper.num_train_timesteps), grid), grid=grid)
    z0 = torch.randn(1, *latent, generator=torch.Generator().manual_seed(0)) * 0.5
    noise = make_noise(latent, len(starts), seeds=[0])
    t_ref, _ = _timed(lambda: denoise_latents(unet, sch, z0, starts, noise, "reference", bf16=False))
    # the correct per-chain loop (fresh PLMS history per chain; the reference leaks it): bf16's error
    exact = denoise_latents(unet, sch, z0, starts, noise, "sequential", bf16=False)
    # one batched call over all chains, fp32 then bf16 (bf16 alone, without the batching gain)
    zb, tb = torch.randn(len(starts), *latent), torch.full((len(starts),), int(starts[-1]))
    with torch.no_grad():
        unet(zb, tb)
        t_call32, _ = _timed(lambda: unet(zb, tb), 2)
        prepare_for_inference(unet, cfg.data.spatial_dims, True)
        with autocast("cpu", True):
            unet(zb, tb)
            t_call16, _ = _timed(lambda: unet(zb, tb), 2)
    t_fast, fast = _timed(lambda: denoise_latents(unet, sch, z0, starts, noise, "batched", bf16=True))
    row = {
        "channels": list(paper.channels), "latent": list(latent), "starts": list(starts),
        "num_inference_steps": cfg.score.num_inference_steps,
        "unet_evals": int(sum(int((grid <= t).sum()) for t in starts)),
        "reference_fp32_seconds": t_ref, "batched_bf16_seconds": t_fast, "speedup": t_ref / t_fast,
        "one_batched_call_fp32_seconds": t_call32, "one_batched_call_bf16_seconds": t_call16,
        "bf16_call_speedup": t_call32 / t_call16,
        "latent_rel_l2_diff_batched_bf16_vs_sequential_fp32": float((fast - exact).norm() / exact.norm()),
    }
    print(f"paper UNet {paper.channels} on {latent}: reference fp32 {t_ref:.1f} s, batched bf16 {t_fast:.1f} s "
          f"(x{row['speedup']:.2f}); one call fp32 {t_call32:.2f} s vs bf16 {t_call16:.2f} s", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--run", default=None, help="trained run directory or model bundle (default: random-init networks)")
    p.add_argument("--scans", type=int, default=2, help="scans timed and scored per row")
    p.add_argument("--cal-scans", type=int, default=4,
                   help="other scans each row's calibration is fitted on (< 2: no calibration, no scores or Δ)")
    p.add_argument("--settings", default="paper,default,fast", help="rows, comma-separated (paper first: the ratios' base)")
    p.add_argument("--isolate-leak", action="store_true", help="add default_fp32: paper vs it is the shared PLMS history")
    p.add_argument("--no-lpips", action="store_true", help="MSE only")
    p.add_argument("--lpips-row", action="store_true")
    p.add_argument("--paper-t-values", type=int, default=0, help="chains of the paper-size UNet row (0: skip it)")
    p.add_argument("--data", default=None, help="manifest: score its first ID-test scans and calibrate on its val "
                   "scans (default: smooth head-like random volumes)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peak-seconds", type=float, default=0.5, help="time of each peak microbenchmark")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cfg = RunDir(args.run).load_config() if args.run else load_config(preset=args.preset)
    if args.no_lpips:
        cfg = cfg.model_copy(update={"score": cfg.score.model_copy(update={"metrics": ("mse",)})})
    models = _models(args, cfg)
    x = _scans(args.scans, tuple(cfg.data.grid)) if args.data is None else _manifest_scans(args.data, cfg, "test", args.scans)
    ids = [f"scan{i}" for i in range(args.scans)]
    cal_x = (_scans(args.cal_scans, tuple(cfg.data.grid), seed=1) if args.data is None
             else _manifest_scans(args.data, cfg, "val", args.cal_scans))
    cal_ids = [f"cal{i}" for i in range(args.cal_scans)]

    peak_threads = tuple(sorted({1, threads, os.cpu_count() or 1}))
    peak_before = measure_peak(peak_threads, min_seconds=args.peak_seconds)
    print("peak FLOP/s:", json.dumps({d: v["peak"] for d, v in peak_before.items()}), flush=True)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    rows: dict[str, dict] = {}
    for name in names + (["default_fp32"] if args.isolate_leak else []):
        setting = "default" if name == "default_fp32" else name
        score = ScoreConfig.model_validate({**cfg.score.model_dump(), "setting": setting})
        if name == "default_fp32":
            score = score.model_copy(update={"precision": "fp32"})
        rows[name] = _run_row(name, models, score, x, ids, cal_x, cal_ids,
                              calibrate=not score.sequential and args.cal_scans >= 2)

    # the peak: the best of before and after the rows (a shared machine's load changes meanwhile)
    peak_after = measure_peak(peak_threads, min_seconds=args.peak_seconds)
    peak = best_peak(peak_before, peak_after)
    # calibrations: each batched row its own; paper (same t-values) is scored with default's
    cals = {}
    for name, r in rows.items():
        own = r["cal_values"] if r["cal_values"] is not None else (rows.get("default") or {}).get("cal_values")
        if own is not None:
            cals[name] = fit_calibration(cal_ids, own, r["t_values"], r["map_t_values"], cfg.score.fpr)
    base = rows.get("paper") or next(iter(rows.values()))
    for name, r in rows.items():
        r["pred_score"] = cals[name].score(r["values"])["pred_score"].tolist() if name in cals else None
        r["seconds_ratio_vs_paper"] = base["seconds_per_scan"] / r["seconds_per_scan"]
        r["unet_evaluation_ratio_vs_paper"] = base["unet_evaluations_per_scan"] / r["unet_evaluations_per_scan"]
        voxels = int(np.prod(cfg.data.grid))
        r["cost"] = achieved(r.pop("_usage"), r.pop("_dtype_of"), peak, threads, args.scans, r["seconds_per_scan"] * args.scans)
        r["cost"]["mse_and_maps_flops_per_scan_by_hand"] = elementwise_flops(
            voxels, 1, r["num_t_values"] if "mse" in cfg.score.metrics else 0, len(r["map_t_values"]))
    ref = rows.get("default")
    for name, r in rows.items():
        ok = ref is not None and r["pred_score"] is not None and ref["pred_score"] is not None
        r["max_abs_score_diff_vs_default"] = (
            float(np.abs(np.subtract(r["pred_score"], ref["pred_score"])).max()) if ok else None)
    if "paper" in rows and "default_fp32" in rows and "default" in cals:
        leak = cals["default"].score(rows["paper"]["values"])["pred_score"] - cals["default"].score(rows["default_fp32"]["values"])["pred_score"]
        rows["paper"]["max_abs_score_diff_vs_default_fp32"] = float(np.abs(leak).max())

    lpips_row = (_lpips_row(models, cfg, x, case_seed(cfg.score.seed, ids[0]))
                 if args.lpips_row and models.lpips_model is not None else None)
    latent = (cfg.first_stage.embedding_dim, *(s // 2**cfg.first_stage.levels for s in cfg.data.grid))
    paper_row = _paper_unet_row(cfg, latent, args.paper_t_values) if args.paper_t_values else None
    summary = {
        "preset": args.preset if not args.run else f"run:{args.run}",
        "grid": list(cfg.data.grid), "scans": args.scans, "cal_scans": args.cal_scans, "batch_size": cfg.score.batch_size,
        "metrics": list(cfg.score.metrics),
        "score_units": "z-scores against each row's calibration (--cal-scans scans); paper uses default's",
        "torch": torch.__version__, "threads": threads, "machine": platform.processor() or platform.machine(),
        "peak_flops_per_s": peak, "peak_flops_per_s_before": peak_before, "peak_flops_per_s_after": peak_after,
        "rows": {k: {kk: vv for kk, vv in v.items() if kk not in ("values", "cal_values")} for k, v in rows.items()},
        "lpips": lpips_row,
        "paper_unet_reconstruction": paper_row,
        "note": ("random-init networks (UNet output conv perturbed from zero)" if not args.run else "trained networks")
        + "; the machine may be shared: compare rows of one run only",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(summary, indent=2))
    print(f"{'setting':13s} {'s/scan':>8s} {'UNet ev':>8s} {'x paper':>8s} {'ev x':>7s} {'max|Δ|':>8s} "
          f"{'GFLOP/scan':>11s} {'GFLOP/s':>8s} {'%peak':>6s}")
    for k, r in rows.items():
        w = r["cost"]["whole_path"]
        d = r["max_abs_score_diff_vs_default"]
        print(f"{k:13s} {r['seconds_per_scan']:8.2f} {r['unet_evaluations_per_scan']:8.0f} {r['seconds_ratio_vs_paper']:8.2f} "
              f"{r['unet_evaluation_ratio_vs_paper']:7.1f} {'-' if d is None else f'{d:.4f}':>8s} "
              f"{w['flops_per_scan'] / 1e9:11.2f} {(w['achieved_flops_per_s'] or 0) / 1e9:8.2f} "
              f"{w['percent_of_peak'] or 0:6.1f}")
        for c, v in r["cost"]["components"].items():
            print(f"    {c:9s} {v['dtype']} {v['flops_per_scan'] / 1e9:9.3f} GFLOP/scan {v['seconds_per_scan']:8.3f} s/scan "
                  f"{(v['achieved_flops_per_s'] or 0) / 1e9:7.2f} GFLOP/s {v['percent_of_peak'] or 0:5.1f} % of peak")


if __name__ == "__main__":
    main()
