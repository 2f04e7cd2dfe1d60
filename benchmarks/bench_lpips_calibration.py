"""LPIPS calibration against pyiqa's published values, and bf16 vs fp32 on 2.5D volumes.

Calibration: pyiqa's ``ResultsCalibra`` folder (in the pyiqa 0.1.16 wheel: ``dist_dir/`` and
``ref_dir/`` hold same-named BMPs) lists LPIPS-AlexNet v0.1 for five pairs; our offline
torch port must reproduce them (pyiqa maps [0, 1] inputs to [-1, 1] like ``load_lpips`` does)::

    pip download --no-deps pyiqa==0.1.16 -d /tmp/pyiqa && unzip -q /tmp/pyiqa/*.whl -d /tmp/pyiqa/x
    python benchmarks/bench_lpips_calibration.py --calibra /tmp/pyiqa/x/ResultsCalibra

Precision (``--precision``): ``lpips_volume`` in fp32 and under bf16 autocast on a few pairs
built from nilearn's bundled MNI152 template (downsampled, 0-1) and corrupted copies, with times.

Writes ``benchmarks/results/lpips_calibration.json`` (and ``lpips_precision.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldm_ood.models.perceptual import load_lpips, lpips, lpips_volume

# pyiqa's published calibration values for "lpips" (LPIPS-AlexNet v0.1) on these five pairs.
PYIQA_LPIPS = {"I03": 0.7237, "I04": 0.2572, "I06": 0.0508, "I08": 0.0521, "I19": 0.4253}
RESULTS = Path(__file__).parent / "results"


def _read_rgb(path: Path) -> torch.Tensor:
    """Image file -> ``(1, 3, H, W)`` float32 in [0, 1] (as torchvision's ``to_tensor``)."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def calibration(calibra: Path, model) -> dict:
    rows, worst = {}, 0.0
    for name, expected in PYIQA_LPIPS.items():
        dist = _read_rgb(calibra / "dist_dir" / f"{name}.bmp")
        ref = _read_rgb(calibra / "ref_dir" / f"{name}.bmp")
        measured = float(lpips(model, dist, ref))
        worst = max(worst, abs(measured - expected))
        rows[name] = {"expected": expected, "measured": round(measured, 6),
                      "abs_diff": round(abs(measured - expected), 6)}
        print(f"{name}: expected {expected:.4f}  measured {measured:.4f}")
    return {"metric": "LPIPS v0.1 AlexNet", "reference": "pyiqa 0.1.16 ResultsCalibra",
            "pairs": rows, "max_abs_diff": round(worst, 6), "within_5e-4": worst < 5e-4}


def _volumes(size: tuple[int, int, int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from nilearn.datasets import load_mni152_template  # bundled with nilearn, offline

    t = torch.from_numpy(load_mni152_template(resolution=2).get_fdata().astype(np.float32))
    t = F.interpolate(t[None, None], size=size, mode="trilinear", align_corners=False).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(t.shape, generator=g)
    blurred = F.avg_pool3d(t, 3, stride=1, padding=1)
    return {
        "noise_0.01": (t, (t + 0.01 * noise).clamp(0, 1)),
        "noise_0.1": (t, (t + 0.1 * noise).clamp(0, 1)),
        "blur_3": (t, blurred),
        "flip_y": (t, t.flip(3)),  # the 2 mm MNI152 template is left-right symmetric
        "intensity_10pct": (t, 0.1 * t),
    }


def precision(model, size: tuple[int, int, int], batch_slices: int) -> dict:
    rows = {}
    for name, (a, b) in _volumes(size).items():
        out = {}
        for tag, bf16 in (("fp32", False), ("bf16", True)):
            lpips_volume(model, a, b, batch_slices=batch_slices, bf16=bf16)  # warm-up
            t0 = time.perf_counter()
            v = float(lpips_volume(model, a, b, batch_slices=batch_slices, bf16=bf16))
            out[tag], out[f"{tag}_seconds"] = v, round(time.perf_counter() - t0, 3)
        out["abs_diff"] = abs(out["bf16"] - out["fp32"])
        out["rel_diff"] = out["abs_diff"] / max(out["fp32"], 1e-3)
        rows[name] = out
        print(f"{name}: fp32 {out['fp32']:.5f} ({out['fp32_seconds']}s)  "
              f"bf16 {out['bf16']:.5f} ({out['bf16_seconds']}s)  rel {out['rel_diff']:.2e}")
    return {"volume_shape": list(size), "batch_slices": batch_slices, "pairs": rows,
            "max_abs_diff": max(r["abs_diff"] for r in rows.values()),
            "max_rel_diff": max(r["rel_diff"] for r in rows.values()),
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibra", type=Path, help="pyiqa ResultsCalibra directory")
    p.add_argument("--precision", action="store_true", help="also compare bf16 vs fp32 on volumes")
    p.add_argument("--size", type=int, nargs=3, default=(64, 76, 64), help="volume grid for --precision")
    p.add_argument("--batch-slices", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.calibra is None and not args.precision:
        p.error("give --calibra DIR and/or --precision")
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_lpips("cpu")
    if args.calibra is not None:
        res = calibration(args.calibra, model)
        (args.out / "lpips_calibration.json").write_text(json.dumps(res, indent=2))
        print(f"max |diff| {res['max_abs_diff']:.2e} -> {args.out / 'lpips_calibration.json'}")
    if args.precision:
        res = precision(model, tuple(args.size), args.batch_slices)
        (args.out / "lpips_precision.json").write_text(json.dumps(res, indent=2))
        print(f"max rel diff bf16 vs fp32 {res['max_rel_diff']:.2e} -> {args.out / 'lpips_precision.json'}")


if __name__ == "__main__":
    main()
