"""What is saved with a stage's weights (``<stage>/config.json``), one typed record per stage.

Training writes it (``StageTask.model_config`` → :meth:`StageMeta.to_json`); loading reads it back
with :meth:`StageMeta.read`, which checks that the file belongs to the stage and that every field is
present with the right type, naming the file and the field otherwise (an edited or truncated
``config.json`` is an :class:`~ldm_ood.errors.InputError`, never a ``KeyError`` deep in loading).

``config`` is the whole run configuration at training time (JSON), from which the network is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import InputError
from .checkpoint import load_model_config

M = TypeVar("M", bound="StageMeta")
#: fields a record written by an older version may lack
OPTIONAL = ("inputs", "weights_sha256")


def _as_shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"expected a list of integers, got {value!r}")
    return tuple(value)


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _as_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return value


def _as_hashes(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"expected a mapping of names to sha256 strings, got {value!r}")
    return value


def _as_optional_str(value: Any) -> str | None:
    return None if value is None else _as_str(value)


_PARSERS = {"int": _as_int, "float": _as_float, "str": _as_str, "tuple[int, ...]": _as_shape, "dict[str, Any]": _as_dict,
            "dict[str, str]": _as_hashes, "str | None": _as_optional_str}


@dataclass(frozen=True, kw_only=True)
class StageMeta:
    """Fields every stage saves: its spatial dims, the run config it was trained with, the sha256 of
    the upstream weights it was trained on (``inputs``: ``{"first_stage": sha256}`` for the LDM and
    the LTM; checked by loading, :mod:`ldm_ood.models.loading`) and of its own weights
    (``weights_sha256``, added by ``checkpoint.save_model``). Records written before these existed
    read as ``{}`` / None: not checked."""

    stage: ClassVar[str]
    spatial_dims: int
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    weights_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"stage": ..., field: value}``, shapes as lists (what ``config.json`` holds)."""
        out: dict[str, Any] = {"stage": self.stage}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls: type[M], data: Any, path: str | Path | None = None) -> M:
        """Parse ``data`` (a loaded ``config.json``); :class:`InputError` naming ``path`` and the field."""
        if not isinstance(data, dict):
            raise InputError(path, f"not a {cls.stage} model record (a JSON object is expected)")
        if data.get("stage", cls.stage) != cls.stage:
            raise InputError(path, f"this is the record of stage {data.get('stage')!r}, not {cls.stage!r}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data and f.name in OPTIONAL:
                continue
            if f.name not in data:
                raise InputError(path, f"field {f.name!r} of the {cls.stage} model record is missing; retrain the stage")
            try:
                values[f.name] = _PARSERS[str(f.type)](data[f.name])
            except TypeError as e:
                raise InputError(path, f"field {f.name!r} of the {cls.stage} model record: {e}") from None
        return cls(**values)

    @classmethod
    def read(cls: type[M], directory: str | Path) -> M:
        """The record in ``<directory>/config.json`` (``FileNotFoundError`` when there is none)."""
        path = Path(directory) / "config.json"
        return cls.from_json(load_model_config(directory), path)


@dataclass(frozen=True, kw_only=True)
class FirstStageMeta(StageMeta):
    """The VQ-GAN / VQ-VAE: nothing beyond the common fields."""

    stage: ClassVar[str] = "first_stage"


@dataclass(frozen=True, kw_only=True)
class LDMMeta(StageMeta):
    """The latent DDPM: the UNet sees ``scale_factor · z`` (``latent_channels`` channels, grid
    ``latent_spatial_shape``) zero-padded to multiples of ``latent_multiple``."""

    stage: ClassVar[str] = "ldm"
    scale_factor: float
    latent_multiple: int
    latent_spatial_shape: tuple[int, ...]
    latent_channels: int


@dataclass(frozen=True, kw_only=True)
class TransformerMeta(StageMeta):
    """The LTM: ``num_tokens`` (codebook + BOS), ``seq_len`` tokens of a ``latent_spatial_shape``
    grid read in ``ordering`` (seeded by ``ordering_seed`` for the random ones)."""

    stage: ClassVar[str] = "transformer"
    num_tokens: int
    seq_len: int
    latent_spatial_shape: tuple[int, ...]
    ordering: str
    ordering_seed: int


@dataclass(frozen=True, kw_only=True)
class FanoganMeta(StageMeta):
    """The f-AnoGAN baseline (generator, critic and encoder in one file): trained on ``grid`` images,
    ``gan_epochs`` epochs of WGAN-GP before the encoder epochs."""

    stage: ClassVar[str] = "fanogan"
    grid: tuple[int, ...]
    gan_epochs: int


@dataclass(frozen=True, kw_only=True)
class AEMeta(StageMeta):
    """Paper 001's AE (spatial) baseline: rebuilt from ``config["ae"]`` and the grid ``config["data"]["grid"]``."""

    stage: ClassVar[str] = "ae"


@dataclass(frozen=True, kw_only=True)
class VAEMeta(StageMeta):
    """Paper 001's VAE (dense) baseline: rebuilt from ``config["vae"]`` and the grid (its dense layer depends on it)."""

    stage: ClassVar[str] = "vae"


@dataclass(frozen=True, kw_only=True)
class EnsembleMeta(StageMeta):
    """The ensemble of latent transformers (``<run>/ensemble/config.json``, written once every member
    has finished): ``members`` maps each member's folder under ``ensemble/`` to its ordering, in
    ``ensemble.orderings`` order; each member is an LTM with its own :class:`TransformerMeta` in
    ``ensemble/<folder>/transformer/``. ``weights_sha256`` is the sha256 of the members' weight hashes
    (one per line, in order), so a calibration records and checks the whole ensemble as one network."""

    stage: ClassVar[str] = "ensemble"
    members: dict[str, str]
