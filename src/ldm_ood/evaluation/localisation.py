"""Localisation of the detection methods' anomaly maps: pixel AUROC and AUPRC against a known region.

Paper 000 (§2.3, Fig. 4) shows LDM anomaly maps beside the LTM's but measures nothing. Where a
near-OOD corruption removed tissue from a known region (``data.corruption_regions.REGION_KINDS``: the slab
of ``chunk_top`` / ``chunk_middle``, the skull and scalp of ``skull_stripped``; the synthetic cohort
writes it as the manifest's ``mask``), each saved map (``scores/<method>/<set>.csv``'s ``map_path``,
on the input's native grid) is scored against that region:

* **domain**: ``"head"`` — the voxels of the *uncorrupted* scan that hold tissue: the region plus
  the corrupted scan's voxels above its minimum (its air / window floor). The air around the head is
  left out: every map is near zero there, and counting those easy negatives would say more about the
  field of view than about localisation. ``"fov"``: every voxel of the grid, for comparison.
* **pooled** voxels of all the set's scans (paper 001's pixel AUPRC, ``metrics.pixel_auprc``), pixel
  AUROC by midranks (``metrics.auroc``), each with a 95 % percentile interval from resampling *scans*
  with replacement (voxels of one scan are not independent), as ``segmentation.pixel_metrics`` does.
* **map filters** (:func:`filter_map`): ``"none"`` is the method's map as saved (paper 000's
  definition). ``"gaussian<σ>"`` smooths it with a Gaussian of σ voxels (paper 001's filtered
  residuals), ``"median<k>"`` takes a k³ median, ``"abs"`` the two-sided |z|; steps join with ``+``
  (``abs+gaussian1``): post-processing options measured against the paper map, never instead of it.
  (A map of another error, the missing tissue ``max(x̂ − x, 0)``, is made at scoring time:
  ``score.map_error``.)

A map at a coarser resolution than the mask (an LTM token map not yet on the image grid) is brought
to the mask's grid by ``methods.ltm.likelihood.upsample_map`` (nearest, an exact factor per axis).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from ..data.io import read_image
from ..data.manifest import Case
from ..data.scans import read_scan
from ..methods.ltm.likelihood import upsample_map
from ..methods.records import read_records
from ..runs import RunDir
from .inputs import rows_with_maps
from .metrics import auroc, pixel_auprc
from .segmentation import SEGMENTATION_BOOT, _interval
from .summary import LocalisationResult, Summary, order_sets

#: methods whose saved maps are scored (the detection methods with per-voxel maps)
MAP_METHODS = ("ldm", "ltm")
DOMAINS = ("head", "fov")
_STEP = re.compile(r"^(abs|gaussian(\d+(?:\.\d+)?)|median(\d+))$")


def check_filter(name: str) -> str:
    """``name`` if it is a map filter, else ``ValueError``: ``none``, or steps joined by ``+`` applied
    left to right, each ``abs`` (|z|: two-sided), ``gaussian<σ>`` (σ voxels) or ``median<k>`` (k³)."""
    if name != "none" and not all(_STEP.match(step) for step in name.split("+")):
        raise ValueError(f"unknown map filter {name!r}; use 'none' or steps joined by '+': 'abs', "
                         "'gaussian<sigma>' (e.g. gaussian1.5), 'median<k>' (e.g. median3)")
    return name


def filter_map(amap: np.ndarray, name: str) -> np.ndarray:
    """Map ``(*S)`` post-processed by filter ``name`` (:func:`check_filter`), float64, same shape."""
    a = np.asarray(amap, dtype=np.float64)
    if check_filter(name) == "none":
        return a
    for step in name.split("+"):
        m = _STEP.match(step)
        if step == "abs":
            a = np.abs(a)
        elif m.group(2) is not None:
            a = ndi.gaussian_filter(a, sigma=float(m.group(2)), mode="nearest", truncate=4.0)
        else:
            a = ndi.median_filter(a, size=int(m.group(3)), mode="nearest")
    return a


def on_grid(amap: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``amap`` on the grid ``shape``: as it is when the shapes agree; a coarser map (each axis an
    exact divisor) upsampled by nearest blocks (``upsample_map``); anything else is a ``ValueError``."""
    shape = tuple(int(s) for s in shape)
    if amap.shape == shape:
        return np.asarray(amap)
    if amap.ndim != len(shape) or any(s % a for a, s in zip(amap.shape, shape)):
        raise ValueError(f"map shape {amap.shape} is neither the mask's {shape} nor a whole fraction of it")
    return upsample_map(torch.as_tensor(np.asarray(amap, dtype=np.float32)), shape, "nearest")


