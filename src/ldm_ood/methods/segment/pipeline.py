"""Paper 001 anomaly segmentation, files in and out: ``ldm-ood segment`` (§3, §4.1).

The pieces live in one module each (``calibrate_segment`` is imported here, so the registry finds
both entry points in this module):

* :mod:`.variants`: variants a–d (:func:`variant_spec`), residual maps, foreground, FPR threshold;
* :mod:`.batch`: one batch ``x (B, 1, *grid)`` → image score, KL map/mask, healed image, map;
* :mod:`.calibration`: :func:`calibrate_segment` on the healthy validation split;
* :mod:`.shared_scores`: the image-level score a variant reads back from another's rows of the same case.

:func:`segment` writes, on the input's grid and affine, ``<case>_healed``, ``<case>_map`` and
``<case>_mask`` (PNG for PNG inputs, else NIfTI) under ``RunDir.segment_dir(variant, set)`` and the
rows of ``segment_scores_path(variant, set)`` (``FIELDS``). Folder mode (MOOD layout, as LDM and LTM:
:mod:`..context`) writes the same three images and ``<case>.txt`` (the image-level score, one number,
written last: a case with a ``.txt`` is done) into the output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence, get_args

import torch

from ...config import Config, Variant
from ...data.manifest import Case
from ...errors import BundleError
from ...runs import RunDir
from ..base import RUNNER_COLUMNS, RunResult
from ..calibration_files import check_calibration
from ..context import Preprocessing, writes_run
from ..outputs import write_segmentation
from ..runner import run_method
from ..sharding import on_main
from .batch import ImageScore, SegmentModels, case_seeds, segment_batch, segment_context
from .calibration import calibrate_segment, load_calibration, variant_calibration_id
from .shared_scores import SharedImageScores, score_key
from .variants import VariantSpec, variant_spec

#: ``pred_score``: mean KL over the chain (§4.1); ``pred_score_subsample``: over ``segment.score_subsample_num_t``
#: t-values of the same draws; ``score_seconds``: the part of ``seconds`` spent on the image-level score (blank
#: when read back from another variant's row with the same ``score_key``, :mod:`.shared_scores`)
FIELDS = ("case_id", "set", "pred_score", "pred_score_subsample", "healed_path", "map_path", "mask_path",
          *RUNNER_COLUMNS, "seconds", "score_seconds", "score_key")


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
    shared_scores: SharedImageScores | None = None  # image scores other variants already computed (manifest mode)
    score_key: str = ""  # shared_scores.score_key of this segmentation, written in every row

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

    def _image_scores(self, cases: list[Case], score: ImageScore | None) -> list[dict]:
        """Per case: ``pred_score``, ``pred_score_subsample`` and ``score_seconds`` (blank when reused)."""
        if score is None:
            found = [self.shared_scores.lookup(c.set, c.case_id) for c in cases]  # type: ignore[union-attr]
            return [{"pred_score": v, "pred_score_subsample": sub, "score_seconds": None} for v, sub in found]
        return [{"pred_score": float(score.score[i]),
                 "pred_score_subsample": None if score.subsample is None else float(score.subsample[i]),
                 "score_seconds": round(score.seconds / len(cases), 3)} for i in range(len(cases))]

    def score_batch(self, cases: list[Case], x: torch.Tensor, metas: list, out_dir: Path) -> list[dict]:
        scfg = self.cfg.segment
        shared = self.shared_scores
        reuse = shared is not None and all(shared.lookup(c.set, c.case_id) is not None for c in cases)
        out = segment_batch(self.models, x, self.spec, scfg, self.kl_thresholds,
                            case_seeds([c.case_id for c in cases], scfg.seed), with_score=not reuse)
        scores = self._image_scores(cases, out.score)
        return [{**scores[i], "score_key": self.score_key,
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
    variant not yet calibrated is calibrated first on the run's validation split (a model bundle,
    read-only, refuses it with :class:`~ldm_ood.errors.BundleError`). ``force``: as for
    :func:`~ldm_ood.methods.ldm.pipeline.score_ldm`.
    """
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    ctx, models = segment_context(run_dir, config, models, preprocessor, device, force)
    run, cfg, preprocessor, device = ctx.run, ctx.cfg, ctx.preprocessor, ctx.device
    spec = variant_spec(variant, cfg.segment)
    calib, thr = load_calibration(run)
    if variant not in calib.get("variants", {}) or (spec.kl_key and spec.kl_key not in thr):
        if run.is_bundle:
            raise BundleError(run.root, f"variant {variant} was not calibrated in the run this bundle was exported "
                                        f"from (calibrated: {', '.join(calib.get('variants', {})) or 'none'}); "
                                        f"calibrate it there (`ldm-ood calibrate --method segment`) and export again")
        on_main(calibrate_segment, run.root, config=cfg, variants=[variant], recalibrate=False, models=models,
                preprocessor=preprocessor, device=device, force=force)
        calib, thr = load_calibration(run)
    threshold = calib["variants"][variant]["residual_threshold"]
    kl_thr = thr.get(spec.kl_key) if spec.kl_key else None

    calibrated = check_calibration(run, "segment", force)
    calibrated = replace(calibrated, id=variant_calibration_id(run, calibrated.id, calib, thr, spec))
    key = score_key(calibrated.model_id, cfg.segment, models.bf16)
    shared = None if input_dir is not None else SharedImageScores(
        run, key, [v for v in get_args(Variant) if v != variant], cfg.segment.score_subsample_num_t is not None)
    method = SegmentScoring(models, spec, cfg, kl_thr, threshold, preprocessor, shared_scores=shared, score_key=key)
    return run_method(method, ctx, manifest, sets, input_dir, output_dir, progress, SegmentResult(variant=variant),
                      calibrated, force)
