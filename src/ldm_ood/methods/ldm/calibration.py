"""Paper 000 OOD scores: calibration on ID validation, z-scores, final score, anomaly maps.

§2.2: each of the 2N similarity values (MSE and LPIPS at N t-values; both *distances*, so higher =
more OOD) is z-scored with the mean and standard deviation of that metric at that t over the ID
validation set, ``z = (d − μ_t) / σ_t``; the scan's score is the mean of all 2N z-scores
(``pred_score``; higher = more OOD). ``score_mse`` / ``score_lpips`` average one metric's z-scores.
σ is the sample standard deviation (ddof = 1, as pandas in the reference ``ood_detection.py``).

**Tails** (``score.tails``, kept in the calibration's ``settings["tails"]``): ``one_sided`` is the
paper's score above: each metric's signed mean z-score ``s_m`` (``score_<m>``), and ``pred_score`` =
their mean ``s`` (= the mean of all 2N z-scores). A scan simpler than the training scans (smoother,
less tissue in the field of view) reconstructs *better* than ID scans and gets very negative z-scores
(Serrà et al. 2020), which a one-sided score ranks as the most normal scans of all.
``two_sided`` scores each metric by ``|s_m|``, its mean z-score's distance from the validation mean
(every z-score has mean 0 over the validation scans), and ``pred_score`` = the mean of those over the
metrics: an abnormally good reconstruction is as anomalous as an equally abnormally bad one, and a
metric that deviates one way cannot cancel one that deviates the other way (a smoothed scan can have
a lower MSE but a much higher LPIPS than ID scans). ``signed_score`` is ``s`` under both (negative =
reconstructed better than the validation scans). Validation scores, threshold and percentile are of
the calibration's ``pred_score``, so its flag fires in both directions. A calibration written before
this option has no ``tails`` and scores one-sided.

The §2.3 anomaly maps and their per-voxel statistics are in :mod:`.maps`.

Operating point: the threshold is the (1 − fpr) quantile of the validation scores (numpy's linear
interpolation); a scan is flagged when its score is above it. ``percentile`` is the percentage of
validation scores ≤ the scan's score.

**Std floors** (avoid dividing by zero, e.g. one validation scan or a metric constant over it):

* metric σ_t → ``max(σ_t, 1e-3·|μ_t|, 1e-12)`` (0.1 % of the metric's mean, far below any real
  spread between scans);
* voxel σ: see :data:`.maps.VOXEL_STD_FLOOR`.

Both floors are stored with the calibration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...artifacts.atomic import atomic_write_text
from .maps import VOXEL_STD_FLOOR

METRIC_STD_REL_FLOOR = 1e-3
METRIC_STD_ABS_FLOOR = 1e-12


#: ``one_sided``: the paper's signed mean z-score; ``two_sided``: its absolute value
TAILS = ("one_sided", "two_sided")

# ----------------------------------------------------------------------------- pure functions


def floored_std(std: np.ndarray, mean: np.ndarray, rel: float = METRIC_STD_REL_FLOOR, abs_: float = METRIC_STD_ABS_FLOOR) -> np.ndarray:
    """``max(σ, rel·|μ|, abs_)`` elementwise (a NaN σ, from a single scan, becomes the floor)."""
    std = np.nan_to_num(np.asarray(std, dtype=np.float64), nan=0.0)
    return np.maximum(np.maximum(std, rel * np.abs(np.asarray(mean, dtype=np.float64))), abs_)


def zscores(values: Mapping[str, np.ndarray], mean: Mapping[str, Sequence[float]], std: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """``(d − μ_t) / σ_t`` per metric: ``values[m] (N, n_t)`` → ``(N, n_t)`` float64."""
    return {m: (np.asarray(v, dtype=np.float64) - np.asarray(mean[m])) / np.asarray(std[m]) for m, v in values.items()}


def combine(z: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``pred_score`` = mean of all z-scores ``(N,)``; ``score_<m>`` = mean of metric m's z-scores."""
    out = {f"score_{m}": np.asarray(v, dtype=np.float64).mean(axis=1) for m, v in z.items()}
    out["pred_score"] = np.concatenate([np.asarray(v, dtype=np.float64) for v in z.values()], axis=1).mean(axis=1)
    return out


def tail_score(signed: np.ndarray, tails: str) -> np.ndarray:
    """A metric's score from its signed mean z-scores ``signed (N,)``: itself (``one_sided``) or its
    absolute value (``two_sided``: as far below the validation mean counts as far above it)."""
    signed = np.asarray(signed, dtype=np.float64)
    if tails == "one_sided":
        return signed
    if tails == "two_sided":
        return np.abs(signed)
    raise ValueError(f"unknown score tails {tails!r}; choose one of {', '.join(TAILS)}")


