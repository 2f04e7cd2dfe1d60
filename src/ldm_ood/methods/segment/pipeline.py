"""Paper 001 anomaly segmentation, files in and out: ``ldm-ood segment`` (§3, §4.1).

The pieces live in one module each (``calibrate_segment`` is imported here, so the registry finds
both entry points in this module):

* :mod:`.variants`: variants a–d (:func:`variant_spec`), residual maps, foreground, FPR threshold;
* :mod:`.batch`: one batch ``x (B, 1, *grid)`` → image score, KL map/mask, healed image, map;
* :mod:`.calibration`: :func:`calibrate_segment` on the healthy validation split.

:func:`segment` writes, on the input's grid and affine, ``<case>_healed``, ``<case>_map`` and
``<case>_mask`` (PNG for PNG inputs, else NIfTI) under ``RunDir.segment_dir(variant, set)`` and the
rows of ``segment_scores_path(variant, set)`` (``FIELDS``). Folder mode (MOOD layout, as LDM and LTM:
:mod:`..context`) writes the same three images and ``<case>.txt`` (the image-level score, one number,
written last: a case with a ``.txt`` is done) into the output folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ...config import Config
from ...data.manifest import Case
from ...runs import RunDir
from ..base import RUNNER_COLUMNS, RunResult
from ..calibration_files import check_calibration
from ..context import Preprocessing, writes_run
from ..outputs import write_segmentation
from ..runner import run_method
from ..sharding import on_main
from .batch import SegmentModels, case_seeds, segment_batch, segment_context
from .calibration import calibrate_segment, load_calibration
from .variants import VariantSpec, variant_spec

FIELDS = ("case_id", "set", "pred_score", "healed_path", "map_path", "mask_path", *RUNNER_COLUMNS, "seconds")


@dataclass
class SegmentResult(RunResult):
    """What :func:`segment` wrote: one score CSV per set (or the output folder's), counts."""

    variant: str = ""

    @property
    def segmented(self) -> int:
        """Cases segmented by this call (``scored``)."""
        return self.scored


@dataclass
class SegmentScoring:
    """Paper 001 segmentation with one variant as a :class:`~ldm_ood.methods.base.Method`: healed image, map, mask, score."""

    models: SegmentModels
    spec: VariantSpec
    cfg: Config
    kl_thresholds: torch.Tensor | None
    residual_threshold: float
    preprocessor: Preprocessing
    fieldnames: Sequence[str] = FIELDS

    @property
    def name(self) -> str:
        return f"segment ({self.spec.name})"

    @property
    def label(self) -> str:
        return f"segment (variant {self.spec.name})"

    @property
    def batch_size(self) -> int:
        return self.cfg.segment.batch_size

    def records_path(self, run: RunDir, set_name: str) -> Path:
        return run.segment_scores_path(self.spec.name, set_name)

    def outputs_dir(self, run: RunDir, set_name: str) -> Path:
        return run.segment_dir(self.spec.name, set_name)

    def score_batch(self, cases: list[Case], x: torch.Tensor, metas: list, out_dir: Path) -> list[dict]:
        scfg = self.cfg.segment
        out = segment_batch(self.models, x, self.spec, scfg, self.kl_thresholds,
                            case_seeds([c.case_id for c in cases], scfg.seed))
        return [{"pred_score": float(out.pred_score[i]),
                 **write_segmentation(self.preprocessor, meta, case, out_dir, out.healed[i, 0], out.anomaly_map[i, 0],
                                  self.residual_threshold)}
                for i, (case, meta) in enumerate(zip(cases, metas))]


@writes_run("segment", sharded=True)
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
    force: bool = False,
) -> SegmentResult:
    """Segment anomalies with variant ``variant`` (paper 001 §3): healed image, map, mask, score.

    Manifest mode: every ``test`` set (or ``sets``) -> ``RunDir.segment_dir(variant, set)`` and
    ``segment_scores_path(variant, set)``. Folder mode (``input_dir`` + ``output_dir``): every image
    of the folder -> ``output_dir/<case>_{healed,map,mask}.*`` and ``output_dir/<case>.txt`` (the
    score). Finished cases are skipped; ``seconds`` is the batch's time divided by its size. A
    variant not yet calibrated is calibrated first on the run's validation split. ``force``: as for
    :func:`~ldm_ood.methods.ldm.pipeline.score_ldm`.
    """
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    ctx, models = segment_context(run_dir, config, models, preprocessor, device, force)
    run, cfg, preprocessor, device = ctx.run, ctx.cfg, ctx.preprocessor, ctx.device
    spec = variant_spec(variant, cfg.segment)
    calib, thr = load_calibration(run)
    if variant not in calib.get("variants", {}) or (spec.kl_key and spec.kl_key not in thr):
        on_main(calibrate_segment, run.root, config=cfg, variants=[variant], recalibrate=False, models=models,
                preprocessor=preprocessor, device=device, force=force)
        calib, thr = load_calibration(run)
    threshold = calib["variants"][variant]["residual_threshold"]
    kl_thr = thr.get(spec.kl_key) if spec.kl_key else None

    calibrated = check_calibration(run, "segment", force)
    method = SegmentScoring(models, spec, cfg, kl_thr, threshold, preprocessor)
    return run_method(method, ctx, manifest, sets, input_dir, output_dir, progress, SegmentResult(variant=variant),
                      calibrated, force)
