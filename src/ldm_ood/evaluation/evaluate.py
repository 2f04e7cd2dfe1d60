"""``ldm-ood evaluate``: score files of one or more runs → metrics → ``summary.json`` + tables.

Per run (files read by :mod:`.inputs`):

- detection (paper 000 Table 1): each OOD set's ``pred_score`` (and ``score_mse``/``score_lpips``)
  vs set ``id`` of the same run and method: AUROC with a stratified bootstrap 95% CI, AUPRC,
  FPR@95TPR; DeLong LDM vs LTM on the cases both scored (§3.3);
- segmentation (paper 001 Table 1): per variant and set with masks, ⌈DICE⌉ (best threshold), Dice
  at the validation ``residual_threshold``, pixel AUPRC (voxels pooled or per scan) and the
  image-level AUROC/AUPRC vs set ``id``;
- localisation (:mod:`.localisation`): per detection method and set with region masks (the removed
  chunk, the stripped skull), the saved maps' pixel AUROC/AUPRC against that region, per map filter.

Whatever is missing (a method, a run, a set, a threshold, a mask) is skipped with a note in
``Summary.notes``; metrics undefined for a set (one class) are ``None`` (n/a). An *expected* method
(:mod:`.completeness`) whose scores are missing or non-finite on a set is a ``Summary.warnings``
row with the counts, printed in red below the tables (stderr) and marked in them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..data.io import read_image
from ..data.manifest import Case
from ..methods.records import read_records
from ..runs import RunDir
from .completeness import detection_warnings, segmentation_warnings
from .inputs import (
    ScoreColumn,
    finite_scores,
    normalise_runs,
    read_score_column,
    read_threshold,
    rows_with_maps,
    run_manifest,
    run_precision,
    score_sets,
    segment_variants,
    segmentation_calibration,
)
from .localisation import check_filter, evaluate_localisation
from .metrics import Pooling, auroc, average_precision, fpr_at_tpr
from .seeds import seed_stability
from .segmentation import pixel_metrics, seconds_per_100
from .stats import bootstrap_ci, delong_test, significance_marker
from .summary import (
    DETECTION_METHODS,
    ID_SET,
    DeLongResultRow,
    DetectionResult,
    SegmentationResult,
    Summary,
    is_far,
    order_sets,
)


def _f(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def detection_metrics(
    neg: Mapping[str, float], pos: Mapping[str, float], n_boot: int, seed: int
) -> tuple[float | None, float | None, float | None, float | None, float | None]:
    """(AUROC, CI low, CI high, AUPRC, FPR@95TPR) of ``pos`` (OOD) vs ``neg`` (ID) scores."""
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    s = np.r_[np.fromiter(neg.values(), float, len(neg)), np.fromiter(pos.values(), float, len(pos))]
    if len(neg) == 0 or len(pos) == 0:
        return None, None, None, None, None
    ci = bootstrap_ci(y, s, n_boot=n_boot, seed=seed)
    return _f(ci.estimate), _f(ci.low), _f(ci.high), _f(average_precision(y, s)), _f(fpr_at_tpr(y, s))


def _delong_row(name: str, set_name: str, ldm: tuple[dict, dict], ltm: tuple[dict, dict], notes: list[str]) -> DeLongResultRow | None:
    ids = sorted(set(ldm[0]) & set(ltm[0]))
    oods = sorted(set(ldm[1]) & set(ltm[1]))
    if len(ids) < 2 or len(oods) < 2:
        notes.append(f"{name}/{set_name}: DeLong skipped (fewer than 2 cases per class scored by both LDM and LTM)")
        return None
    y = np.r_[np.zeros(len(ids)), np.ones(len(oods))]
    a = np.r_[[ldm[0][c] for c in ids], [ldm[1][c] for c in oods]]
    b = np.r_[[ltm[0][c] for c in ids], [ltm[1][c] for c in oods]]
    r = delong_test(y, a, b)
    return DeLongResultRow(name, set_name, len(ids) + len(oods), _f(r.auc_a), _f(r.auc_b), _f(r.cov), _f(r.z),
                           _f(r.p_value), significance_marker(r.p_value))


#: detection columns that older score files lack: evaluated where present, silently absent otherwise
#: (``ldm_one_sided``: the paper's one-sided LDM score beside a two-sided ``pred_score``, ``score.tails``)
OPTIONAL_COLUMNS = ("ldm_one_sided",)


def _evaluate_detection(name: str, run: RunDir, not_test: set[str], summary: Summary, n_boot: int, seed: int) -> None:
    scores: dict[str, dict[str, dict[str, float]]] = {}  # method -> set -> case -> score
    columns: dict[str, dict[str, ScoreColumn]] = {}  # method -> set -> column read (for the warnings)
    for method, (folder, column) in DETECTION_METHODS.items():
        sets = score_sets(run, folder)
        columns[method] = {s: read_score_column(run.scores_path(folder, s), column) for s in sets}
        if method in OPTIONAL_COLUMNS and all(c.n_missing == c.n_rows for c in columns[method].values()):
            del columns[method]  # score files made before the column existed: nothing to say
            continue
        if not sets:
            if method in ("ldm", "ltm"):
                summary.notes.append(f"{name}: no {folder.upper()} scores (scores/{folder}/*.csv); skipped")
            continue
        if ID_SET not in sets:
            summary.notes.append(f"{name}/{method}: no '{ID_SET}' score file; nothing to compare against")
            continue
        per_set = {s: finite_scores(col, summary.notes) for s, col in columns[method].items()}
        if not per_set[ID_SET]:
            if method in ("ldm", "ltm"):
                summary.notes.append(f"{name}/{method}: column {column!r} empty in {run.scores_path(folder, ID_SET)}")
            continue
        scores[method] = per_set
        for set_name in order_sets(sets):
            if set_name in not_test:
                summary.notes.append(f"{name}/{method}: set {set_name!r} is not in the manifest's test split; skipped")
                continue
            pos = per_set[set_name]
            if not pos:
                continue
            auc, lo, hi, ap, fpr = detection_metrics(per_set[ID_SET], pos, n_boot, seed)
            summary.detection.append(DetectionResult(
                name, method, set_name, "far" if is_far(set_name) else "near", len(per_set[ID_SET]), len(pos),
                auc, lo, hi, ap, fpr,
            ))
    summary.warnings += detection_warnings(name, run, columns, not_test)
    if "ldm" in scores and "ltm" in scores:
        for set_name in order_sets(set(scores["ldm"]) & set(scores["ltm"])):
            if set_name in not_test:
                continue
            row = _delong_row(name, set_name, (scores["ldm"][ID_SET], scores["ldm"][set_name]),
                              (scores["ltm"][ID_SET], scores["ltm"][set_name]), summary.notes)
            if row is not None:
                summary.delong.append(row)


def _maps_and_masks(name: str, variant: str, set_name: str, rows: list[dict[str, str]], masks: dict, run: RunDir,
                    notes: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The anomaly maps of ``rows`` that have a ground-truth mask, with their boolean masks."""
    maps, gts = [], []
    for row, mask_path, map_path in rows_with_maps(rows, masks, set_name, run):
        try:
            amap = read_image(map_path, allow_constant=True).array
            gt = read_image(mask_path, allow_constant=True).array > 0.5
            if amap.shape != gt.shape:
                raise ValueError(f"map shape {amap.shape} differs from mask shape {gt.shape} ({mask_path})")
        except Exception as err:
            notes.append(f"{name}/{variant}/{set_name}/{row['case_id']}: {err}; case skipped")
            continue
        maps.append(amap)
        gts.append(gt)
    if not maps:
        notes.append(f"{name}/{variant}/{set_name}: no case with both an anomaly map and a ground-truth mask; "
                     "pixel metrics skipped")
    return maps, gts


