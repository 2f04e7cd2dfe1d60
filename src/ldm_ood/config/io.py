"""Building, loading, saving and overriding configurations (YAML), with errors that name the field.

A bad value fails with the field path and the reason::

    >>> load_config(overrides={"ldm": {"optim": {"lr": -1}}})  # doctest: +SKIP
    ConfigError: invalid configuration:
      ldm.optim.lr: Input should be greater than 0
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, PresetChangeError
from .presets import PRESETS, deep_merge, extends_dict, extends_names, preset_dict
from .schema import Config


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration{f' in {source}' if source else ''}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def build_config(data: dict[str, Any], source: str = "") -> Config:
    """Validate a nested dict into a :class:`Config`, raising :class:`ConfigError` naming bad fields."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(
    path: str | Path | None = None, preset: str | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Preset (optional) < YAML file (optional) < overrides (optional).

    The YAML may name its preset itself (``preset: NAME``) or build on preset files like one
    (``extends: NAME`` or a list, overlays such as ``2d`` included). A YAML that names no preset
    (neither ``preset`` nor ``preset:`` nor ``extends:``) must be a complete configuration: there is
    no silent default preset (``preset: custom`` asks for the schema's defaults underneath).

    This builds a new configuration; to change some fields of an existing one (a run's saved
    ``config.yaml``) use :func:`override_config`.
    """
    source = str(path) if path is not None else ""
    from_file = read_yaml(path) if path is not None else {}
    extends = extends_names(from_file.pop("extends"), source) if "extends" in from_file else None
    preset = preset or from_file.get("preset")
    data: dict[str, Any] = preset_dict(preset) if preset and preset != "custom" else {}
    if extends is not None:
        data = deep_merge(data, extends_dict(extends, source))
        if not preset and len(extends) == 1 and extends[0] in PRESETS:
            preset = extends[0]
    elif not preset and path is not None:
        _require_complete(from_file, source)
    data = deep_merge(data, from_file)
    if preset:
        data["preset"] = preset
    data = deep_merge(data, overrides or {})
    return build_config(data, source=source)


def _missing_fields(defaults: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the fields of ``defaults`` (a dumped :class:`Config`) that ``given`` does not name."""
    missing = []
    for key, value in defaults.items():
        if key not in given:
            missing.append(prefix + key)
        elif isinstance(value, dict) and isinstance(given[key], dict):
            missing += _missing_fields(value, given[key], f"{prefix}{key}.")
    return missing


def _require_complete(from_file: dict[str, Any], source: str) -> None:
    """A YAML without a preset must name every field; else a ConfigError that says how to name a preset."""
    defaults = Config().model_dump(mode="json")
    defaults.pop("preset")
    missing = _missing_fields(defaults, from_file)
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise ConfigError(
            f"{source}: names no preset and is not a complete configuration ({len(missing)} fields missing: "
            f"{shown}); name the preset its fields change: --preset NAME, or `preset: NAME` (or `extends: NAME`) "
            f"in the file, one of {', '.join(PRESETS)}; or give every field (`ldm-ood config --preset NAME` "
            "prints a complete configuration)"
        )


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML (round-trips through :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (empty file: ``{}``); a missing or malformed file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def override_config(base: Config, path: str | Path | None = None, preset: str | None = None) -> Config:
    """``base`` with exactly the fields YAML file ``path`` names replaced (deep merge), validated again.

    A bad value fails with the field path, the reason and the file. A ``preset`` (the argument, the
    YAML's ``preset:`` or its ``extends:``) must be ``base``'s own, where its other fields came from: it
    then adds nothing, and a different one is a :class:`PresetChangeError` (the preset of an existing
    run cannot change).
    """
    from_file = read_yaml(path) if path is not None else {}
    extends = extends_names(from_file.pop("extends"), str(path)) if "extends" in from_file else []
    named = [(preset, "--preset"), (from_file.get("preset"), str(path))]
    named += [(name, f"{path} (extends)") for name in extends]
    for given, where in named:
        if given is not None and given != base.preset:
            raise PresetChangeError(
                f"{where}: preset {given!r}, but the run already has a different configuration, from preset "
                f"{base.preset!r}: the preset of an existing run cannot change; train in a new --run directory "
                "(or change single fields with --config)"
            )
    merged = deep_merge(base.model_dump(mode="json"), from_file)
    return build_config(merged, source=str(path) if path is not None else "")
