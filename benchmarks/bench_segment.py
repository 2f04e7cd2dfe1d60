"""Seconds to segment N 64×64 slices with paper 001 variants (c) DDPM and (d) DDIM, side by side.

Paper 001 Table 3 analogue (there: 100 CT slices in one minibatch on a Titan RTX, f = 8:
DDIM (d) 12 s vs DDPM (c) 81 s). Networks have the ``cpu-2d`` preset sizes (VQ-VAE f = 4 ->
16×16×8 latents, UNet channels (64, 128, 128)), randomly initialised unless ``--run`` points at
a trained run (speed does not depend on the weights). All slices go through as one batch, like
the paper. Stages are timed separately: encode, KL mask (c: every t in [400, 600] = 201 t;
d: 50 t), healing (c: 501 DDPM steps; d: 50 DDIM steps), decode + map, and the image-level
score (50 t over the chain; not part of the paper's timing).

Usage::

    .venv/bin/python benchmarks/bench_segment.py [--n-slices 100] [--fp32] [--threads 2] [--run RUN]

Writes ``benchmarks/results/segment.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ldm_ood.config import load_config
from ldm_ood.methods.segment.batch import SegmentModels, _generators, _score_t, case_seeds, latents
from ldm_ood.methods.segment.healing import heal
from ldm_ood.methods.segment.kl import image_kl_score, kl_map, kl_mask, kl_terms, kl_thresholds
from ldm_ood.methods.segment.variants import residual_map, upsample_mask, variant_spec
from ldm_ood.models.diffusion import build_ddpm_scheduler, build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage, decode
from ldm_ood.precision import autocast, prepare_for_inference

OUT = Path(__file__).parent / "results" / "segment.json"


def _slices(n: int, size: int = 64) -> torch.Tensor:
    """Head-like disks in [0, 1] with a bright square 'lesion' in every other slice: (n, 1, size, size)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    x = (r < size * 0.4).float() * 0.4 + 0.02 * torch.randn(n, 1, size, size, generator=g)
    x[::2, :, 20:28, 24:32] = 0.95
    return x.clamp(0, 1)


def _models(run: str | None, bf16: bool) -> tuple[SegmentModels, object]:
    if run:
        from ldm_ood.runs import RunDir

        cfg = RunDir(run).load_config()
        return SegmentModels.from_run(RunDir(run), torch.device("cpu"), "bf16" if bf16 else "fp32", cfg.data.grid,
                                      cfg.segment.batch_size), cfg
    cfg = load_config(preset="cpu-2d")
    torch.manual_seed(0)
    fs = prepare_for_inference(build_first_stage(cfg.first_stage, 2), 2, bf16)
    unet = prepare_for_inference(build_unet(cfg.ldm, 2, cfg.first_stage.embedding_dim), 2, bf16)
    return SegmentModels(fs, unet, build_ddpm_scheduler(cfg.ldm), 1.0, latent_multiple(cfg.ldm), 2, bf16), cfg


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@torch.no_grad()
def run_variant(models: SegmentModels, cfg, x: torch.Tensor, variant: str) -> dict:
    scfg = cfg.segment
    spec = variant_spec(variant, scfg)
    seeds = case_seeds([f"s{i}" for i in range(x.shape[0])], scfg.seed)
    kw = dict(multiple=models.multiple, bf16=models.bf16)
    z0, t_enc = _timed(lambda: latents(models, x))
    v, t_kl = _timed(lambda: kl_map(kl_terms(models.unet, z0, models.scheduler, spec.kl_t,
                                             generator=_generators(seeds, 1, "cpu"), **kw)))
    m = kl_mask(v, kl_thresholds(v, scfg.percentile))  # thresholds from the batch itself: timing only
    zh, t_heal = _timed(lambda: heal(models.unet, z0, m, models.scheduler, spec.timesteps, sampler=spec.sampler,
                                     healing=scfg.healing, generator=_generators(seeds, 2, "cpu"), **kw))

    def dec():
        with autocast(x.device, models.bf16):
            healed = decode(models.first_stage, zh / models.scale_factor, models.requantize).float()
        return residual_map(x, healed, upsample_mask(m, x.shape[2:], scfg.gaussian_sigma))

    amap, t_dec = _timed(dec)
    _, t_score = _timed(lambda: image_kl_score(kl_terms(models.unet, z0, models.scheduler, _score_t(models, scfg),
                                                         generator=_generators(seeds, 0, "cpu"), **kw)))
    seg = t_enc + t_kl + t_heal + t_dec
    return {
        "variant": variant, "sampler": spec.sampler, "kl_t_values": len(spec.kl_t), "healing_steps": len(spec.timesteps),
        "unet_calls_per_slice": len(spec.kl_t) + len(spec.timesteps),
        "seconds": {"encode": t_enc, "kl_mask": t_kl, "healing": t_heal, "decode_and_map": t_dec,
                    "segmentation_total": seg, "image_score": t_score, "total_with_score": seg + t_score},
        "seconds_per_slice": seg / x.shape[0],
        "map_finite": bool(torch.isfinite(amap).all()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-slices", type=int, default=100)
    ap.add_argument("--fp32", action="store_true", help="disable bf16 autocast")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--run", default=None, help="trained 2D run directory (default: random cpu-2d networks)")
    ap.add_argument("--variants", default="c,d")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models, cfg = _models(args.run, not args.fp32)
    x = _slices(args.n_slices, cfg.data.grid[0])
    results = [run_variant(models, cfg, x, v) for v in args.variants.split(",")]
    for r in results:
        s = r["seconds"]
        print(f"variant {r['variant']} ({r['sampler']}): {s['segmentation_total']:.1f} s for {args.n_slices} slices "
              f"(KL {s['kl_mask']:.1f} s, healing {s['healing']:.1f} s), +{s['image_score']:.1f} s image score")
    report = {
        "benchmark": "paper 001 Table 3 analogue: seconds to segment N slices (one batch)",
        "n_slices": args.n_slices, "grid": list(cfg.data.grid), "bf16": not args.fp32,
        "threads": torch.get_num_threads(), "trained_run": args.run, "preset": "cpu-2d" if not args.run else cfg.preset,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "paper_gpu_reference_f8": {"d": 12, "c": 81},
        "results": results,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
