"""Training benchmarks -> JSON in benchmarks/results/ (never asserted in tests).

    python benchmarks/bench_training.py throughput [--preset cpu] [--steps 3]
        samples/s of one training step of the first stage (VQ-GAN: G + D + LPIPS), the latent DDPM
        and the LTM, fp32 vs bf16 autocast (+ channels-last), side by side in one process.
    python benchmarks/bench_training.py bf16-quality [--steps 40]
        the same first stage / LDM trained for a few steps from identical initial weights and data in
        fp32 and bf16: final validation losses side by side (does bf16 training hurt?).
    python benchmarks/bench_training.py quality --run RUN
        first-stage reconstruction quality on the run's validation split (MSE, PSNR, SSIM; fp32 and
        bf16 inference) and the LDM validation-loss curve from ldm/metrics.csv.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from ldm_ood.config import Config, load_config
from ldm_ood.runs import RunDir
from ldm_ood.training.distributed import DistContext
from ldm_ood.training.first_stage import FirstStageTask, load_lpips_for, vq_forward
from ldm_ood.training.ldm import LDMTask
from ldm_ood.training.transformer import TransformerTask

RESULTS = Path(__file__).resolve().parent / "results"


def _smooth_images(n: int, grid: tuple[int, ...], seed: int) -> torch.Tensor:
    """Blocky-smooth random volumes in [0, 1] (upsampled coarse noise + a sphere), ``(n, 1, *grid)``."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, *(s // 8 for s in grid), generator=g)
    x = torch.nn.functional.interpolate(coarse, size=grid, mode="trilinear" if len(grid) == 3 else "bilinear")
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in grid], indexing="ij")
    sphere = (sum(a**2 for a in axes) < 0.6).float()
    return (0.5 * x + 0.5 * sphere).clamp(0, 1)


def _cfg(preset: str, bf16: bool) -> Config:
    opt = {"optim": {"precision": "bf16" if bf16 else "fp32"}}
    return load_config(preset=preset, overrides={"first_stage": opt, "ldm": opt, "transformer": opt})


def _time_steps(step, batch, steps: int) -> float:
    step(batch)  # warm-up (allocations, oneDNN kernel selection)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(batch)
    return (time.perf_counter() - t0) / steps