def head_domain(corrupted: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Voxels of the uncorrupted scan that hold tissue: ``region`` plus ``corrupted`` above its minimum."""
    c = np.asarray(corrupted)
    return np.asarray(region, dtype=bool) | (c > c.min())


@dataclass(frozen=True)
class LocalisationMetrics:
    """Pooled pixel AUROC / AUPRC and their 95 % case-bootstrap intervals (None with < 2 scans)."""

    pixel_auroc: float
    pixel_auroc_ci: tuple[float, float] | None
    pixel_auprc: float
    pixel_auprc_ci: tuple[float, float] | None
    region_fraction: float  # positives / voxels in the domain: the AUPRC of a map that knows nothing


def localisation_metrics(maps: Sequence[np.ndarray], regions: Sequence[np.ndarray], domains: Sequence[np.ndarray],
                         n_boot: int = SEGMENTATION_BOOT, seed: int = 0) -> LocalisationMetrics:
    """Pixel AUROC / AUPRC of ``maps`` against boolean ``regions``, voxels of every scan's ``domain`` pooled.

    Args:
        maps, regions, domains: one ``(*S)`` array each per scan (shapes agree within a scan).
        n_boot, seed: case-bootstrap replicates of the 95 % intervals.
    """
    if not (len(maps) == len(regions) == len(domains)) or not maps:
        raise ValueError(f"need as many maps, regions and domains (got {len(maps)}, {len(regions)}, {len(domains)}), at least one")
    s = [np.asarray(a, dtype=np.float64)[np.asarray(d, bool)] for a, d in zip(maps, domains)]
    y = [np.asarray(g, bool)[np.asarray(d, bool)] for g, d in zip(regions, domains)]

    def both(idx: Sequence[int]) -> tuple[float, float]:
        ys, ss = [y[i] for i in idx], [s[i] for i in idx]
        return auroc(np.concatenate(ys), np.concatenate(ss)), pixel_auprc(ss, ys, "pooled")

    auc, ap = both(range(len(s)))
    auc_ci = ap_ci = None
    if len(s) > 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = [both(rng.integers(0, len(s), len(s))) for _ in range(n_boot)]
        auc_ci, ap_ci = _interval([d[0] for d in draws]), _interval([d[1] for d in draws])
    n = sum(v.size for v in y)
    return LocalisationMetrics(auc, auc_ci, ap, ap_ci, float(sum(v.sum() for v in y) / n) if n else float("nan"))


def _f(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _load_case(case: Case, map_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(map on the mask grid, region, head domain)`` of one scored case; ``ValueError`` if they disagree."""
    region = read_image(case.mask, allow_constant=True).array > 0.5
    amap = on_grid(read_image(map_path, allow_constant=True).array, region.shape)
    corrupted = read_scan(case.source, allow_constant=True).array
    if corrupted.shape != region.shape:
        raise ValueError(f"scan shape {corrupted.shape} differs from mask shape {region.shape} ({case.mask})")
    if not np.isfinite(amap).all():
        raise ValueError(f"map {map_path} has non-finite voxels")
    return amap, region, head_domain(corrupted, region)


def _load_cases(name: str, method: str, set_name: str, run: RunDir, masks: dict[tuple[str, str], Case],
                notes: list[str]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Maps (on the mask grid), regions and head domains of a set's scored cases that have a mask;
    a case that cannot be read is left out with a note."""
    loaded = []
    for row, case, map_path in rows_with_maps(read_records(run.scores_path(method, set_name)), masks, set_name, run):
        try:
            loaded.append(_load_case(case, map_path))
        except Exception as err:
            notes.append(f"{name}/{method}/{set_name}/{row['case_id']}: {err}; case left out of localisation")
    maps, regions, domains = (list(x) for x in zip(*loaded)) if loaded else ([], [], [])
    return maps, regions, domains


def evaluate_localisation(name: str, run: RunDir, cases: list[Case] | None, summary: Summary,
                          filters: Sequence[str] = ("none",), domains: Sequence[str] = ("head",),
                          n_boot: int = SEGMENTATION_BOOT, seed: int = 0) -> None:
    """Append a :class:`LocalisationResult` per method, set with region masks, map filter and domain
    (``head`` by default; ``fov`` pools every voxel of the grid, about twice the work)."""
    filters = [check_filter(f) for f in filters]
    for d in domains:
        if d not in DOMAINS:
            raise ValueError(f"unknown localisation domain {d!r}; use one of {', '.join(DOMAINS)}")
    masks = {(c.set, c.case_id): c for c in cases or [] if c.mask is not None and c.split == "test"}
    sets = {s for s, _ in masks}
    for method in MAP_METHODS:
        scored = [p.stem for p in (run.root / "scores" / method).glob("*.csv")]
        for set_name in order_sets(s for s in scored if s in sets):
            maps, regions, heads = _load_cases(name, method, set_name, run, masks, summary.notes)
            if not maps:
                summary.notes.append(f"{name}/{method}/{set_name}: no case with both a map and a region mask; "
                                     "localisation skipped")
                continue
            for flt in filters:
                filtered = maps if flt == "none" else [filter_map(m, flt) for m in maps]
                for domain in domains:
                    dom = heads if domain == "head" else [np.ones(r.shape, bool) for r in regions]
                    lm = localisation_metrics(filtered, regions, dom, n_boot=n_boot, seed=seed)
                    summary.localisation.append(LocalisationResult(
                        run=name, method=method, set=set_name, map_filter=flt, domain=domain, n_cases=len(maps),
                        pixel_auroc=_f(lm.pixel_auroc), pixel_auprc=_f(lm.pixel_auprc),
                        pixel_auroc_low=_f(lm.pixel_auroc_ci[0]) if lm.pixel_auroc_ci else None,
                        pixel_auroc_high=_f(lm.pixel_auroc_ci[1]) if lm.pixel_auroc_ci else None,
                        pixel_auprc_low=_f(lm.pixel_auprc_ci[0]) if lm.pixel_auprc_ci else None,
                        pixel_auprc_high=_f(lm.pixel_auprc_ci[1]) if lm.pixel_auprc_ci else None,
                        region_fraction=_f(lm.region_fraction),
                    ))