def percentile_of(scores: np.ndarray, reference: Sequence[float]) -> np.ndarray:
    """Percentage of ``reference`` (validation) scores ≤ each score: ``(N,)`` in [0, 100]."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    if ref.size == 0:
        return np.full(np.shape(scores), np.nan)
    return 100.0 * np.searchsorted(ref, np.asarray(scores, dtype=np.float64), side="right") / ref.size


def operating_threshold(val_scores: Sequence[float], fpr: float) -> float:
    """The (1 − fpr) quantile of the validation scores: flagging above it flags ≈ fpr of ID scans."""
    return float(np.quantile(np.asarray(val_scores, dtype=np.float64), 1.0 - fpr))


# ----------------------------------------------------------------------------- calibration


@dataclass
class OODCalibration:
    """Everything scoring needs from the ID validation split (``calibration/ood.json``).

    ``mean[m][k]`` / ``std[m][k]``: metric m at ``t_values[k]`` (std floored);
    ``val_scores``: validation ``pred_score`` per ``case_ids`` (of the calibration's :attr:`tails`);
    ``threshold`` at ``fpr``.
    """

    t_values: list[int]
    map_t_values: list[int]
    metrics: list[str]
    mean: dict[str, list[float]]
    std: dict[str, list[float]]
    case_ids: list[str]
    val_scores: list[float]
    threshold: float
    fpr: float
    std_floor: dict[str, float] = field(default_factory=lambda: {"metric_rel": METRIC_STD_REL_FLOOR, "metric_abs": METRIC_STD_ABS_FLOOR, "voxel": VOXEL_STD_FLOOR})
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def tails(self) -> str:
        """``one_sided`` | ``two_sided`` (:func:`tail_score`); a calibration without it is one-sided."""
        return str(self.settings.get("tails", "one_sided"))

    def score(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores of scans with raw ``values[m] (N, n_t)``: ``score_<m>`` (of :attr:`tails`), ``pred_score``
        (their mean), ``signed_score`` (the one-sided ``pred_score``), ``percentile``, ``flag`` (each
        ``(N,)``) and ``z_<m>`` ``(N, n_t)``. Two-sided, ``flag`` is set for a scan far from the
        validation scans in either direction."""
        z = zscores({m: values[m] for m in self.metrics}, self.mean, self.std)
        signed = combine(z)
        out: dict[str, np.ndarray] = {f"score_{m}": tail_score(signed[f"score_{m}"], self.tails) for m in self.metrics}
        # one-sided: the mean of all z-scores (= the mean of the per-metric means, as every metric has n_t)
        out["pred_score"] = signed["pred_score"] if self.tails == "one_sided" else np.mean(
            [out[f"score_{m}"] for m in self.metrics], axis=0)
        out["signed_score"] = signed["pred_score"]
        out["percentile"] = percentile_of(out["pred_score"], self.val_scores)
        out["flag"] = out["pred_score"] > self.threshold
        out.update({f"z_{m}": v for m, v in z.items()})
        return out

    def check_compatible(self, t_values: Sequence[int], map_t_values: Sequence[int], settings: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming what differs from the calibration (t-values, sampler, …)."""
        problems = []
        if list(t_values) != self.t_values:
            problems.append(f"t-values {list(t_values)} != calibrated {self.t_values}")
        if list(map_t_values) != self.map_t_values:
            problems.append(f"map t-values {list(map_t_values)} != calibrated {self.map_t_values}")
        for k in ("sampler", "num_inference_steps", "requantize", "metrics", "tails"):
            if k in self.settings and k in settings and self.settings[k] != settings[k]:
                problems.append(f"{k} {settings[k]!r} != calibrated {self.settings[k]!r}")
        ours, theirs = settings.get("map_error", "absolute"), self.settings.get("map_error", "absolute")
        if ours != theirs:  # the voxel statistics z-score one kind of error map
            problems.append(f"map_error {ours!r} != calibrated {theirs!r}")
        if problems:
            raise ValueError("scoring settings differ from the calibration (re-run calibrate): " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "OODCalibration":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no OOD calibration; run `ldm-ood calibrate --method ldm` first")
        data = json.loads(path.read_text())
        settings = data.get("settings", {})
        if "mode" in settings and "execution" not in settings:  # written before the PLMS execution was renamed
            settings["execution"] = settings.pop("mode")
        return cls(**data)


def fit_calibration(
    case_ids: Sequence[str],
    values: Mapping[str, np.ndarray],
    t_values: Sequence[int],
    map_t_values: Sequence[int],
    fpr: float,
    settings: Mapping[str, Any] | None = None,
) -> OODCalibration:
    """Fit per-t mean / std of every metric on validation ``values[m] (N_val, n_t)``, then score
    the validation scans themselves for the score distribution and the operating threshold (of the
    tails ``settings["tails"]``, one-sided when absent)."""
    metrics = list(values)
    mean, std = {}, {}
    for m in metrics:
        v = np.asarray(values[m], dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != len(t_values) or v.shape[0] == 0:
            raise ValueError(f"values[{m!r}] must be (N_val >= 1, {len(t_values)}), got {v.shape}")
        mu = v.mean(axis=0)
        sd = v.std(axis=0, ddof=1) if v.shape[0] > 1 else np.zeros_like(mu)
        mean[m], std[m] = mu.tolist(), floored_std(sd, mu).tolist()
    cal = OODCalibration(
        t_values=[int(t) for t in t_values], map_t_values=[int(t) for t in map_t_values], metrics=metrics,
        mean=mean, std=std, case_ids=list(case_ids), val_scores=[], threshold=float("nan"), fpr=float(fpr),
        settings=dict(settings or {}),
    )
    cal.val_scores = cal.score(values)["pred_score"].tolist()
    cal.threshold = operating_threshold(cal.val_scores, fpr)
    return cal
