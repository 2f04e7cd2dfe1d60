"""Evaluation results: per-set detection, DeLong and segmentation rows, and ``summary.json``.

:class:`Summary` holds everything ``evaluate`` computed (paper 000 Table 1: AUROC with 95% CI,
AUPRC, FPR@95TPR per method and OOD set; DeLong LDM vs LTM; paper 001 Table 1: ⌈DICE⌉, Dice at
the validation threshold, pixel AUPRC, image-level AUROC/AUPRC; the anomaly maps' pixel AUROC/AUPRC
against a corruption's known region) and the :class:`ScoreWarning` rows:
every expected method and set whose scores are missing or non-finite (:mod:`.completeness`), which
the tables mark and the terminal and the report show; and, for a run trained again with another seed,
the :class:`SeedStabilityRow` of every method and set (:mod:`.seeds`). Labels: set ``id`` is negative, every other
set positive. Far-OOD sets are named ``far_*``, near-OOD everything else
(:func:`order_sets` gives the table order).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..methods.registry import detection_columns, method_labels

ID_SET = "id"
#: detection methods: summary method -> (score folder, column), and their labels (``methods.registry``)
DETECTION_METHODS: dict[str, tuple[str, str]] = detection_columns()
METHOD_LABELS: dict[str, str] = method_labels()
#: near-OOD display order by name prefix (paper 000 Table 1); unknown names follow alphabetically
_NEAR_ORDER = ("noise", "bg", "background", "flip", "chunk", "skull", "scale", "sprites")


def segment_method(variant: str) -> str:
    """The method name of a segmentation variant in ``Summary.warnings``: ``"segment (c)"``."""
    return f"segment ({variant})"


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
    best_dice_low: float | None = None  # 95 % case-bootstrap interval (evaluation.segmentation)
    best_dice_high: float | None = None
    pixel_auprc_low: float | None = None
    pixel_auprc_high: float | None = None
    seconds_per_100: float | None = None  # mean score-row seconds × 100, without the image-level KL score (Table 3)
    score_seconds_per_100: float | None = None  # the image-level score's share (paper 001: the whole-chain KL)
    image_auroc_subsample: float | None = None  # image AUROC of pred_score_subsample (fewer t of the same draws)
    downsampling: int | None = None  # the run's first-stage factor f = 2**levels (paper 001 Table 3 compares f = 4, 8)


@dataclass
class SeedStabilityRow:
    """One method on one OOD set in a base run and its replicate run, another seed (AUROC, 95 % CI each;
    ``stable``: each AUROC inside the other's CI, :mod:`.seeds`)."""

    base: str
    replicate: str
    seed: int
    method: str
    set: str
    auroc: float | None
    auroc_low: float | None
    auroc_high: float | None
    auroc_replicate: float | None
    auroc_replicate_low: float | None
    auroc_replicate_high: float | None
    stable: bool


@dataclass
class LocalisationResult:
    """Pixel AUROC / AUPRC of one detection method's anomaly maps against a corruption's known region
    (:mod:`.localisation`): voxels pooled over the set's scans within ``domain`` (``head``: the
    uncorrupted scan's tissue; ``fov``: the whole grid), the map post-processed by ``map_filter``
    (``none``: the map as saved, the paper's), 95 % case-bootstrap intervals; ``region_fraction``:
    the share of domain voxels in the region (a map that knows nothing has that AUPRC)."""

    run: str
    method: str
    set: str
    map_filter: str
    domain: str
    n_cases: int
    pixel_auroc: float | None
    pixel_auprc: float | None
    pixel_auroc_low: float | None = None
    pixel_auroc_high: float | None = None
    pixel_auprc_low: float | None = None
    pixel_auprc_high: float | None = None
    region_fraction: float | None = None


@dataclass
class ScoreWarning:
    """An expected method's scores on one set (``set`` None: on every set) are missing or non-finite.

    ``n_total``: rows of the score file (for a missing file: the cases another method scored in
    that set); ``n_missing``: rows without a value (all of them for a missing file);
    ``n_nonfinite``: rows with NaN / ±Inf. The detection metrics use the remaining finite rows.
    """

    run: str
    method: str
    set: str | None
    n_missing: int
    n_nonfinite: int
    n_total: int
    message: str

    @property
    def n_finite(self) -> int:
        return max(self.n_total - self.n_missing - self.n_nonfinite, 0)


@dataclass
class Summary:
    """Everything ``evaluate`` computed; ``summary.json`` is ``to_dict()``."""

    runs: dict[str, str] = field(default_factory=dict)
    detection: list[DetectionResult] = field(default_factory=list)
    delong: list[DeLongResultRow] = field(default_factory=list)
    segmentation: list[SegmentationResult] = field(default_factory=list)
    localisation: list[LocalisationResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[ScoreWarning] = field(default_factory=list)
    #: per run: ``{"<network> (<use>)": PrecisionChoice.as_dict()}`` of training and scoring
    precision: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: every method and set of a replicate run (``l2_seed1``) beside its base run (``l2``): :mod:`.seeds`
    seed_stability: list[SeedStabilityRow] = field(default_factory=list)

    # ---- lookups
    def detection_for(self, run: str, method: str, set_name: str) -> DetectionResult | None:
        return next((d for d in self.detection if (d.run, d.method, d.set) == (run, method, set_name)), None)

    def delong_for(self, run: str, set_name: str) -> DeLongResultRow | None:
        return next((d for d in self.delong if (d.run, d.set) == (run, set_name)), None)

    def warnings_for(self, run: str, method: str, set_name: str | None = None) -> list[ScoreWarning]:
        """Warnings of ``run``/``method`` that concern ``set_name``: its own, the ``id`` set's (every
        AUROC compares against it) and the method-wide ones (``set`` None); all of them without ``set_name``."""
        sets = (set_name, ID_SET, None)
        return [w for w in self.warnings if (w.run, w.method) == (run, method) and (set_name is None or w.set in sets)]

    def ood_sets(self) -> list[str]:
        return order_sets(d.set for d in self.detection)

    def methods(self) -> list[str]:
        """Detection methods with a result or a warning (a method whose scores are all non-finite keeps its column)."""
        present = {d.method for d in self.detection} | {w.method for w in self.warnings}
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
            "localisation": rows(self.localisation),
            "notes": list(self.notes),
            "warnings": [asdict(w) for w in self.warnings],
            "precision": dict(self.precision),
            "seed_stability": rows(self.seed_stability),
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
            localisation=build(LocalisationResult, d.get("localisation", [])),
            notes=list(d.get("notes", [])),
            warnings=build(ScoreWarning, d.get("warnings", [])),
            precision=dict(d.get("precision", {})),
            seed_stability=build(SeedStabilityRow, d.get("seed_stability", [])),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Summary":
        return cls.from_dict(json.loads(Path(path).read_text()))
