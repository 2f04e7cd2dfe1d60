"""Paper 001 variant (c) against training budget: where does ⌈DICE⌉ on the sprite lesions flatten?

For each budget multiplier ``b`` (ascending), the 2D first stage (VQ-VAE) and the LDM of the preset
are trained for ``b`` × the preset's epochs (early-stopping patience scaled alike), then calibrated
and variant ``--variant`` segments the sprite test set. The first stage of budget ``b`` continues
the previous budget's (``--resume`` with more epochs); the LDM is trained afresh on it (an LDM
trained on another first stage is stale). Every step resumes: rerun the command after an
interruption. Writes one row per budget (epochs trained, validation losses, training seconds and, per
lesion set (``sprites_*``, ``haemorrhage_*``), ⌈DICE⌉ and pixel AUPRC with their case-bootstrap CIs, Dice
at the validation threshold, image AUROC) to ``benchmarks/results/segment_budget.json``.

Usage::

    .venv/bin/python benchmarks/bench_segment_budget.py --preset cpu-2d --budgets 1 2 4 [--data DIR] [--out DIR]

``--data``: a built-in benchmark folder with ``manifest_2d.csv`` (default: ``ldm-ood synth`` of the
3D preset into ``<out>/data``; the sprite generator and test set are the benchmark's own).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

from ldm_ood.config import load_config
from ldm_ood.evaluation.evaluate import evaluate
from ldm_ood.methods.segment.pipeline import calibrate_segment, segment
from ldm_ood.runs import RunDir
from ldm_ood.synthetic.cohort import synth
from ldm_ood.training.api import train

OUT = Path(__file__).parent / "results" / "segment_budget.json"


def _overrides(preset: str, manifest: Path, b: float) -> dict:
    base = load_config(preset=preset)
    scaled = {}
    for stage in ("first_stage", "ldm"):
        o = getattr(base, stage).optim
        scaled[stage] = {"optim": {"max_epochs": max(1, round(o.max_epochs * b)), "patience": max(1, round(o.patience * b))}}
    return {"data": {"manifest": str(manifest)}, **scaled}


def _last_val(path: Path) -> float | None:
    rows = [r for r in csv.DictReader(path.open())] if path.exists() else []
    vals = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    return min(vals) if vals else None


def run_budget(preset: str, manifest: Path, b: float, root: Path, previous: Path | None, variant: str) -> dict:
    """Train, calibrate and segment at budget ``b`` in ``root`` (module docstring); one result row."""
    run = RunDir(root)
    if not run.config_path.exists():
        if previous is not None and (previous / "first_stage").is_dir():  # continue it: more epochs, not DONE
            shutil.copytree(previous / "first_stage", root / "first_stage")
            run.done_path("first_stage").unlink(missing_ok=True)
        run.save_config(load_config(preset=preset, overrides=_overrides(preset, manifest, b)))
    t0 = time.perf_counter()
    for stage in ("first_stage", "ldm"):
        train(run.root, stage, resume=True)
    seconds = time.perf_counter() - t0
    if not run.segment_calibration_path.exists():
        calibrate_segment(run.root, variants=[variant])
    segment(run.root, variant=variant, progress=False)
    summary = evaluate({f"b{b:g}": run.root}, out=run.summary_path, print_tables=False)
    lesion_sets = {r.set: r for r in summary.segmentation if r.variant == variant and r.n_masks > 0}
    return {
        "budget": b, "first_stage_epochs": len(list(csv.DictReader(run.metrics_path("first_stage").open()))),
        "ldm_epochs": len(list(csv.DictReader(run.metrics_path("ldm").open()))),
        "first_stage_val_loss": _last_val(run.metrics_path("first_stage")), "ldm_val_loss": _last_val(run.metrics_path("ldm")),
        "train_seconds_this_call": seconds,
        **{f"{name}_{k}": v for name, row in lesion_sets.items() for k, v in _metrics(row).items()},
    }


def _metrics(row) -> dict:
    """⌈DICE⌉ and pixel AUPRC with their CIs, Dice at the validation threshold, image AUROC (whole chain, subsample)."""
    return {"best_dice": row.best_dice, "best_dice_ci": [row.best_dice_low, row.best_dice_high],
            "pixel_auprc": row.pixel_auprc, "pixel_auprc_ci": [row.pixel_auprc_low, row.pixel_auprc_high],
            "dice_at_threshold": row.dice_at_threshold, "image_auroc": row.image_auroc,
            "image_auroc_subsample": row.image_auroc_subsample}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cpu-2d")
    p.add_argument("--budgets", type=float, nargs="+", default=[1, 2, 4])
    p.add_argument("--variant", default="c")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("segment-budget"))
    p.add_argument("--json", type=Path, default=OUT)
    args = p.parse_args()
    data = args.data or args.out / "data"
    if not (data / "manifest_2d.csv").exists():
        synth(args.preset.removesuffix("-2d"), data)
    rows, previous = [], None
    for b in sorted(args.budgets):
        root = args.out / f"budget_{b:g}"
        rows.append(run_budget(args.preset, (data / "manifest_2d.csv").resolve(), b, root, previous, args.variant))
        previous = root
        print(json.dumps(rows[-1]), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"preset": args.preset, "variant": args.variant, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
