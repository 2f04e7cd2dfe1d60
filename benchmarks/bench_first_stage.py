"""What limits a trained first stage's reconstruction: the codebook, or the encoder/decoder?

For every validation scan of ``--data`` (split ``val``), preprocessed as the run's config says:

* ``vq``: PSNR / SSIM of ``D(q(E(x)))``, the first stage as scoring uses it (fp32, clamped to [0, 1]);
* ``no_vq``: ``D(E(x))``, the decoder on the encoder's output *without* the codebook lookup: when it is
  not much better than ``vq``, the codebook is not what limits the reconstruction;
* ``quantisation_error``: ``‖q(E(x)) − E(x)‖² / ‖E(x)‖²`` over the validation latents;
* two references that need no network, of how much fine detail the data holds: ``box3_smoothing``
  (the input against its own 3×3×3 box-smoothed copy) and ``pool_upsample`` (average-pool by the first
  stage's factor ``2**levels`` and trilinear upsampling back).

    .venv/bin/python benchmarks/bench_first_stage.py --run bench/runs/l2 --data bench/data/manifest.csv

Writes ``benchmarks/results/first_stage.json`` (means and per-scan values).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldm_ood.data.io import read_image
from ldm_ood.data.manifest import read_manifest
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.models.first_stage import decode, encoder_output, quantize_fp32
from ldm_ood.models.loading import load_first_stage
from ldm_ood.runs import RunDir
from ldm_ood.training.reconstruction_metrics import psnr, ssim

RESULTS = Path(__file__).parent / "results" / "first_stage.json"


def box3(x: torch.Tensor) -> torch.Tensor:
    """3×3×3 (3×3 in 2D) box smoothing with replicated edges: ``(1, 1, *S) -> (1, 1, *S)``."""
    dims = x.ndim - 2
    pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
    return pool(F.pad(x, (1,) * (2 * dims), mode="replicate"), 3, stride=1)


def pool_upsample(x: torch.Tensor, f: int) -> torch.Tensor:
    """Average-pool by ``f`` and upsample back (trilinear / bilinear): the detail a ``f``× grid cannot hold."""
    dims = x.ndim - 2
    pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
    return F.interpolate(pool(x, f), scale_factor=f, mode="trilinear" if dims == 3 else "bilinear", align_corners=False)


@torch.no_grad()
def measure(run_dir: str, manifest: str) -> dict:
    run = RunDir(run_dir)
    cfg = run.load_config()
    model = load_first_stage(run, "cpu").float().eval()
    pre = Preprocessor(cfg.data)
    cases = [c for c in read_manifest(manifest) if c.split == "val"]
    if not cases:
        raise SystemExit(f"{manifest}: no case with split 'val'")
    f = cfg.first_stage.downsampling_factor
    rows, err, energy = [], 0.0, 0.0
    for case in cases:
        x, _ = pre.apply(read_image(case.path))
        x = x.float()[None]
        z = encoder_output(model, x, False)
        q, _ = quantize_fp32(model, z)
        err += float((q - z).pow(2).sum())
        energy += float(z.pow(2).sum())
        row = {"case_id": case.case_id}
        for name, y in (("vq", decode(model, z, requantize=True)), ("no_vq", decode(model, z, requantize=False)), ("box3_smoothing", box3(x)),
                        ("pool_upsample", pool_upsample(x, f))):
            y = y.float().clamp(0, 1)
            row[f"{name}_psnr"] = float(psnr(x, y)[0])
            row[f"{name}_ssim"] = float(ssim(x, y)[0])
        rows.append(row)
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "case_id"}
    return {"run": str(run.root), "levels": cfg.first_stage.levels, "n_val": len(rows), "mean": means,
            "quantisation_error": err / max(energy, 1e-30), "per_scan": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run with a trained first stage")
    ap.add_argument("--data", required=True, help="manifest with split 'val' scans")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = measure(args.run, args.data) | {"cpu": platform.processor() or platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "per_scan"}, indent=2))


if __name__ == "__main__":
    main()
