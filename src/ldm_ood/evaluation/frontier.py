"""The cost/accuracy frontier of paper 000 scoring: AUROC per set against UNet evaluations per scan.

A :class:`FrontierSetting` is one way to reconstruct (sampler, grid steps, number of starts, execution).
:func:`score_setting` computes the raw per-t metrics (``OODScorer.measure``) of the manifest's ``val``
cases and of every test set's cases into ``<out>/<setting>/metrics.json`` (rewritten atomically after
each batch; a rerun skips the cases already there, so it resumes). :func:`setting_auroc` fits the
setting's calibration on ``val`` (``methods.ldm.calibration.fit_calibration``) and gives every test
set's AUROC against the in-distribution test set ``id`` with its stratified bootstrap 95 % CI
(``evaluate.detection_metrics``). :func:`select_cheapest` picks the cheapest setting at least
``min_ratio``× cheaper than the reference (paper) setting whose AUROC lies inside the reference's CI
on every set, or, when none does, the one that comes closest (the smallest largest distance outside a CI).

Cost is counted in UNet evaluations per scan (``reconstruct.unet_evaluations``) over the score's
starts and the config's map starts, as ``score`` runs them; the frontier itself reconstructs the score
starts only (``map_t_values`` empty: maps do not enter the AUROC).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..artifacts.atomic import atomic_write_text
from ..config import ScoreConfig
from ..data.manifest import Case
from ..errors import BatchFailures, OutputError
from ..methods.context import Context
from ..methods.ldm.calibration import fit_calibration
from ..methods.ldm.pipeline import OODScorer, ScoringModels
from ..methods.ldm.reconstruct import chain_starts, inference_grid, snap_to_grid, unet_evaluations
from ..methods.runner import each_case
from ..samplers.noise import case_seed
from .evaluate import detection_metrics
from .summary import ID_SET, order_sets

VAL = "val"  # the key of the validation cases in metrics.json


@dataclass(frozen=True)
class FrontierSetting:
    """One reconstruction setting: ``sampler`` on ``num_inference_steps`` grid steps from ``num_t_values``
    starts; ``execution`` ``batched`` (a fresh history per chain) or ``reference`` (the official shared
    PLMS history)."""

    sampler: str
    num_inference_steps: int
    num_t_values: int
    execution: str = "batched"

    @property
    def name(self) -> str:
        steps = "" if self.sampler == "one_step" else str(self.num_inference_steps)
        leak = "_shared_history" if self.execution == "reference" else ""
        return f"{self.sampler}{steps}_t{self.num_t_values}{leak}"

    def score_config(self, base: ScoreConfig, precision: str) -> ScoreConfig:
        """``base`` with this setting's fields, no map starts, ``precision``."""
        return base.model_copy(update={
            "setting": None, "sampler": self.sampler, "num_inference_steps": self.num_inference_steps,
            "num_t_values": self.num_t_values, "t_values": None, "map_t_values": (),
            "sequential": self.execution == "reference", "precision": precision})


PAPER = FrontierSetting("plms", 100, 50)


def default_grid() -> list[FrontierSetting]:
    """PLMS steps {100, 50, 25, 10} × starts {50, 25, 10, 5}; DDIM and DPM-Solver++(2M) steps {50, 25, 10} ×
    the same starts; one-step x̂0 from those starts. The paper setting (PLMS 100, 50 starts) first."""
    starts = (50, 25, 10, 5)
    out = [FrontierSetting("plms", s, n) for s in (100, 50, 25, 10) for n in starts]
    out += [FrontierSetting(sampler, s, n) for sampler in ("ddim", "dpmpp_2m") for s in (50, 25, 10) for n in starts]
    out += [FrontierSetting("one_step", 1, n) for n in starts]
    return out