def _downsampling(run: RunDir) -> int | None:
    """The run's first-stage downsampling factor ``f = 2**levels`` (None without a readable config)."""
    try:
        return run.load_config().first_stage.downsampling_factor
    except Exception:
        return None


def _image_detection(id_scores: Mapping[str, float], ood_scores: Mapping[str, float]) -> tuple[float | None, float | None]:
    """Image-level ``(AUROC, AUPRC)`` of OOD-set scores against the ID-test scores (None without both)."""
    if not id_scores or not ood_scores:
        return None, None
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    s = np.r_[list(id_scores.values()), list(ood_scores.values())]
    return _f(auroc(y, s)), _f(average_precision(y, s))


def _evaluate_segmentation(name: str, run: RunDir, cases: list[Case] | None, summary: Summary, pooling: Pooling,
                           seed: int = 0) -> None:
    masks = {(c.set, c.case_id): c.mask for c in cases or [] if c.mask is not None}
    factor = _downsampling(run)
    for variant in segment_variants(run):
        sets = sorted(p.stem for p in (run.root / "segment" / variant).glob("*.csv"))
        calibration = segmentation_calibration(run, variant)
        threshold = read_threshold(calibration, "residual_threshold", variant)
        if threshold is None:
            summary.notes.append(f"{name}/{variant}: no 'residual_threshold' in {calibration}; "
                                 "Dice at the validation threshold skipped")
        image_scores = {s: read_score_column(run.segment_scores_path(variant, s), "pred_score") for s in sets}
        subsample = {s: read_score_column(run.segment_scores_path(variant, s), "pred_score_subsample").scores
                     for s in sets}
        summary.warnings += segmentation_warnings(name, variant, image_scores)
        id_scores = image_scores[ID_SET].scores if ID_SET in sets else {}
        for set_name in order_sets(sets):
            rows = read_records(run.segment_scores_path(variant, set_name))
            img = finite_scores(image_scores[set_name], summary.notes)
            auc, ap = _image_detection(id_scores, img)
            auc_sub, _ = _image_detection(subsample.get(ID_SET, {}), subsample[set_name])
            maps, gts = _maps_and_masks(name, variant, set_name, rows, masks, run, summary.notes)
            px = pixel_metrics(maps, gts, threshold, pooling, seed=seed) if maps else None
            dice_ci, auprc_ci = (px.best_dice_ci, px.pixel_auprc_ci) if px else (None, None)
            summary.segmentation.append(SegmentationResult(
                run=name, variant=variant, set=set_name, n_cases=len(rows), n_masks=len(maps), pooling=pooling,
                best_dice=_f(px.best_dice) if px else None, best_dice_threshold=_f(px.best_dice_threshold) if px else None,
                threshold=threshold, dice_at_threshold=_f(px.dice_at_threshold) if px else None,
                pixel_auprc=_f(px.pixel_auprc) if px else None, image_auroc=auc, image_auprc=ap,
                best_dice_low=_f(dice_ci[0]) if dice_ci else None, best_dice_high=_f(dice_ci[1]) if dice_ci else None,
                pixel_auprc_low=_f(auprc_ci[0]) if auprc_ci else None, pixel_auprc_high=_f(auprc_ci[1]) if auprc_ci else None,
                seconds_per_100=seconds_per_100(rows, less="score_seconds"),
                score_seconds_per_100=seconds_per_100(rows, "score_seconds"), image_auroc_subsample=auc_sub,
                downsampling=factor,
            ))


