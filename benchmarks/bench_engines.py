"""Inference engines of the scoring networks at a preset's sizes: ms per call, error, auto's pick.

    OMP_NUM_THREADS=1 python benchmarks/bench_engines.py [--preset cpu] [--out benchmarks/results] [--repeats 3]

For the first stage's encoder and decoder, the LDM UNet and the LPIPS trunk of ``--preset`` (random
weights: speed does not depend on them; every all-zero parameter, e.g. the UNet's zero-initialised
output convolution, gets small random values so errors are not trivially zero), at the batch sizes
scoring calls them with (``score.batch_size`` scans per encode, ``decode_batch`` = 4 latents per
decode, every chain of a batch of scans per UNet call, 64 slices per LPIPS trunk pass): every engine
(``ldm_ood.engines``) in fp32 and bf16 — ms per call (median of ``--repeats`` after a warm-up), the
time to build it (export / compile, once), max abs / rel error and relative L2 error against eager
fp32, whether it is within its tolerance — and what ``engine: auto`` would pick for each precision.
Engines without compilation first, then ``torch.compile`` (minutes for the UNet on one thread); the
JSON (``engines.json``) is rewritten after each step, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ldm_ood.artifacts.atomic import atomic_write_text
from ldm_ood.config import load_config
from ldm_ood.engines import select
from ldm_ood.engines.networks import decoder_spec, encoder_spec, lpips_trunk_spec, unet_spec
from ldm_ood.methods.ldm.reconstruct import chain_starts, default_t_values, inference_grid, snap_to_grid
from ldm_ood.models.diffusion import build_inference_scheduler, build_unet, latent_multiple, pad_latent
from ldm_ood.models.first_stage import build_first_stage, encoder_output
from ldm_ood.models.perceptual import load_lpips
from ldm_ood.precision_policy import machine_fingerprint

DECODE_BATCH = 4
LPIPS_SLICES = 64


def _random(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    for p in module.parameters():
        if not p.detach().abs().sum():
            torch.nn.init.normal_(p, 0.0, 0.05)
    return module.eval()


def specs(preset: str):
    """``{network: NetworkSpec}`` at the preset's sizes and scoring's batch sizes."""
    cfg = load_config(preset=preset)
    grid, sd = tuple(cfg.data.grid), cfg.data.spatial_dims
    torch.manual_seed(0)
    fs = _random(build_first_stage(cfg.first_stage, sd))
    unet = _random(build_unet(cfg.ldm, sd, cfg.first_stage.embedding_dim))
    sch = build_inference_scheduler(cfg.ldm, cfg.score.sampler, cfg.score.num_inference_steps)
    g = inference_grid(sch)
    requested = cfg.score.t_values or default_t_values(cfg.score.num_t_values, cfg.ldm.num_train_timesteps)
    t_values = snap_to_grid(requested, g)
    starts = chain_starts(t_values, cfg.score.map_t_values, grid=g)
    with torch.no_grad():
        latent = tuple(encoder_output(fs, torch.zeros((1, 1, *grid)), False).shape[1:])
    unet_latent = tuple(pad_latent(torch.zeros((1, *latent)), latent_multiple(cfg.ldm))[0].shape[1:])
    chains = len([s for s in starts if s > 0]) * cfg.score.batch_size
    slices = grid[1:] if sd == 3 else grid
    return cfg, {
        "encoder": encoder_spec(fs, (1, *grid), cfg.score.batch_size),
        "decoder": decoder_spec(fs, (1, *grid), DECODE_BATCH),
        "unet": unet_spec(unet, unet_latent, chains, timestep=max(starts)),
        "lpips": lpips_trunk_spec(load_lpips(), slices, min(LPIPS_SLICES, grid[0]) if sd == 3 else 16),
    }


def _auto(measured: dict) -> str:
    ok = {k: v for k, v in measured.items() if v.get("ok")}
    return min(ok, key=lambda k: ok[k]["ms"]) if ok else "eager"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out (minutes per network)")
    args = ap.parse_args()
    out = Path(args.out)
    artifacts = out / "engine-artifacts"
    cfg, nets = specs(args.preset)
    result = {"preset": args.preset, "grid": list(cfg.data.grid), "threads": torch.get_num_threads(),
              "machine": machine_fingerprint("cpu"), "repeats": args.repeats,
              "note": "shared machine: timings are noisy", "networks": {}}
    for name, spec in nets.items():
        result["networks"][name] = {"input_shapes": [list(s) for s in spec.shapes], "fp32": {}, "bf16": {}}
    phases = [("eager", "onnxruntime", "openvino")] + ([] if args.no_compile else [("compile",)])
    for names in phases:
        for name, spec in nets.items():
            for precision in ("fp32", "bf16"):
                for engine in names:
                    t0 = time.perf_counter()
                    measured, _ = select.measure_engines(spec, precision, artifacts, args.repeats, (engine,))
                    build = time.perf_counter() - t0 - measured[engine].get("ms", 0) * args.repeats / 1000
                    entry = {**measured[engine], "setup_s": round(build, 1)}
                    result["networks"][name][precision][engine] = entry
                    print(f"{name:8s} {precision} {engine:12s} {json.dumps(entry)}", flush=True)
                    result["networks"][name][f"auto_{precision}"] = _auto(result["networks"][name][precision])
                    out.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(out / "engines.json", json.dumps(result, indent=1))
    print(_table(result))


def _table(result: dict) -> str:
    rows = ["| network | inputs | precision | engine | ms/call | max abs err | max rel err | rel L2 | ok | auto |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, net in result["networks"].items():
        for precision in ("fp32", "bf16"):
            for engine, e in net[precision].items():
                if "ms" not in e:
                    rows.append(f"| {name} | {net['input_shapes'][0]} | {precision} | {engine} | "
                                f"{e.get('unavailable') or e.get('mismatch')} | | | | no | |")
                    continue
                pick = "**picked**" if net.get(f"auto_{precision}") == engine else ""
                rows.append(f"| {name} | {net['input_shapes'][0]} | {precision} | {engine} | {e['ms']:.1f} | "
                            f"{e['max_abs_error']:.2g} | {e['max_rel_error']:.2g} | {e['rel_error']:.2g} | "
                            f"{'yes' if e['ok'] else 'no'} | {pick} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