def parse_setting(text: str) -> FrontierSetting:
    """``sampler:steps:starts[:reference]`` (e.g. ``plms:100:50``, ``one_step:1:25``) → a setting."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"setting {text!r}: write sampler:steps:starts[:reference], e.g. plms:100:50")
    return FrontierSetting(parts[0], int(parts[1]), int(parts[2]), parts[3] if len(parts) == 4 else "batched")


def unet_evaluations_per_scan(setting: FrontierSetting, base: ScoreConfig, scorer_like: OODScorer) -> dict[str, int]:
    """UNet evaluations per scan of ``setting``: with ``base``'s map starts (as ``score`` runs it) and for
    the score starts alone (what the frontier runs). ``scorer_like``: an ``OODScorer`` of the setting."""
    grid = inference_grid(scorer_like.scheduler)
    with_maps = chain_starts(scorer_like.t_values, snap_to_grid(base.map_t_values, grid), grid=grid)
    return {"with_maps": unet_evaluations(with_maps, grid, setting.sampler),
            "score_only": unet_evaluations(scorer_like.starts, grid, setting.sampler)}


# ----------------------------------------------------------------------------- scoring, resumable


def _read_store(path: Path, setting: FrontierSetting, t_values: Sequence[int]) -> dict[str, Any]:
    fresh = {"setting": asdict(setting), "t_values": list(t_values), "values": {}, "seconds": {}}
    if not path.exists():
        return fresh
    try:
        store = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise OutputError(path, f"unreadable frontier metrics ({err}); delete it to recompute") from err
    if store.get("setting") != asdict(setting) or store.get("t_values") != list(t_values):
        raise OutputError(path, f"holds another setting ({store.get('setting')}, t = {store.get('t_values')}); "
                          "delete it or use another output folder")
    return store


def score_setting(
    setting: FrontierSetting,
    models: ScoringModels,
    ctx: Context,
    cases: Mapping[str, Sequence[Case]],
    out_dir: Path,
    precision: str = "fp32",
    failures: BatchFailures | None = None,
) -> dict[str, Any]:
    """Raw per-t metrics of every case of ``cases`` (``{"val": [...], set: [...]}``) under ``setting``,
    stored in ``out_dir/<setting.name>/metrics.json`` (resumed). Returns the store: ``values[group][case_id]
    = {metric: [value per t]}``, ``seconds[group][case_id]``, ``t_values``, ``unet_evaluations``."""
    score = setting.score_config(ctx.cfg.score, precision)
    bf16 = None if precision == "auto" else precision == "bf16"
    scorer = OODScorer(models, score, bf16=bf16, grid=ctx.cfg.data.grid)
    path = Path(out_dir) / setting.name / "metrics.json"
    store = _read_store(path, setting, scorer.t_values)
    store["unet_evaluations"] = unet_evaluations_per_scan(setting, ctx.cfg.score, scorer)
    failures = failures if failures is not None else BatchFailures()

    def measure(batch: list[Case], x: torch.Tensor, metas: list[Any]) -> list[dict[str, list[float]]]:
        met = scorer.measure(x, [case_seed(score.seed, c.case_id) for c in batch])
        return [{m: met.values[m][b].tolist() for m in scorer.metrics} for b in range(len(batch))]

    for group, group_cases in cases.items():
        done = store["values"].setdefault(group, {})
        seconds = store["seconds"].setdefault(group, {})
        todo = [c for c in group_cases if c.case_id not in done]
        if not todo:
            continue
        t0 = time.perf_counter()
        for item, values, _ in each_case(todo, ctx, score.batch_size, measure, failures):
            done[item.case.case_id] = values
            seconds[item.case.case_id] = time.perf_counter() - t0  # wall time since the last stored case
            t0 = time.perf_counter()
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(store))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(store))
    return store


# ----------------------------------------------------------------------------- AUROC and selection


def setting_auroc(store: Mapping[str, Any], fpr: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``{set: {"auroc", "low", "high", "n_id", "n_ood"}}`` of a :func:`score_setting` store: calibration on
    ``val``, scores of the ``id`` test set vs each other test set, stratified bootstrap 95 % CI."""
    values = store["values"]
    t_values = store["t_values"]
    val_ids = sorted(values.get(VAL, {}))
    if not val_ids or ID_SET not in values:
        raise ValueError(f"the store needs '{VAL}' and '{ID_SET}' cases (has {sorted(values)})")
    metrics = list(values[VAL][val_ids[0]])

    def stack(group: str) -> tuple[list[str], dict[str, np.ndarray]]:
        ids = sorted(values[group])
        return ids, {m: np.array([values[group][c][m] for c in ids], dtype=np.float64) for m in metrics}

    _, val = stack(VAL)
    cal = fit_calibration(val_ids, val, t_values, (), fpr)

    def scores(group: str) -> dict[str, float]:
        ids, v = stack(group)
        return dict(zip(ids, cal.score(v)["pred_score"].tolist()))

    id_scores = scores(ID_SET)
    out = {}
    for s in order_sets([g for g in values if g not in (VAL, ID_SET)]):
        pos = scores(s)
        auc, lo, hi, _, _ = detection_metrics(id_scores, pos, n_boot, seed)
        out[s] = {"auroc": auc, "low": lo, "high": hi, "n_id": len(id_scores), "n_ood": len(pos)}
    return out


