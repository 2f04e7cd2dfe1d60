"""Seed stability of detection results: the same run trained again with another seed.

A replicate run is named after its base run with a seed suffix: ``l2_seed1`` is ``l2`` (seed 0,
the preset's) trained again with every stage's seed, and the scoring seed, set to 1
(:func:`replicate_run_name`). For every method and OOD set scored by both, :func:`seed_stability`
pairs the two AUROCs with their 95 % bootstrap CIs; the pair is **stable** when each AUROC lies
inside the other's CI. A set with an unstable pair is "not a result yet": the difference between
seeds is larger than the evidence of one run can resolve.
"""

from __future__ import annotations

import re

from .summary import DetectionResult, SeedStabilityRow, Summary

_REPLICATE = re.compile(r"^(?P<base>.+)_seed(?P<seed>\d+)$")
NOT_A_RESULT = "not a result yet"


def replicate_run_name(base: str, seed: int) -> str:
    """The run name of ``base`` trained with ``seed``: ``replicate_run_name("l2", 1) == "l2_seed1"``."""
    return f"{base}_seed{int(seed)}"


def replicate_of(name: str) -> tuple[str, int] | None:
    """``(base run, seed)`` of a replicate run name, None for a base run: ``"l2_seed1" -> ("l2", 1)``."""
    m = _REPLICATE.match(name)
    return (m["base"], int(m["seed"])) if m else None


def _inside(v: float | None, lo: float | None, hi: float | None) -> bool:
    return v is not None and lo is not None and hi is not None and lo <= v <= hi


def is_stable(a: DetectionResult, b: DetectionResult) -> bool:
    """True when each AUROC lies inside the other's 95 % CI (a missing AUROC or CI: not stable)."""
    return _inside(a.auroc, b.auroc_low, b.auroc_high) and _inside(b.auroc, a.auroc_low, a.auroc_high)


def seed_stability(summary: Summary) -> list[SeedStabilityRow]:
    """A :class:`SeedStabilityRow` for every method and set of every replicate run whose base run is in ``summary``."""
    rows: list[SeedStabilityRow] = []
    for name in summary.runs:
        parsed = replicate_of(name)
        if parsed is None or parsed[0] not in summary.runs:
            continue
        base, seed = parsed
        for b in (d for d in summary.detection if d.run == name):
            a = summary.detection_for(base, b.method, b.set)
            if a is None:
                continue
            rows.append(SeedStabilityRow(base, name, seed, b.method, b.set, a.auroc, a.auroc_low, a.auroc_high,
                                         b.auroc, b.auroc_low, b.auroc_high, is_stable(a, b)))
    return rows


def unstable_methods(rows: list[SeedStabilityRow], base: str, set_name: str) -> list[str]:
    """Methods of ``base`` whose AUROC on ``set_name`` moved beyond a CI between seeds (any replicate)."""
    return list(dict.fromkeys(r.method for r in rows if (r.base, r.set) == (base, set_name) and not r.stable))
