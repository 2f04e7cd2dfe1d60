"""``ldm-ood evaluate``: score files of one or more runs → metrics → ``summary.json`` + tables.

Inputs per run (docs/CONTRACTS.md, "Score files"):

- ``scores/ldm/<set>.csv`` (``pred_score``, ``score_mse``, ``score_lpips``) and ``scores/ltm/<set>.csv``
  (``pred_score``): one OOD score per scan, higher = more OOD.
- ``segment/<variant>/<set>.csv`` (image-level ``pred_score``, per-case ``map_path``), with
  ground-truth masks from the manifest's ``mask`` column and the validation threshold
  ``residual_threshold`` from ``calibration/segment.json``.

Labels: set ``id`` is negative, every other set positive. Each OOD set is compared with ``id`` of
the same run and method. Far-OOD sets are those named ``far_*``, near-OOD everything else.
Whatever is missing (a method, a run, a set, a threshold, a mask) is skipped with a note in
``Summary.notes``; metrics undefined for a set (one class) are ``None`` (n/a).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..data.io import read_image
from ..data.manifest import Case, read_manifest
from ..runs import RunDir
from ..scoring.records import read_records
from .metrics import Pooling, auroc, average_precision, best_dice, dice_at_threshold, fpr_at_tpr, pixel_auprc
from .stats import bootstrap_ci, delong_test, significance_marker

ID_SET = "id"
#: detection methods: name -> (score folder, column)
DETECTION_METHODS: dict[str, tuple[str, str]] = {
    "ldm": ("ldm", "pred_score"),
    "ldm_mse": ("ldm", "score_mse"),
    "ldm_lpips": ("ldm", "score_lpips"),
    "ltm": ("ltm", "pred_score"),
}
METHOD_LABELS = {"ldm": "LDM", "ldm_mse": "LDM (MSE)", "ldm_lpips": "LDM (LPIPS)", "ltm": "LTM"}
#: near-OOD display order by name prefix (paper 000 Table 1); unknown names follow alphabetically
_NEAR_ORDER = ("noise", "bg", "background", "flip", "chunk", "skull", "scale", "sprites")


def is_far(set_name: str) -> bool:
    return set_name.startswith("far_")


def order_sets(names: Iterable[str]) -> list[str]:
    """Far-OOD sets (alphabetical) then near-OOD sets in paper 000 Table 1 order; ``id`` dropped."""
    names = [n for n in dict.fromkeys(names) if n != ID_SET]

    def near_key(n: str) -> tuple[int, str]:
        for i, p in enumerate(_NEAR_ORDER):
            if n.startswith(p):
                return i, n
        return len(_NEAR_ORDER), n

    return sorted((n for n in names if is_far(n))) + sorted((n for n in names if not is_far(n)), key=near_key)


# ----------------------------------------------------------------------------- results


def _clean(v: Any) -> Any:
    """NaN/Inf → None for JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class DetectionResult:
    """One method on one OOD set vs ``id`` of the same run."""

    run: str
    method: str
    set: str
    kind: str  # "far" | "near"
    n_id: int
    n_ood: int
    auroc: float | None
    auroc_low: float | None
    auroc_high: float | None
    auprc: float | None
    fpr95: float | None


@dataclass
class DeLongResultRow:
    """DeLong test LDM vs LTM on the cases both scored (same run = same VQ-GAN base)."""

    run: str
    set: str
    n_cases: int
    auc_ldm: float | None
    auc_ltm: float | None
    cov: float | None
    z: float | None
    p_value: float | None
    marker: str  # "**" p < 0.001, "*" p < 0.05, "" otherwise


@dataclass
class SegmentationResult:
    """Paper 001 Table 1 metrics of one segmentation variant on one set with masks."""

    run: str
    variant: str
    set: str
    n_cases: int
    n_masks: int
    pooling: str
    best_dice: float | None
    best_dice_threshold: float | None
    threshold: float | None
    dice_at_threshold: float | None
    pixel_auprc: float | None
    image_auroc: float | None
    image_auprc: float | None