def select_cheapest(rows: Sequence[Mapping[str, Any]], reference: str, min_ratio: float = 50.0) -> dict[str, Any]:
    """The cheapest setting ``min_ratio``× cheaper than ``reference`` whose AUROC lies in the reference's CI on
    every set.

    ``rows``: ``{"name", "unet_evaluations", "sets": {set: {"auroc", "low", "high"}}}`` (the reference among
    them). Returns ``{"selected": name | None, "within_ci": bool, "ratio": reference evals / its evals,
    "max_distance_outside_ci": ..., "candidates": n}``; with no setting inside every CI, ``selected`` is the
    candidate whose largest distance outside a CI is smallest (ties: fewer evaluations), ``within_ci`` False.
    A set the reference has no CI for, or a setting has no AUROC for, counts as outside (distance inf).
    """
    by_name = {r["name"]: r for r in rows}
    if reference not in by_name:
        raise ValueError(f"reference setting {reference!r} is not among the rows")
    ref = by_name[reference]
    ref_evals = ref["unet_evaluations"]

    def distance(r: Mapping[str, Any]) -> float:
        worst = 0.0
        for s, ci in ref["sets"].items():
            a = (r["sets"].get(s) or {}).get("auroc")
            if a is None or ci.get("low") is None or ci.get("high") is None:
                return float("inf")
            worst = max(worst, ci["low"] - a, a - ci["high"])
        return worst

    cands = [r for r in rows if r["name"] != reference and r["unet_evaluations"] > 0
             and ref_evals / r["unet_evaluations"] >= min_ratio]
    if not cands:
        return {"selected": None, "within_ci": False, "ratio": None, "max_distance_outside_ci": None, "candidates": 0}
    inside = [r for r in cands if distance(r) <= 0.0]
    pool = inside or cands
    best = min(pool, key=lambda r: (r["unet_evaluations"], -_mean_auroc(r)) if inside else
               (distance(r), r["unet_evaluations"]))
    return {"selected": best["name"], "within_ci": bool(inside), "ratio": ref_evals / best["unet_evaluations"],
            "max_distance_outside_ci": distance(best), "candidates": len(cands)}


def _mean_auroc(row: Mapping[str, Any]) -> float:
    vals = [v["auroc"] for v in row["sets"].values() if v.get("auroc") is not None]
    return float(np.mean(vals)) if vals else float("nan")


def summarise(row: Mapping[str, Any]) -> dict[str, float | None]:
    """Mean AUROC over the sets and the worst set's (lowest) AUROC of a row."""
    vals = [v["auroc"] for v in row["sets"].values() if v.get("auroc") is not None]
    return {"mean_auroc": float(np.mean(vals)) if vals else None, "worst_auroc": float(min(vals)) if vals else None}

