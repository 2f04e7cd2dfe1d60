"""Presets: YAML files shipped in the package (``config/presets/<name>.yaml``).

A preset file holds the fields it changes from the schema's defaults; ``extends:`` (a name or a
list of names) merges other preset files underneath it first, in order. Files whose name starts
with a digit or an underscore are overlays (``2d.yaml``, merged by every ``-2d`` preset), not
presets of their own. ``ldm-ood config --preset NAME`` prints the merged, validated result. A
user's ``--config`` YAML may name its base the same way (``extends:``, :func:`extends_dict`).

* ``tiny`` / ``tiny-2d`` — seconds-long tests (16³ / 16²), fp32;
* ``demo`` / ``demo-2d`` — ``make demo`` (32³ / 32², short training, ~10 min on 2 cores);
* ``cpu`` / ``cpu-2d`` — the one-command benchmark on 2 CPU cores (64³ / 64²);
* ``paper`` / ``paper-2d`` — paper 000 §3.2 and paper 001 §4.1 sizes, for GPU users.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from ..errors import ConfigError

#: paper 000 §3.2: codebook size by number of VQ-GAN levels
PAPER_CODEBOOK_SIZE = {2: 64, 3: 256, 4: 1024}

_ORDER = ("tiny", "demo", "cpu", "paper")


def _files() -> dict[str, Any]:
    folder = resources.files(__package__) / "presets"
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


def _is_overlay(name: str) -> bool:
    return name[:1].isdigit() or name.startswith("_")


def _sort_key(name: str) -> tuple[int, int, str]:
    base = name.removesuffix("-2d")
    return (name.endswith("-2d"), _ORDER.index(base) if base in _ORDER else len(_ORDER), name)


#: every preset shipped in the package, 3D first (``tiny demo cpu paper tiny-2d ...``)
PRESETS: tuple[str, ...] = tuple(sorted((n for n in _files() if not _is_overlay(n)), key=_sort_key))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values on top, nested mappings merged key by key (inputs untouched)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolved(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    files = _files()
    if name not in files:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name in seen:
        raise ConfigError(f"preset {name!r} extends itself ({' -> '.join((*seen, name))})")
    data = yaml.safe_load(files[name].read_text(encoding="utf-8")) or {}
    parents = data.pop("extends", [])
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = deep_merge(merged, _resolved(parent, (*seen, name)))
    return deep_merge(merged, data)


def extends_names(value: Any, source: str) -> list[str]:
    """The names of an ``extends:`` value (a name or a list of names), else a ConfigError naming ``source``."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: extends must be a preset name or a list of names, got {value!r}")
    return names


def extends_dict(names: list[str], source: str = "") -> dict[str, Any]:
    """The fields of preset files ``names`` (presets or overlays, each with its own ``extends:``) merged in order.

    A user's YAML may start with ``extends:`` exactly like a preset file does (``extends: [cpu, 2d]``).
    """
    merged: dict[str, Any] = {}
    for name in names:
        if name not in _files():
            raise ConfigError(f"{source}: extends unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        merged = deep_merge(merged, _resolved(name))
    return merged


def preset_dict(name: str) -> dict[str, Any]:
    """The fields preset ``name`` sets (its ``extends:`` chain merged), with ``preset: name``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return deep_merge(_resolved(name), {"preset": name})
