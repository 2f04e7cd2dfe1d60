"""What a configuration change invalidates: changed field paths and the stale artifacts of a run."""

from __future__ import annotations

from typing import Any

from .schema import Config
from .stages import CALIBRATIONS, STAGES, upstream


def changed_fields(old: Config, new: Config) -> list[str]:
    """Dotted paths of the fields whose values differ, e.g. ``["ldm.optim.max_epochs"]`` (a tuple is one value)."""
    return _changed_paths(old.model_dump(mode="json"), new.model_dump(mode="json"), ())


def _changed_paths(old: Any, new: Any, prefix: tuple[str, ...]) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [p for k in keys for p in _changed_paths(old.get(k), new.get(k), (*prefix, str(k)))]
    return [".".join(prefix)] if old != new else []


#: what a run makes from its configuration: trained stages, then calibrations (``calibration/<method>``)
ARTIFACTS: tuple[str, ...] = (*STAGES, *(c.artifact for c in CALIBRATIONS.values()))


def _made_with(section: str) -> tuple[str, ...]:
    """The artifacts a change of ``section`` makes stale: a stage trained from it, every stage
    trained on that one, and the calibrations made with any of them or from the section itself."""
    stages = [s for s in STAGES if any(STAGES[u].section == section for u in upstream(s))]
    calibrations = [c.artifact for c in CALIBRATIONS.values()
                    if section in c.sections or any(s in stages for s in c.stages)]
    return (*stages, *calibrations)


#: the artifacts made with each section of :class:`Config` (a whole section counts, optimisation included)
SECTION_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "preset": (), "synth": (), "data": ARTIFACTS,
    **{name: _made_with(name) for name in Config.model_fields if name not in ("preset", "synth", "data")},
}


#: fields that change how a network is run but not what it computes (beyond the engine's stated tolerance of
#: PyTorch fp32, ``ldm_ood.engines``): changing them leaves every artifact valid
RUNTIME_ONLY: frozenset[str] = frozenset({"score.engine"})


def invalidated_artifacts(fields: list[str]) -> dict[str, list[str]]:
    """``{artifact: the given fields it was made with}`` for every artifact (of :data:`ARTIFACTS`, in that
    order) that a change of the dotted ``fields`` makes stale. A section not listed in
    :data:`SECTION_ARTIFACTS` conservatively invalidates everything; :data:`RUNTIME_ONLY` fields invalidate nothing."""
    hit: dict[str, list[str]] = {a: [] for a in ARTIFACTS}
    for field in fields:
        if field in RUNTIME_ONLY:
            continue
        for artifact in SECTION_ARTIFACTS.get(field.split(".")[0], ARTIFACTS):
            hit[artifact].append(field)
    return {a: fs for a, fs in hit.items() if fs}
