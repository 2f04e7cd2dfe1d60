"""Paper 001 anomaly segmentation, files in and out: ``ldm-ood segment`` (§3, §4.1).

The pieces live in one module each and are re-exported here (the CLI and the benchmark import
``calibrate_segment`` and ``segment`` from this module):

* :mod:`.segment_variants`: variants a–d (:func:`variant_spec`), residual maps, foreground, FPR threshold;
* :mod:`.segment_batch`: one batch ``x (B, 1, *grid)`` → image score, KL map/mask, healed image, map;
* :mod:`.segment_calibration`: :func:`calibrate_segment` on the healthy validation split.

:func:`segment` writes, on the input's grid and affine, ``<case>_healed``, ``<case>_map`` and
``<case>_mask`` (PNG for PNG inputs, else NIfTI) under ``RunDir.segment_dir(variant, set)`` and the
rows of ``segment_scores_path(variant, set)`` (``FIELDS``). Folder mode (MOOD layout, as LDM and LTM:
:mod:`.common`) writes the same three images and ``<case>.txt`` (the image-level score, one number,
written last: a case with a ``.txt`` is done) into the output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import Config
from ..data.io import suffix_of, write_image
from ..data.manifest import Case
from ..errors import BatchFailures
from ..runs import RunDir
from .common import Preprocessing, folder_cases, folder_score_path, pending, progress_bar, test_cases, write_folder_score
from .records import RecordWriter
from .segment_batch import (
    BatchOutput,
    SegmentModels,
    case_seeds,
    image_score,
    kl_map_of,
    latents,
    load_batches,
    segment_batch,
    segment_context,
)
from .segment_calibration import calibrate_segment, load_calibration
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


@dataclass
class _Job:
    """Cases to segment and where their outputs go; ``writer`` None in folder mode (``<case>.txt``)."""

    name: str
    cases: list[Case]
    out_dir: Path
    writer: RecordWriter | None


def _jobs(run: RunDir, cfg: Config, variant: str, manifest, sets, input_dir, output_dir, result: SegmentResult) -> list[_Job]:
    """One job per test set (resuming from its score CSV), or the folder's (resuming from ``.txt``)."""
    if input_dir is not None:
        out, todo, skipped = folder_cases(input_dir, output_dir)
        result.outputs["folder"], result.skipped = out, result.skipped + skipped
        return [_Job("folder", todo, out, None)]
    jobs = []
    for name, cases in test_cases(cfg, manifest, sets).items():
        writer = RecordWriter(run.segment_scores_path(variant, name), FIELDS)
        todo, skipped = pending(cases, writer.done_ids())
        result.outputs[name], result.skipped = writer.path, result.skipped + skipped
        jobs.append(_Job(name, todo, run.segment_dir(variant, name), writer))
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
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SegmentResult:
    """Segment anomalies with variant ``variant`` (paper 001 §3): healed image, map, mask, score.

    Manifest mode: every ``test`` set (or ``sets``) -> ``RunDir.segment_dir(variant, set)`` and
    ``segment_scores_path(variant, set)``. Folder mode (``input_dir`` + ``output_dir``): every image
    of the folder -> ``output_dir/<case>_{healed,map,mask}.*`` and ``output_dir/<case>.txt`` (the
    score). Finished cases are skipped; ``seconds`` is the batch's time divided by its size. A
    variant not yet calibrated is calibrated first on the run's validation split.
    """
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    ctx, models = segment_context(run_dir, config, models, preprocessor, device)
    run, cfg, preprocessor, device = ctx.run, ctx.cfg, ctx.preprocessor, ctx.device
    scfg, spec = cfg.segment, variant_spec(variant, cfg.segment)
    calib, thr = load_calibration(run)
    if variant not in calib.get("variants", {}) or (spec.kl_key and spec.kl_key not in thr):
        calibrate_segment(run.root, config=cfg, variants=[variant], force=False, models=models,
                          preprocessor=preprocessor, device=device)
        calib, thr = load_calibration(run)
    threshold = calib["variants"][variant]["residual_threshold"]
    kl_thr = thr.get(spec.kl_key) if spec.kl_key else None

    failures, result = BatchFailures(), SegmentResult(variant)
    t_start = time.perf_counter()
    jobs = _jobs(run, cfg, variant, manifest, sets, input_dir, output_dir, result)
    with progress_bar(progress) as bar:
        for job in jobs:
            task = bar.add_task(f"segment ({variant}) {job.name}", total=len(job.cases))
            for batch, x, metas in load_batches(job.cases, preprocessor, scfg.batch_size, failures):
                t0 = time.perf_counter()
                try:
                    x = x.to(device)
                    out = segment_batch(models, x, spec, scfg, kl_thr, case_seeds([c.case_id for c in batch], scfg.seed))
                except Exception as err:  # one failing batch never loses the others
                    for c in batch:
                        failures.add(c.case_id, f"{c.path}: {type(err).__name__}: {err}")
                    bar.advance(task, len(batch))
                    continue
                seconds = (time.perf_counter() - t0) / len(batch)
                for i, (case, meta) in enumerate(zip(batch, metas)):
                    with failures.guard(case.case_id, case.path):
                        score = float(out.pred_score[i])
                        paths = _write_outputs(preprocessor, meta, case, job.out_dir, out.healed[i, 0],
                                               out.anomaly_map[i, 0], threshold)
                        if job.writer is None:  # MOOD layout: the score alone, written last
                            write_folder_score(folder_score_path(job.out_dir, case.case_id), score)
                        else:
                            job.writer.write({"case_id": case.case_id, "set": case.set, "pred_score": score,
                                              **paths, "seconds": round(seconds, 4)})
                        result.segmented += 1
                    bar.advance(task)
    result.seconds = time.perf_counter() - t_start
    result.failed = len(failures)
    failures.raise_if_any(f"segment (variant {variant})")
    return result
