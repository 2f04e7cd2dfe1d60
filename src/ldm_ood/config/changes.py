"""What a configuration change invalidates: changed field paths and the stale artifacts of a run."""

from __future__ import annotations

from typing import Any

from .schema import Config


def changed_fields(old: Config, new: Config) -> list[str]:
    """Dotted paths of the fields whose values differ, e.g. ``["ldm.optim.max_epochs"]`` (a tuple is one value)."""
    return _changed_paths(old.model_dump(mode="json"), new.model_dump(mode="json"), ())


def _changed_paths(old: Any, new: Any, prefix: tuple[str, ...]) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [p for k in keys for p in _changed_paths(old.get(k), new.get(k), (*prefix, str(k)))]
    return [".".join(prefix)] if old != new else []


#: what a run makes from its configuration: trained stages, then calibrations (``calibration/<method>``)
ARTIFACTS: tuple[str, ...] = (
    "first_stage", "ldm", "transformer", "calibration/ldm", "calibration/ltm", "calibration/segment",
)
#: the artifacts made with each section of :class:`Config` (a whole section counts, optimisation included)
SECTION_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "preset": (),
    "data": ARTIFACTS,
    "first_stage": ARTIFACTS,
    "ldm": ("ldm", "calibration/ldm", "calibration/segment"),
    "transformer": ("transformer", "calibration/ltm"),
    "score": ("calibration/ldm", "calibration/ltm"),
    "segment": ("calibration/segment",),
    "synth": (),
}


def invalidated_artifacts(fields: list[str]) -> dict[str, list[str]]:
    """``{artifact: the given fields it was made with}`` for every artifact (of :data:`ARTIFACTS`, in that
    order) that a change of the dotted ``fields`` makes stale. A section not listed in
    :data:`SECTION_ARTIFACTS` conservatively invalidates everything."""
    hit: dict[str, list[str]] = {a: [] for a in ARTIFACTS}
    for field in fields:
        for artifact in SECTION_ARTIFACTS.get(field.split(".")[0], ARTIFACTS):
            hit[artifact].append(field)
    return {a: fs for a, fs in hit.items() if fs}