# ----------------------------------------------------------------------------- entry point


def evaluate(
    run_dirs: Mapping[str, str | Path] | str | Path | Iterable[str | Path],
    manifest: str | Path | None = None,
    out: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    pooling: Pooling = "pooled",
    print_tables: bool = True,
    map_filters: Iterable[str] = ("none",),
) -> Summary:
    """Evaluate every run's score files; write ``summary.json`` and print the tables.

    Args:
        run_dirs: ``{name: run folder}`` (e.g. ``{"l3": ..., "l4": ...}``), one folder, or a list
            (name = folder name).
        manifest: manifest with GT masks (and the test split); default: each run's ``data.manifest``.
        out: summary path; default ``RunDir(first run).summary_path``.
        n_boot, seed: bootstrap replicates and seed of the AUROC 95% CIs (stratified percentile).
        pooling: voxels of all scans pooled (paper 001, default) or metrics averaged per scan.
        print_tables: print paper 000 Table 1 and the segmentation table with rich, and the warnings
            (stderr).
        map_filters: anomaly-map post-processing of the localisation metrics (``"none"``: the maps as
            saved; ``"gaussian<σ>"``, ``"median<k>"``: :func:`.localisation.filter_map`).
    """
    runs = normalise_runs(run_dirs)
    if not runs:
        raise ValueError("no run directory given")
    map_filters = [check_filter(f) for f in map_filters]  # before any work
    summary = Summary(runs={k: str(v) for k, v in runs.items()})
    for name, root in runs.items():
        run = RunDir(root)
        if not run.root.is_dir():
            summary.notes.append(f"{name}: run folder {run.root} not found; skipped")
            continue
        cases = run_manifest(run, manifest, summary.notes)
        # sets the manifest has only outside the test split (e.g. a scored validation set) are not OOD sets
        not_test = ({c.set for c in cases if c.split != "test"} - {c.set for c in cases if c.split == "test"}) if cases else set()
        _evaluate_detection(name, run, not_test, summary, n_boot, seed)
        _evaluate_segmentation(name, run, cases, summary, pooling, seed)
        evaluate_localisation(name, run, cases, summary, filters=tuple(map_filters), seed=seed)
        summary.precision[name] = run_precision(run)
    summary.seed_stability = seed_stability(summary)
    summary.save(Path(out) if out is not None else RunDir(next(iter(runs.values()))).summary_path)
    if print_tables:
        from .tables import print_summary

        print_summary(summary)
    return summary
