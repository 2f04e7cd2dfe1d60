"""A fabricated run directory with score files, maps, masks and a manifest (values known by hand).

``make_tiny_run(root)`` writes, per docs/CONTRACTS.md:

- 3D inputs (8×8×8 NIfTI) for sets ``id`` (4 cases), ``far_mr`` (3), ``chunk_top`` (3), and LDM / LTM
  anomaly maps for them; ``scores/ldm/*.csv`` and ``scores/ltm/*.csv``;
- 2D inputs (16×16 PNG) for the segmentation sets ``id`` (3 healthy) and ``sprites`` (3, with masks),
  ``segment/c/*.csv`` with anomaly maps, and ``calibration/segment.json`` / ``calibration/ood.json``.

Expected values are in ``EXPECTED`` (computed by counting pairs in the comments).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.methods.records import RecordWriter

LDM_FIELDS = ["case_id", "set", "pred_score", "score_mse", "score_lpips", "percentile", "flag", "map_path", "seconds"]
LTM_FIELDS = ["case_id", "set", "pred_score", "percentile", "flag", "map_path", "seconds", "nll"]
SEG_FIELDS = ["case_id", "set", "pred_score", "healed_path", "map_path", "mask_path", "seconds"]

# ---- detection scores (higher = more OOD)
LDM = {
    "id": [0.1, 0.2, 0.3, 0.4],
    "far_mr": [0.5, 0.6, 0.7],  # all 12 pairs right -> AUROC 1
    "chunk_top": [0.15, 0.35, 0.9],  # beats 1 + 3 + 4 of 4 ID -> 8/12
}
MSE = {"id": [0.4, 0.3, 0.2, 0.1], "far_mr": [0.0, 0.05, 0.5], "chunk_top": [1.0, 2.0, 3.0]}
LTM = {
    "id": [0.4, 0.3, 0.2, 0.1],
    "far_mr": [0.0, 0.05, 0.5],  # only 0.5 beats the 4 ID -> 4/12
    "chunk_top": [1.0, 2.0, 3.0],  # -> 1
}
# ---- segmentation (2D): image scores and maps
SEG_ID = [0.1, 0.2, 0.3]
SEG_SPRITES = [0.25, 0.4, 0.5]  # beats 2 + 3 + 3 of 3 -> 8/9
SEG_THRESHOLD = 0.5

EXPECTED = {
    ("ldm", "far_mr"): 1.0,
    ("ldm", "chunk_top"): 8 / 12,
    ("ltm", "far_mr"): 4 / 12,
    ("ltm", "chunk_top"): 1.0,
    ("ldm_mse", "far_mr"): 4 / 12,
    # AP ldm chunk_top: desc .9(+) .4 .35(+) .3 .2 .15(+) .1: P@hits 1, 2/3, 3/6 -> (1 + 2/3 + 1/2)/3
    ("ldm", "chunk_top", "auprc"): (1 + 2 / 3 + 1 / 2) / 3,
    ("seg", "image_auroc"): 8 / 9,
    ("seg", "best_dice"): 1.0,  # lesions score 0.8..1, background <= 0.45 -> separable
    # at threshold 0.5 every lesion voxel (>= 0.8) and no background voxel is predicted -> Dice 1,
    # except sprite 2 where one background voxel is set to 0.6 -> pooled 2*TP / (TP + 1 + TP)
}


def _volume(rng: np.random.Generator, shape=(8, 8, 8)) -> np.ndarray:
    v = rng.uniform(0.2, 0.8, shape).astype(np.float32)
    v[0] = 0.0
    return v


def make_tiny_run(root: Path) -> tuple[Path, Path]:
    """Write the run under ``root/run`` and data under ``root/data``; returns (run dir, manifest)."""
    rng = np.random.default_rng(0)
    run, data = root / "run", root / "data"
    cases: list[Case] = []
    writers = {
        "ldm": {s: RecordWriter(run / "scores" / "ldm" / f"{s}.csv", LDM_FIELDS) for s in LDM},
        "ltm": {s: RecordWriter(run / "scores" / "ltm" / f"{s}.csv", LTM_FIELDS) for s in LTM},
    }
    for s in LDM:
        for i, score in enumerate(LDM[s]):
            cid = f"{s}_{i}"
            img = write_image(data / s / f"{cid}.nii.gz", _volume(rng))
            cases.append(Case(cid, img, None, s, "test"))
            maps = {}
            for method in ("ldm", "ltm"):
                amap = rng.uniform(0, 0.2, (8, 8, 8)).astype(np.float32)
                amap[5:8, 2:6, 2:6] += 1.0 if method == "ldm" else 0.5
                maps[method] = write_image(run / "maps" / method / s / f"{cid}.nii.gz", amap)
            writers["ldm"][s].write({"case_id": cid, "set": s, "pred_score": score, "score_mse": MSE[s][i],
                                     "score_lpips": score * 2, "percentile": 50.0, "flag": 0,
                                     "map_path": str(maps["ldm"].relative_to(run)), "seconds": 1.0})
            writers["ltm"][s].write({"case_id": cid, "set": s, "pred_score": LTM[s][i], "percentile": 50.0,
                                     "flag": 0, "map_path": str(maps["ltm"]), "seconds": 0.5, "nll": 1.0})
    # a validation case of the ID set: must not change anything
    val = write_image(data / "val" / "val_0.nii.gz", _volume(rng))
    cases.append(Case("val_0", val, None, "id", "val"))

    # ---- 2D segmentation
    seg = {s: RecordWriter(run / "segment" / "c" / f"{s}.csv", SEG_FIELDS) for s in ("id", "sprites")}
    for s, scores in (("id", SEG_ID), ("sprites", SEG_SPRITES)):
        for i, score in enumerate(scores):
            cid = f"slice_{s}_{i}"
            img = rng.uniform(0.2, 0.8, (16, 16))
            amap = rng.uniform(0.0, 0.45, (16, 16))
            mask_path = None
            if s == "sprites":
                gt = np.zeros((16, 16), bool)
                gt[3 + i : 7 + i, 4:9] = True
                img[gt] = 1.0
                amap[gt] = rng.uniform(0.8, 1.0, int(gt.sum()))
                if i == 2:
                    amap[0, 0] = 0.6  # one false positive at the validation threshold
                mask_path = write_image(data / "seg" / f"{cid}_mask.png", gt.astype(np.float32))
            img_path = write_image(data / "seg" / f"{cid}.png", img)
            map_path = write_image(run / "segment" / "c" / s / f"{cid}_map.nii.gz", amap.astype(np.float32))
            cases.append(Case(cid, img_path, mask_path, s, "test"))
            seg[s].write({"case_id": cid, "set": s, "pred_score": score, "healed_path": "", "map_path": str(map_path),
                          "mask_path": "", "seconds": 0.1})
    (run / "calibration").mkdir(parents=True, exist_ok=True)
    (run / "calibration" / "segment.json").write_text(json.dumps({"residual_threshold": SEG_THRESHOLD}))
    (run / "calibration" / "ood.json").write_text(json.dumps({"threshold": 0.45, "fpr": 0.05}))
    manifest = write_manifest(data / "manifest.csv", cases)
    return run, manifest


def sprite_lesion_voxels() -> int:
    """Lesion voxels over the 3 sprites (4×5 each)."""
    return 3 * 20
