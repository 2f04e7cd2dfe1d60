"""Which methods a run should have scores for, and a :class:`~.summary.ScoreWarning` for each
expected method and set whose scores are missing or non-finite.

A method that produced NaN must not silently vanish from the results: ``evaluate`` collects these
warnings into ``summary.json``, prints them, and the tables and the report mark the method's cells.

Expected detection methods of a run (:func:`expected_methods`):

* ``ldm`` when the run has LDM scores or an OOD calibration, or a trained LDM and no segmentation
  outputs (a paper 001 run has an LDM but no detection scores);
* ``ldm_mse`` and ``ldm_lpips`` (the one-metric sub-scores) with ``ldm`` when the run's
  ``score.metrics`` has both MSE and LPIPS (without a readable ``config.yaml``: when the score files
  hold both sub-score columns);
* ``ltm`` when a transformer was trained in the run (``transformer/model.safetensors``) or the run
  has LTM scores.

The sets a method should cover are those any detection method of the run scored, plus ``id``.
Segmentation variants are checked on the sets they scored (``segment/<variant>/<set>.csv``).
"""

from __future__ import annotations

from typing import Mapping

from ..runs import RunDir
from .inputs import ScoreColumn
from .summary import DETECTION_METHODS, ID_SET, ScoreWarning, segment_method

SUB_SCORES = {"ldm_mse": "mse", "ldm_lpips": "lpips"}


def _config_metrics(run: RunDir) -> list[str] | None:
    """The run's ``score.metrics``; None without a readable ``config.yaml``."""
    if not run.config_path.exists():
        return None
    try:
        return list(run.load_config().score.metrics)
    except Exception:  # a broken config must not stop evaluation
        return None


def expected_methods(run: RunDir, columns: Mapping[str, Mapping[str, ScoreColumn]]) -> dict[str, str]:
    """``{method: why it is expected}`` of ``run``; ``columns``: ``{method: {set: ScoreColumn}}`` read so far."""
    out: dict[str, str] = {}
    seg_run = (run.root / "segment").is_dir() or run.segment_calibration_path.exists()
    if columns.get("ldm"):
        out["ldm"] = "the run has LDM score files"
    elif run.ood_calibration_path.exists():
        out["ldm"] = f"the run is calibrated ({run.ood_calibration_path})"
    elif run.model_path("ldm").exists() and not seg_run:
        out["ldm"] = f"an LDM was trained ({run.model_path('ldm')})"
    if "ldm" in out:
        metrics = _config_metrics(run)
        if metrics is not None:
            both = set(SUB_SCORES.values()) <= set(metrics)
        else:  # no config: both sub-score columns hold values somewhere
            both = all(any(c.n_rows > c.n_missing for c in columns.get(m, {}).values()) for m in SUB_SCORES)
        if both:
            out.update({m: f"score.metrics has MSE and LPIPS ({metric} sub-score)" for m, metric in SUB_SCORES.items()})
    # a transformer the paper 001 "transformer" segmentation baseline uses is no promise of LTM detection scores
    seg_transformer = run.segment_dir("transformer", "x").parent.is_dir() or run.calibration_json_path("transformer").exists()
    if run.model_path("transformer").exists() and not seg_transformer:
        out["ltm"] = f"a transformer was trained ({run.model_path('transformer')})"
    elif columns.get("ltm"):
        out["ltm"] = "the run has LTM score files"
    return out


def column_warning(run_name: str, method: str, set_name: str, col: ScoreColumn) -> ScoreWarning | None:
    """The warning of one existing score file's column (None when every row has a finite value)."""
    n_bad = col.n_missing + col.n_nonfinite
    where = f"{col.column!r} in {col.path}"
    if col.n_rows == 0:
        msg = f"{run_name}/{method}: no scores for set {set_name!r} ({col.path} has no rows)"
    elif n_bad == col.n_rows:
        msg = (f"{run_name}/{method}: no finite score for set {set_name!r}: {col.n_nonfinite} of {col.n_rows} "
               f"non-finite, {col.n_missing} missing ({where})")
    elif n_bad:
        msg = (f"{run_name}/{method}: {n_bad} of {col.n_rows} scans of set {set_name!r} left out: "
               f"{col.n_nonfinite} non-finite, {col.n_missing} missing ({where})")
    else:
        return None
    return ScoreWarning(run_name, method, set_name, col.n_missing if col.n_rows else 0, col.n_nonfinite, col.n_rows, msg)


def detection_warnings(
    run_name: str, run: RunDir, columns: Mapping[str, Mapping[str, ScoreColumn]], skip_sets: set[str] = frozenset()
) -> list[ScoreWarning]:
    """Warnings of every expected detection method of ``run`` (see the module docstring).

    Args:
        columns: ``{method: {set: ScoreColumn}}`` of the score files that exist.
        skip_sets: sets that are not OOD test sets (not evaluated, not warned about).
    """
    expected = expected_methods(run, columns)
    sets = {s for per_set in columns.values() for s in per_set if s not in skip_sets}
    rows_of = {s: max((per_set[s].n_rows for per_set in columns.values() if s in per_set), default=0) for s in sets}
    out: list[ScoreWarning] = []
    for method, why in expected.items():
        folder, column = DETECTION_METHODS[method]
        have = columns.get(method, {})
        if not have:
            out.append(ScoreWarning(run_name, method, None, 0, 0, 0,
                                    f"{run_name}/{method}: no scores at all (no {run.root / 'scores' / folder}/*.csv) "
                                    f"although {why}"))
            continue
        for set_name in sorted(sets | {ID_SET}, key=lambda s: (s != ID_SET, s)):
            if set_name in have:
                w = column_warning(run_name, method, set_name, have[set_name])
            else:
                n = rows_of.get(set_name, 0)
                w = ScoreWarning(run_name, method, set_name, n, 0, n,
                                 f"{run_name}/{method}: no scores for set {set_name!r} "
                                 f"({run.scores_path(folder, set_name)} missing"
                                 + (f"; {n} scan(s) scored by another method)" if n else ")"))
            if w is not None:
                out.append(w)
    return out


def segmentation_warnings(run_name: str, variant: str, columns: Mapping[str, ScoreColumn]) -> list[ScoreWarning]:
    """Warnings of one segmentation variant's image-level scores ``{set: ScoreColumn}``."""
    method = segment_method(variant)
    return [w for s, col in columns.items() if (w := column_warning(run_name, method, s, col)) is not None]