@dataclass
class Summary:
    """Everything ``evaluate`` computed; ``summary.json`` is ``to_dict()``."""

    runs: dict[str, str] = field(default_factory=dict)
    detection: list[DetectionResult] = field(default_factory=list)
    delong: list[DeLongResultRow] = field(default_factory=list)
    segmentation: list[SegmentationResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ---- lookups
    def detection_for(self, run: str, method: str, set_name: str) -> DetectionResult | None:
        return next((d for d in self.detection if (d.run, d.method, d.set) == (run, method, set_name)), None)

    def delong_for(self, run: str, set_name: str) -> DeLongResultRow | None:
        return next((d for d in self.delong if (d.run, d.set) == (run, set_name)), None)

    def ood_sets(self) -> list[str]:
        return order_sets(d.set for d in self.detection)

    def methods(self) -> list[str]:
        present = {d.method for d in self.detection}
        return [m for m in DETECTION_METHODS if m in present]

    # ---- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        def rows(items: list) -> list[dict]:
            return [{k: _clean(v) for k, v in asdict(x).items()} for x in items]

        return {
            "runs": dict(self.runs),
            "detection": rows(self.detection),
            "delong": rows(self.delong),
            "segmentation": rows(self.segmentation),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Summary":
        def build(kind: type, items: list[dict]) -> list:
            names = {f.name for f in fields(kind)}
            return [kind(**{k: v for k, v in it.items() if k in names}) for it in items]

        return cls(
            runs=dict(d.get("runs", {})),
            detection=build(DetectionResult, d.get("detection", [])),
            delong=build(DeLongResultRow, d.get("delong", [])),
            segmentation=build(SegmentationResult, d.get("segmentation", [])),
            notes=list(d.get("notes", [])),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Summary":
        return cls.from_dict(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------- reading runs


def normalise_runs(run_dirs: Mapping[str, str | Path] | str | Path | Iterable[str | Path]) -> dict[str, Path]:
    """``{name: path}`` from a dict, one path, or a list of paths (name = folder name)."""
    if isinstance(run_dirs, Mapping):
        return {str(k): Path(v) for k, v in run_dirs.items()}
    if isinstance(run_dirs, (str, Path)):
        return {Path(run_dirs).name: Path(run_dirs)}
    out: dict[str, Path] = {}
    for p in run_dirs:
        out[Path(p).name] = Path(p)
    return out


def score_sets(run: RunDir, method: str) -> list[str]:
    """Set names with a score file in ``scores/<method>/``."""
    folder = run.root / "scores" / method
    return sorted(p.stem for p in folder.glob("*.csv")) if folder.is_dir() else []


def segment_variants(run: RunDir) -> list[str]:
    folder = run.root / "segment"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.csv"))) if folder.is_dir() else []


def read_scores(path: Path, column: str, notes: list[str] | None = None) -> dict[str, float]:
    """``{case_id: score}`` from one score file; rows with a missing or non-finite value are skipped."""
    out: dict[str, float] = {}
    bad = 0
    for row in read_records(path):
        try:
            v = float(row.get(column, "") or "nan")
        except ValueError:
            v = float("nan")
        if math.isfinite(v):
            out[row["case_id"]] = v
        else:
            bad += 1
    if bad and notes is not None:
        notes.append(f"{path}: {bad} row(s) without a finite {column!r} skipped")
    return out


def resolve_path(raw: str, run: RunDir) -> Path | None:
    """A path from a score file: absolute, relative to the run folder, or to the working directory."""
    if not raw:
        return None
    p = Path(raw)
    if p.is_absolute():
        return p
    return (run.root / p) if (run.root / p).exists() else p


def run_manifest(run: RunDir, manifest: str | Path | None, notes: list[str]) -> list[Case] | None:
    """Cases of ``manifest``, else of the run config's ``data.manifest``; None (with a note) if neither."""
    source: Path | None = Path(manifest) if manifest is not None else None
    if source is None and run.config_path.exists():
        try:
            source = run.load_config().data.manifest
        except Exception as err:  # a broken config must not stop evaluation of the scores
            notes.append(f"{run.config_path}: could not read data.manifest ({err})")
    if source is None:
        return None
    try:
        return read_manifest(source, check_files=False)
    except Exception as err:
        notes.append(f"{source}: manifest unreadable ({err}); masks and input images unavailable")
        return None


def read_threshold(path: Path, key: str, variant: str | None = None) -> float | None:
    """A threshold from a calibration JSON: ``{key: x}``, ``{key: {variant: x}}`` or ``{variant: {key: x}}``."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    candidates = [data.get(key)] if isinstance(data, dict) else []
    if isinstance(data, dict) and variant is not None:
        inner = data.get(variant) or (data.get("variants") or {}).get(variant)
        if isinstance(inner, dict):
            candidates.insert(0, inner.get(key))
    for c in candidates:
        if isinstance(c, dict) and variant is not None:
            c = c.get(variant)
        if isinstance(c, (int, float)) and math.isfinite(c):
            return float(c)
    return None


# ----------------------------------------------------------------------------- metrics per part


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


def _evaluate_detection(name: str, run: RunDir, not_test: set[str], summary: Summary, n_boot: int, seed: int) -> None:
    scores: dict[str, dict[str, dict[str, float]]] = {}  # method -> set -> case -> score
    for method, (folder, column) in DETECTION_METHODS.items():
        sets = score_sets(run, folder)
        if not sets:
            if method in ("ldm", "ltm"):
                summary.notes.append(f"{name}: no {folder.upper()} scores (scores/{folder}/*.csv); skipped")
            continue
        if ID_SET not in sets:
            summary.notes.append(f"{name}/{method}: no '{ID_SET}' score file; nothing to compare against")
            continue
        per_set = {s: read_scores(run.scores_path(folder, s), column, summary.notes) for s in sets}
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
    if "ldm" in scores and "ltm" in scores:
        for set_name in order_sets(set(scores["ldm"]) & set(scores["ltm"])):
            if set_name in not_test:
                continue
            row = _delong_row(name, set_name, (scores["ldm"][ID_SET], scores["ldm"][set_name]),
                              (scores["ltm"][ID_SET], scores["ltm"][set_name]), summary.notes)
            if row is not None:
                summary.delong.append(row)


def _evaluate_segmentation(name: str, run: RunDir, cases: list[Case] | None, summary: Summary, pooling: Pooling) -> None:
    masks = {(c.set, c.case_id): c.mask for c in cases or [] if c.mask is not None}
    for variant in segment_variants(run):
        sets = sorted(p.stem for p in (run.root / "segment" / variant).glob("*.csv"))
        threshold = read_threshold(run.segment_calibration_path, "residual_threshold", variant)
        if threshold is None:
            summary.notes.append(f"{name}/{variant}: no 'residual_threshold' in {run.segment_calibration_path}; "
                                 "Dice at the validation threshold skipped")
        id_scores = read_scores(run.segment_scores_path(variant, ID_SET), "pred_score") if ID_SET in sets else {}
        for set_name in order_sets(sets):
            path = run.segment_scores_path(variant, set_name)
            rows = read_records(path)
            img = read_scores(path, "pred_score", summary.notes)
            auc = ap = None
            if id_scores and img:
                y = np.r_[np.zeros(len(id_scores)), np.ones(len(img))]
                s = np.r_[list(id_scores.values()), list(img.values())]
                auc, ap = _f(auroc(y, s)), _f(average_precision(y, s))
            maps, gts = [], []
            for row in rows:
                mask_path = masks.get((set_name, row["case_id"]))
                map_path = resolve_path(row.get("map_path", ""), run)
                if mask_path is None or map_path is None:
                    continue
                try:
                    amap = read_image(map_path, allow_constant=True).array
                    gt = read_image(mask_path, allow_constant=True).array > 0.5
                    if amap.shape != gt.shape:
                        raise ValueError(f"map shape {amap.shape} differs from mask shape {gt.shape} ({mask_path})")
                except Exception as err:
                    summary.notes.append(f"{name}/{variant}/{set_name}/{row['case_id']}: {err}; case skipped")
                    continue
                maps.append(amap)
                gts.append(gt)
            if not maps:
                summary.notes.append(f"{name}/{variant}/{set_name}: no case with both an anomaly map and a "
                                     "ground-truth mask; pixel metrics skipped")
            bd = best_dice(maps, gts, pooling=pooling) if maps else None
            summary.segmentation.append(SegmentationResult(
                run=name, variant=variant, set=set_name, n_cases=len(rows), n_masks=len(maps), pooling=pooling,
                best_dice=_f(bd.dice) if bd else None, best_dice_threshold=_f(bd.threshold) if bd else None,
                threshold=threshold,
                dice_at_threshold=_f(dice_at_threshold(maps, gts, threshold, pooling)) if maps and threshold is not None else None,
                pixel_auprc=_f(pixel_auprc(maps, gts, pooling)) if maps else None,
                image_auroc=auc, image_auprc=ap,
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
) -> Summary:
    """Evaluate every run's score files; write ``summary.json`` and print the tables.

    Args:
        run_dirs: ``{name: run folder}`` (e.g. ``{"l3": ..., "l4": ...}``), one folder, or a list
            (name = folder name).
        manifest: manifest with GT masks (and the test split); default: each run's ``data.manifest``.
        out: summary path; default ``RunDir(first run).summary_path``.
        n_boot, seed: bootstrap replicates and seed of the AUROC 95% CIs (stratified percentile).
        pooling: voxels of all scans pooled (paper 001, default) or metrics averaged per scan.
        print_tables: print paper 000 Table 1 and the segmentation table with rich.
    """
    runs = normalise_runs(run_dirs)
    if not runs:
        raise ValueError("no run directory given")
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
        _evaluate_segmentation(name, run, cases, summary, pooling)
    summary.save(Path(out) if out is not None else RunDir(next(iter(runs.values()))).summary_path)
    if print_tables:
        from .tables import print_summary

        print_summary(summary)
    return summary
