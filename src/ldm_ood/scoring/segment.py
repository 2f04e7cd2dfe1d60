"""Paper 001 anomaly segmentation, files in and out: ``ldm-ood segment`` (§3, §4.1).

The pieces live in one module each and are re-exported here (the CLI and the benchmark import
``calibrate_segment`` and ``segment`` from this module):

* :mod:`.segment_variants`: variants a–d (:func:`variant_spec`), residual maps, foreground, FPR threshold;
* :mod:`.segment_batch`: one batch ``x (B, 1, *grid)`` → image score, KL map/mask, healed image, map;
* :mod:`.segment_calibration`: :func:`calibrate_segment` on the healthy validation split.

:func:`segment` writes, on the input's grid and affine, ``<case>_healed``, ``<case>_map`` and
``<case>_mask`` (PNG for PNG inputs, else NIfTI) under ``RunDir.segment_dir(variant, set)`` and the
rows of ``segment_scores_path(variant, set)`` (``FIELDS``). Folder mode (MOOD layout) writes the same
three images plus ``<case>.txt`` (the image-level score, one number) into the output folder, and
``segment_<variant>.csv`` there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.progress import Progress

from ..config import Config, ConfigError
from ..data.io import suffix_of, write_image
from ..data.manifest import Case, read_manifest, select, set_names
from ..errors import BatchFailures
from ..training.checkpoint import atomic_write_text
from .records import RecordWriter
from .segment_batch import (  # noqa: F401  (_generators, _score_t: used by benchmarks/bench_segment.py)
    BatchOutput,
    SegmentModels,
    _generators,
    _score_t,
    case_seeds,
    image_score,
    kl_map_of,
    latents,
    segment_batch,
)
from .segment_calibration import calibrate_segment, load_batches, load_calibration, manifest_cases, segment_setup
from .segment_variants import (
    FOREGROUND_FRACTION,
    VARIANT_D_KL_NUM_T,
    VARIANTS,
    VariantSpec,
    foreground,
    fpr_threshold,
    kl_key,
    residual_map,
    upsample_mask,
    variant_spec,
)

__all__ = [
    "FIELDS", "FOREGROUND_FRACTION", "VARIANTS", "VARIANT_D_KL_NUM_T", "BatchOutput", "SegmentModels",
    "SegmentResult", "VariantSpec", "calibrate_segment", "case_seeds", "foreground", "fpr_threshold",
    "image_score", "kl_key", "kl_map_of", "latents", "load_calibration", "residual_map", "segment",
    "segment_batch", "upsample_mask", "variant_spec",
]

FIELDS = ("case_id", "set", "pred_score", "healed_path", "map_path", "mask_path", "seconds")


@dataclass
class SegmentResult:
    """What :func:`segment` wrote: one score CSV per set (or the output folder's), counts."""

    variant: str
    outputs: dict[str, Path] = field(default_factory=dict)
    segmented: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0


def _write_outputs(preprocessor, meta, case: Case, out_dir: Path, healed, amap, threshold: float) -> dict[str, str]:
    """Healed image, map and ``map >= threshold`` mask (each ``(*grid)``) on the input's native grid."""
    ext = ".png" if suffix_of(case.path) == ".png" else ".nii.gz"
    h = preprocessor.invert(healed.cpu().numpy(), meta)
    m = preprocessor.invert(amap.cpu().numpy(), meta)
    binary = (m.array >= threshold).astype(np.float32 if ext == ".png" else np.uint8)
    paths = {k: out_dir / f"{case.case_id}_{k}{ext}" for k in ("healed", "map", "mask")}
    write_image(paths["healed"], h.array, h.affine)
    write_image(paths["map"], m.array, m.affine)
    write_image(paths["mask"], binary, m.affine)
    return {f"{k}_path": str(p) for k, p in paths.items()}


def _jobs(run, cfg: Config, variant: str, manifest, sets, input_dir, output_dir) -> list[tuple[Path, Path, list[Case]]]:
    """``(score csv, image folder, cases)`` per test set, or one job for folder mode."""
    if input_dir is not None:
        return [(Path(output_dir) / f"segment_{variant}.csv", Path(output_dir), read_manifest(input_dir))]
    cases, jobs = manifest_cases(cfg, manifest), []
    for name in sets or set_names(cases, split="test"):
        todo = select(cases, split="test", set_name=name)
        if not todo:
            raise ConfigError(f"no test cases in set {name!r}")
        jobs.append((run.segment_scores_path(variant, name), run.segment_dir(variant, name), todo))
    return jobs


def segment(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    sets: Sequence[str] | None = None,
    variant: str = "c",
    input_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    *,
    config: Config | None = None,
    models: SegmentModels | None = None,
    preprocessor: Any = None,
    device: str | torch.device | None = None,
) -> SegmentResult:
    """Segment anomalies with variant ``variant`` (paper 001 §3): healed image, map, mask, score.

    Manifest mode: every ``test`` set (or ``sets``) -> ``RunDir.segment_dir(variant, set)`` and
    ``segment_scores_path(variant, set)``. Folder mode (``input_dir`` + ``output_dir``): every image
    of the folder -> ``output_dir/<case>_{healed,map,mask}.*``, ``output_dir/<case>.txt`` (the score)
    and ``output_dir/segment_<variant>.csv``. Finished cases are skipped; ``seconds`` is the batch's
    time divided by its size. A variant not yet calibrated is calibrated first on the run's
    validation split.
    """
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    run, cfg, models, preprocessor, device = segment_setup(run_dir, config, models, preprocessor, device)
    scfg, spec = cfg.segment, variant_spec(variant, cfg.segment)
    calib, thr = load_calibration(run)
    if variant not in calib.get("variants", {}) or (spec.kl_key and spec.kl_key not in thr):
        calibrate_segment(run.root, config=cfg, variants=[variant], force=False, models=models,
                          preprocessor=preprocessor, device=device)
        calib, thr = load_calibration(run)
    threshold = calib["variants"][variant]["residual_threshold"]
    kl_thr = thr.get(spec.kl_key) if spec.kl_key else None
    folder_mode = input_dir is not None

    failures, result = BatchFailures(), SegmentResult(variant)
    t_start = time.perf_counter()
    with Progress(transient=True) as progress:
        for csv_path, out_dir, cases in _jobs(run, cfg, variant, manifest, sets, input_dir, output_dir):
            writer = RecordWriter(csv_path, FIELDS)
            result.outputs["folder" if folder_mode else cases[0].set] = csv_path
            done = writer.done_ids()
            todo = [c for c in cases if c.case_id not in done]
            result.skipped += len(cases) - len(todo)
            task = progress.add_task(f"segment ({variant}) {cases[0].set}", total=len(todo))
            for batch, x, metas in load_batches(todo, preprocessor, scfg.batch_size, failures):
                t0 = time.perf_counter()
                try:
                    x = x.to(device)
                    out = segment_batch(models, x, spec, scfg, kl_thr, case_seeds([c.case_id for c in batch], scfg.seed))
                except Exception as err:  # one failing batch never loses the others
                    for c in batch:
                        failures.add(c.case_id, f"{c.path}: {type(err).__name__}: {err}")
                    progress.advance(task, len(batch))
                    continue
                seconds = (time.perf_counter() - t0) / len(batch)
                for i, (case, meta) in enumerate(zip(batch, metas)):
                    with failures.guard(case.case_id, case.path):
                        score = float(out.pred_score[i])
                        paths = _write_outputs(preprocessor, meta, case, out_dir, out.healed[i, 0], out.anomaly_map[i, 0], threshold)
                        if folder_mode:  # MOOD layout: the score alone, as LDM/LTM folder mode
                            atomic_write_text(out_dir / f"{case.case_id}.txt", f"{score!r}\n")
                        writer.write({"case_id": case.case_id, "set": case.set, "pred_score": score,
                                      **paths, "seconds": round(seconds, 4)})
                        result.segmented += 1
                    progress.advance(task)
    result.seconds = time.perf_counter() - t_start
    result.failed = len(failures)
    failures.raise_if_any(f"segment (variant {variant})")
    return result
