"""Paper 000 scoring speed: sequential fp32 reference loop vs batched bf16 chains, side by side.

For the same scans, noise and networks, every mode computes the raw per-t metrics (MSE, 2.5D LPIPS)
and MAE maps (``OODScorer.measure``: encode, multi-start reconstructions, decode, similarity):

* ``reference_fp32``: one chain at a time with one shared PLMS scheduler (the ``ddpm-ood`` loop), fp32,
  each reconstruction decoded and measured alone (LPIPS: input and reconstruction through the trunk
  for every chain, as ``lpips_volume`` per reconstruction);
* ``batched_fp32``: all chains in one UNet call per grid step, fp32, the input's LPIPS features
  computed once for its reconstructions (``lpips_volume_many``) (isolates batching);
* ``batched_bf16``: the default: batched + bf16 autocast (UNet, first stage, LPIPS trunk) + channels-last.

One calibration (fitted on the reference metrics of the same scans) scores every mode, so the score
differences come only from the mode. Reports seconds per scan (total and reconstruction-only),
the speed-up, max |Δ pred_score| vs the reference, and the peak RSS growth of each mode.

Two more rows:

* ``lpips``: the 2.5D LPIPS of one scan's score reconstructions: per reconstruction (``lpips_volume``,
  fp32) vs features of the input once (``lpips_volume_many``) in fp32 and bf16, with their differences;
* ``paper_unet``: the ``paper`` preset's UNet (channels 128/256/256) on this preset's latent, for the
  reconstruction only (``denoise_latents``), reference fp32 vs batched bf16 (and the latents' relative
  L2 error of batched bf16 vs the per-chain ``sequential`` fp32 loop), plus one batched UNet call in fp32 vs bf16 (bf16 gains more on wider convolutions). ``--paper-t-values`` chains (default
  4) keep the fp32 reference loop short.

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


def _run_mode(models, cfg, x, ids, sequential: bool, bf16: bool) -> dict:
    import copy

    m = copy.deepcopy(models)  # prepare_for_inference changes memory format: keep modes independent
    one = dict(decode_batch=1, measure_batch=1) if sequential else {}  # reference: one reconstruction at a time
    scorer = OODScorer(m, cfg.score, sequential=sequential, bf16=bf16, **one)
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
                        m.scale_factor, m.latent_multiple, scorer.execution, bf16)
            t_rec += time.perf_counter() - t0
    n = x.shape[0]
    print(f"{scorer.execution} bf16={bf16}: {t_total / n:.2f} s/scan (reconstruct {t_rec / n:.2f})", flush=True)
    return {
        "mode": scorer.execution, "bf16": bf16, "seconds_per_scan": t_total / n, "reconstruct_seconds_per_scan": t_rec / n,
        "unet_calls_per_scan_batch": scorer.calls.calls / max(1, -(-n // bs)), "peak_rss_growth_mb": mem.growth_mb,
        "values": {k: np.concatenate(v).tolist() for k, v in values.items()},
        "t_values": list(scorer.t_values), "map_t_values": list(scorer.map_t_values), "n_chains": len(scorer.starts),
    }


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
    p.add_argument("--run", default=None, help="trained run directory (default: random-init networks)")
    p.add_argument("--scans", type=int, default=2)
    p.add_argument("--num-t-values", type=int, default=None, help="override score.num_t_values")
    p.add_argument("--steps", type=int, default=None, help="override score.num_inference_steps")
    p.add_argument("--no-lpips", action="store_true", help="MSE only (LPIPS cost is the same in every mode)")
    p.add_argument("--skip-batched-fp32", action="store_true")
    p.add_argument("--paper-t-values", type=int, default=4, help="chains of the paper-size UNet row (0: skip it)")
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

    lpips_row = _lpips_row(models, cfg, x, case_seed(cfg.score.seed, ids[0])) if models.lpips_model is not None else None
    latent = (cfg.first_stage.embedding_dim, *(s // 2**cfg.first_stage.levels for s in cfg.data.grid))
    paper_row = _paper_unet_row(cfg, latent, args.paper_t_values) if args.paper_t_values else None

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
        "max_abs_score_diff_bf16_batched_vs_fp32_batched": (
            float(np.abs(np.subtract(fast["pred_score"], runs["batched_fp32"]["pred_score"])).max())
            if "batched_fp32" in runs else None),
        "score_units": "z-scores: validation std of each metric (here the 2 benchmark scans)",
        "val_score_std_for_scale": float(np.std(ref_scores, ddof=1)) if args.scans > 1 else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "peak_rss_growth_mb": {k: v["peak_rss_growth_mb"] for k, v in runs.items()},
        "lpips": lpips_row,
        "paper_unet_reconstruction": paper_row,
        "modes": {k: {kk: vv for kk, vv in v.items() if kk != "values"} for k, v in runs.items()},
        "note": ("random-init networks (UNet output conv perturbed from zero)" if not args.run else "trained networks")
        + "; the machine may be shared: compare rows of one run only",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "modes"}, indent=2))
    for k, v in runs.items():
        print(f"{k:15s} {v['seconds_per_scan']:8.2f} s/scan  reconstruct {v['reconstruct_seconds_per_scan']:8.2f} s/scan  "
              f"peak +{v['peak_rss_growth_mb']:.0f} MB  max|Δscore| {v['max_abs_score_diff_vs_reference']:.4f}")


if __name__ == "__main__":
    main()
