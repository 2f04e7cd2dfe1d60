"""f-AnoGAN anomaly segmentation, files in and out: ``ldm-ood segment --method fanogan`` (paper 001 Table 1).

The baseline of Schlegl et al. 2019 as paper 001 compares against it on 2D slices: the trained WGAN-GP
generator G and izi_f encoder E heal a slice as ``G(E(x))``; the anomaly map is the residual
``|x − G(E(x))|``, the mask ``map >= residual_threshold`` (:mod:`.calibration`, at ``segment.fpr`` over
the healthy validation maps' foreground) and the image score the izi_f loss (:mod:`.batch`).

:func:`segment_fanogan` writes, on the input's grid and affine, ``<case>_healed``, ``<case>_map`` and
``<case>_mask`` (PNG for PNG inputs, else NIfTI) under ``RunDir.segment_dir("fanogan", set)`` and the
rows of ``segment_scores_path("fanogan", set)`` (the columns of paper 001's segmentation, ``FIELDS``);
folder mode (MOOD layout) writes the same images and ``<case>.txt`` into the output folder. Both entry
points live here (``calibrate_fanogan`` is imported from :mod:`.calibration`) for the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import Config
from ...data.manifest import Case
from ...models.fanogan import FAnoGAN
from ...runs import RunDir
from ..base import RunResult
from ..calibration_files import check_calibration
from ..context import Preprocessing, writes_run
from ..outputs import write_segmentation
from ..runner import run_method
from ..sharding import on_main
from ..segment.pipeline import FIELDS
from .batch import fanogan_batch, fanogan_context
from .calibration import METHOD, calibrate_fanogan, load_calibration

__all__ = ["FanoganScoring", "calibrate_fanogan", "segment_fanogan"]


@dataclass
class FanoganScoring:
    """f-AnoGAN as a :class:`~ldm_ood.methods.base.Method`: healed image, residual map, mask, izi_f score."""

    model: FAnoGAN
    cfg: Config
    residual_threshold: float
    preprocessor: Preprocessing
    fieldnames: Sequence[str] = FIELDS
    name: str = "segment (fanogan)"
    label: str = "segment --method fanogan"

    @property
    def batch_size(self) -> int:
        return self.cfg.segment.batch_size

    def records_path(self, run: RunDir, set_name: str) -> Path:
        return run.segment_scores_path(METHOD, set_name)

    def outputs_dir(self, run: RunDir, set_name: str) -> Path:
        return run.segment_dir(METHOD, set_name)

    def score_batch(self, cases: list[Case], x: torch.Tensor, metas: list, out_dir: Path) -> list[dict]:
        out = fanogan_batch(self.model, x, self.cfg.fanogan.kappa)
        return [{"pred_score": float(out.score[i]),
                 **write_segmentation(self.preprocessor, meta, case, out_dir, out.healed[i, 0], out.anomaly_map[i, 0],
                                 self.residual_threshold)}
                for i, (case, meta) in enumerate(zip(cases, metas))]


@writes_run("segment fanogan", sharded=True)
def segment_fanogan(
    run_dir: str | Path,
    manifest: str | Path | None = None,
    sets: Sequence[str] | None = None,
    input_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    *,
    config: Config | None = None,
    model: FAnoGAN | None = None,
    preprocessor: Preprocessing | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
) -> RunResult:
    """Segment anomalies with f-AnoGAN (module docstring): healed image, map, mask and score per case.

    Manifest mode: every ``test`` set (or ``sets``); folder mode: ``input_dir`` → ``output_dir``. Finished
    cases are skipped; ``seconds`` is the case's load time plus its share of the batch. A run not yet
    calibrated is calibrated first on its validation split. ``force``: add to score files made under
    another calibration, and use a calibration made before the networks were retrained."""
    if (input_dir is None) != (output_dir is None):
        raise ValueError("input_dir and output_dir go together")
    ctx, model = fanogan_context(run_dir, config, model, preprocessor, device)
    calib = load_calibration(ctx.run)
    if "residual_threshold" not in calib:
        on_main(calibrate_fanogan, ctx.run.root, config=ctx.cfg, model=model, preprocessor=ctx.preprocessor,
                          device=ctx.device, progress=progress, force=force)
        calib = load_calibration(ctx.run)
    calibrated = check_calibration(ctx.run, METHOD, force)
    method = FanoganScoring(model, ctx.cfg, float(calib["residual_threshold"]), ctx.preprocessor)
    return run_method(method, ctx, manifest, sets, input_dir, output_dir, progress, RunResult(), calibrated, force)