def throughput(preset: str, steps: int) -> dict:
    ctx = DistContext()
    out: dict = {"preset": preset, "steps": steps, "threads": torch.get_num_threads(), "stages": {}}
    for bf16 in (False, True):
        cfg = _cfg(preset, bf16)
        tag = "bf16" if bf16 else "fp32"
        grid = tuple(cfg.data.grid)
        # first stage (VQ-GAN: generator + discriminator + LPIPS)
        fs = FirstStageTask(cfg, ctx, load_lpips_for(cfg, ctx.device))
        bs = cfg.first_stage.optim.batch_size
        batch = {"image": _smooth_images(bs, grid, 0)}
        sec = _time_steps(lambda b: fs.train_step(b, epoch=1), batch, steps)
        out["stages"].setdefault("first_stage", {})[tag] = {"batch": bs, "s_per_step": sec, "samples_per_s": bs / sec}
        # latent DDPM on latents of the first stage's shape
        lat = fs.vqvae.eval()
        with torch.no_grad():
            z = lat.encode_stage_2_inputs(batch["image"])
        ldm = LDMTask(cfg, lat, 1.0, tuple(z.shape[2:]), ctx)
        bs = cfg.ldm.optim.batch_size
        zb = {"latent": z.repeat((bs + z.shape[0] - 1) // z.shape[0], *([1] * (z.ndim - 1)))[:bs]}
        sec = _time_steps(lambda b: ldm.train_step(b, epoch=1), zb, steps)
        out["stages"].setdefault("ldm", {})[tag] = {"batch": bs, "latent": list(z.shape[1:]), "s_per_step": sec,
                                                     "samples_per_s": bs / sec}
        # LTM on token sequences of the latent grid
        ltm = TransformerTask(cfg, tuple(z.shape[2:]), ctx)
        bs = cfg.transformer.optim.batch_size
        seq = torch.randint(0, cfg.first_stage.num_embeddings, (bs, ltm.seq_len + 1))
        sec = _time_steps(lambda b: ltm.train_step(b, epoch=1), {"tokens": seq}, steps)
        out["stages"].setdefault("transformer", {})[tag] = {"batch": bs, "seq_len": ltm.seq_len, "s_per_step": sec,
                                                             "samples_per_s": bs / sec}
    for stage in out["stages"].values():
        stage["bf16_speedup"] = stage["bf16"]["samples_per_s"] / stage["fp32"]["samples_per_s"]
    return out


def bf16_quality(steps: int, grid: int) -> dict:
    """Train from identical weights/data in fp32 and bf16; compare validation losses."""
    ctx = DistContext()
    train_x, val_x = _smooth_images(8, (grid,) * 3, 0), _smooth_images(4, (grid,) * 3, 1)
    out: dict = {"steps": steps, "grid": grid, "first_stage": {}, "ldm": {}}
    trained = {}
    for bf16 in (False, True):
        tag = "bf16" if bf16 else "fp32"
        cfg = load_config(preset="cpu", overrides={"data": {"grid": (grid,) * 3},
                                                   "first_stage": {"optim": {"precision": "bf16" if bf16 else "fp32", "batch_size": 2}}})
        fs = FirstStageTask(cfg, ctx, load_lpips_for(cfg, ctx.device))
        t0 = time.perf_counter()
        for i in range(steps):
            j = (2 * i) % len(train_x)
            fs.train_step({"image": train_x[j:j + 2]}, epoch=1)
        fs.vqvae.eval()
        with torch.no_grad():
            x_hat, vq = vq_forward(fs.vqvae, val_x, bf16=False)  # evaluate both in fp32
        out["first_stage"][tag] = {"val_mse": torch.mean((x_hat - val_x) ** 2).item(), "val_vq": vq.item(),
                                   "seconds": time.perf_counter() - t0}
        trained[tag] = fs.vqvae
    # LDM on the fp32 first stage's latents, fp32 vs bf16 training
    with torch.no_grad():
        z_train = trained["fp32"].encode_stage_2_inputs(train_x)
        z_val = trained["fp32"].encode_stage_2_inputs(val_x)
    scale = 1.0 / z_train.std().item()
    for bf16 in (False, True):
        tag = "bf16" if bf16 else "fp32"
        cfg = load_config(preset="cpu", overrides={"data": {"grid": (grid,) * 3}, "ldm": {"optim": {"precision": "bf16" if bf16 else "fp32"}}})
        task = LDMTask(cfg, trained["fp32"], scale, tuple(z_train.shape[2:]), ctx)
        task.generator.manual_seed(0)
        t0 = time.perf_counter()
        for i in range(steps):
            task.train_step({"latent": z_train}, epoch=1)
        task.unet.eval()
        task.bf16 = False  # evaluate both in fp32 with the same noise
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            vals = [task.val_step({"latent": z_val}, g)[0] / len(z_val) for _ in range(8)]
        out["ldm"][tag] = {"val_loss": sum(vals) / len(vals), "seconds": time.perf_counter() - t0}
    return out


def _ssim(x: torch.Tensor, y: torch.Tensor, spatial_dims: int) -> float:
    from monai.metrics import SSIMMetric

    return SSIMMetric(spatial_dims=spatial_dims, data_range=1.0)(y.float(), x.float()).mean().item()


def quality(run_dir: Path) -> dict:
    from ldm_ood.models.loading import load_first_stage
    from ldm_ood.training.api import build_datasets

    run = RunDir(run_dir)
    cfg = run.load_config()
    if cfg.data.manifest is None:
        raise SystemExit(f"{run.config_path}: data.manifest is not set")
    _, val_ds = build_datasets(cfg, cfg.data.manifest)
    model = load_first_stage(run)
    out: dict = {"run": str(run.root), "n_val": len(val_ds), "first_stage": {}}
    for bf16 in (False, True):
        mse, psnr, ssim = [], [], []
        t0 = time.perf_counter()
        for i in range(len(val_ds)):
            x = val_ds[i]["image"][None]
            with torch.no_grad():
                x_hat = vq_forward(model, x, bf16)[0].float().clamp(0, 1)
            m = torch.mean((x - x_hat) ** 2).item()
            mse.append(m)
            psnr.append(10 * math.log10(1.0 / max(m, 1e-12)))
            ssim.append(_ssim(x, x_hat, cfg.data.spatial_dims))
        n = len(mse)
        out["first_stage"]["bf16" if bf16 else "fp32"] = {
            "mse": sum(mse) / n, "psnr": sum(psnr) / n, "ssim": sum(ssim) / n,
            "seconds_per_case": (time.perf_counter() - t0) / n,
        }
    metrics = run.metrics_path("ldm")
    if metrics.exists():
        from ldm_ood.training.metrics import read_metrics

        rows = read_metrics(metrics)
        out["ldm_val_curve"] = [{"epoch": int(r["epoch"]), "val_loss": r["val_loss"], "train_loss": r["loss"]}
                                for r in rows if r["val_loss"] == r["val_loss"]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--preset", default="cpu")
    t.add_argument("--steps", type=int, default=3)
    q = sub.add_parser("bf16-quality")
    q.add_argument("--steps", type=int, default=40)
    q.add_argument("--grid", type=int, default=32)
    r = sub.add_parser("quality")
    r.add_argument("--run", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "throughput":
        res = throughput(a.preset, a.steps)
    elif a.cmd == "bf16-quality":
        res = bf16_quality(a.steps, a.grid)
    else:
        res = quality(a.run)
    res["machine"] = {"python": sys.version.split()[0], "torch": torch.__version__, "cpu": platform.processor()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"training_{a.cmd}.json"
    path.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(f"-> {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
