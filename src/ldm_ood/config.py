"""Configuration: one pydantic model per stage, presets ``tiny`` / ``cpu`` / ``paper``, YAML I/O.

The schema mirrors the constructor arguments of the MONAI building blocks it configures
(``spatial_dims``, ``channels``, ``num_inference_steps`` ...). Sizes of the ``paper`` preset are
paper 000 §3.2 (VQ-GAN, latent DDPM, LTM) and paper 001 §2.1/§3 (VQ-VAE, KL maps, healing).

A bad value fails with the field path and the reason::

    >>> load_config(overrides={"ldm": {"lr": -1}})  # doctest: +SKIP
    ConfigError: ldm.lr: Input should be greater than 0
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRESETS: tuple[str, ...] = ("tiny", "demo", "cpu", "paper", "tiny-2d", "demo-2d", "cpu-2d", "paper-2d")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: ``auto``: bf16 only where a measured self-check on the run's own networks shows finite results that
#: agree with fp32 and run faster (``ldm_ood.precision``); ``fp32`` / ``bf16`` force one.
Precision = Literal["auto", "fp32", "bf16"]


class _HasPrecision(_Strict):
    """Accepts the older boolean ``bf16`` field (configs saved before ``precision``) as a precision."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_bf16(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bf16" in data:
            data = dict(data)
            legacy = data.pop("bf16")
            if "precision" not in data and isinstance(legacy, bool):
                data["precision"] = "bf16" if legacy else "fp32"
            elif not isinstance(legacy, bool):
                raise ValueError(f"bf16 must be true or false (or use precision: auto | fp32 | bf16), got {legacy!r}")
        return data


class DataConfig(_Strict):
    """Preprocessing of paper 000 §3.1: orientation, spacing, crop/pad to a grid, intensity."""

    spatial_dims: Literal[2, 3] = 3
    grid: tuple[int, ...] = (64, 64, 64)
    spacing: tuple[float, ...] | None = Field(default=None, description="mm; None keeps the input spacing")
    orientation: str = "RAS"
    modality: Literal["ct", "other"] = "ct"
    ct_window: tuple[float, float] = (-15.0, 100.0)
    manifest: Path | None = Field(default=None, description="manifest CSV with train/val splits")

    @model_validator(mode="after")
    def _grid_matches_dims(self) -> "DataConfig":
        if len(self.grid) != self.spatial_dims:
            raise ValueError(f"grid {self.grid} has {len(self.grid)} dims but spatial_dims={self.spatial_dims}")
        if any(g <= 0 for g in self.grid):
            raise ValueError(f"grid sizes must be positive, got {self.grid}")
        if self.spacing is not None and len(self.spacing) != self.spatial_dims:
            raise ValueError(f"spacing {self.spacing} must have {self.spatial_dims} values")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window must be increasing, got {self.ct_window}")
        return self


class OptimConfig(_HasPrecision):
    """Optimisation and early stopping of one training stage."""

    lr: float = Field(gt=0)
    batch_size: int = Field(default=2, ge=1)
    max_epochs: int = Field(default=100, ge=1)
    patience: int = Field(default=15, ge=1, description="early stopping: epochs without val improvement")
    val_every: int = Field(default=1, ge=1)
    preview_every: int = Field(default=5, ge=1)
    precision: Precision = Field(default="auto", description="training precision: auto | fp32 | bf16")
    grad_clip_norm: float | None = Field(
        default=None, gt=0, description="clip the global gradient norm of every optimizer step to this value"
    )
    num_workers: int = Field(default=0, ge=0)
    seed: int = 0
    samples_per_epoch: int | None = Field(default=None, ge=1, description="cap on training samples per epoch")


class FirstStageConfig(_Strict):
    """VQ-GAN (paper 000 §2.1/§3.2) or VQ-VAE with EMA codebook (paper 001 §2.1), via MONAI ``VQVAE``."""

    kind: Literal["vqgan", "vqvae"] = "vqgan"
    levels: int = Field(default=3, ge=1, le=5, description="downsampling levels l; latent = input / 2**l")
    channels: int = Field(default=128, ge=1)
    num_res_layers: int = Field(default=3, ge=0)
    num_res_channels: int = Field(default=128, ge=1)
    embedding_dim: int = Field(default=64, ge=1)
    num_embeddings: int = Field(default=256, ge=2)
    commitment_cost: float = Field(default=0.25, ge=0)
    decay: float = Field(default=0.99, gt=0, lt=1, description="EMA decay of the codebook")
    reconstruction_loss: Literal["l2", "l1"] = "l2"
    perceptual_weight: float = Field(default=0.001, ge=0)
    adversarial_weight: float = Field(default=0.01, ge=0)
    spectral_weight: float = Field(default=1.0, ge=0)
    disc_channels: int = Field(default=64, ge=1)
    disc_layers: int = Field(default=3, ge=1)
    disc_lr: float = Field(default=3e-4, gt=0)
    adversarial_warmup_epochs: int = Field(default=0, ge=0)
    train_patch: tuple[int, ...] | None = Field(
        default=None,
        description="beyond the paper: train on random crops of this size (fully convolutional; CPU budgets)",
    )
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=3e-4))

    @property
    def downsampling_factor(self) -> int:
        return 2**self.levels

    @model_validator(mode="after")
    def _patch_divisible(self) -> "FirstStageConfig":
        f = 2**self.levels
        if self.train_patch is not None and any(p <= 0 or p % f for p in self.train_patch):
            raise ValueError(f"train_patch {self.train_patch} must be positive multiples of 2**levels = {f}")
        return self


class DiffusionConfig(_Strict):
    """Latent DDPM (paper 000 §3.2): time-conditioned UNet, scaled-linear β, ε-prediction."""

    channels: tuple[int, ...] = (128, 256, 256)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = Field(default=1, ge=1)
    num_head_channels: int = Field(default=32, ge=1)
    norm_num_groups: int = Field(default=32, ge=1)
    num_train_timesteps: int = Field(default=1000, ge=2)
    schedule: str = "scaled_linear_beta"
    beta_start: float = Field(default=0.0015, gt=0)
    beta_end: float = Field(default=0.0195, gt=0)
    schedule_shift: float | None = Field(
        default=None, gt=0, description="beyond the paper: SNR shift of the schedule for large latents"
    )
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=2.5e-5))

    @model_validator(mode="after")
    def _levels_consistent(self) -> "DiffusionConfig":
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels must have one entry per level of channels")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {self.channels} must be divisible by norm_num_groups")
        if self.beta_end <= self.beta_start:
            raise ValueError("beta_end must exceed beta_start")
        return self


class TransformerConfig(_Strict):
    """Latent Transformer Model baseline (paper 000 §3.2): decoder-only over VQ token indices."""

    num_layers: int = Field(default=22, ge=1)
    dim: int = Field(default=256, ge=8)
    heads: int = Field(default=8, ge=1)
    ordering: str = Field(default="raster_scan", description="MONAI OrderingType value")
    ensemble_orderings: tuple[str, ...] = ()
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4))

    @model_validator(mode="after")
    def _heads_divide(self) -> "TransformerConfig":
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        return self


class ScoreConfig(_HasPrecision):
    """Paper 000 §2.2–2.3 scoring: multi-start reconstructions, similarity metrics, maps, calibration."""

    num_t_values: int = Field(default=50, ge=1, description="starts evenly spaced over [0, T]")
    t_values: tuple[int, ...] | None = Field(default=None, description="explicit starts; overrides num_t_values")
    num_inference_steps: int = Field(default=100, ge=1)
    sampler: Literal["plms", "ddim"] = "plms"
    metrics: tuple[Literal["mse", "lpips"], ...] = ("mse", "lpips")
    map_t_values: tuple[int, ...] = (100, 200, 300, 400)
    batch_size: int = Field(default=1, ge=1, description="scans per batched reconstruction")
    precision: Precision = Field(default="auto", description="inference precision: auto | fp32 | bf16")
    sequential: bool = Field(default=False, description="one chain at a time, as the reference code")
    requantize: bool = Field(
        default=True, description="snap denoised latents to the codebook before decoding (reference code)"
    )
    fpr: float = Field(default=0.05, gt=0, lt=1, description="operating point on validation")
    seed: int = 0

    @field_validator("metrics")
    @classmethod
    def _nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one metric is required")
        return v


class SegmentConfig(_HasPrecision):
    """Paper 001 §3: KL maps over t in [400, 600], percentile thresholds, masked healing, residuals."""

    kl_t_range: tuple[int, int] = (400, 600)
    kl_num_t: int | None = Field(default=None, ge=1, description="None: every t in range (DDPM); 50 for (d)")
    percentile: float = Field(default=97.5, gt=0, lt=100)
    start_t: int = Field(default=500, ge=1)
    variant: Literal["a", "b", "c", "d"] = "c"
    ddim_steps: int = Field(default=50, ge=1)
    healing: Literal["paper", "repaint"] = "paper"
    gaussian_sigma: float = Field(default=1.0, ge=0, description="in latent voxels, for the upsampled mask")
    score_num_t: int | None = Field(
        default=50, ge=1, description="image-level score (§4.1): t-values evenly spaced over [1, T-1]; None = every t"
    )
    fpr: float = Field(default=0.05, gt=0, lt=1)
    batch_size: int = Field(default=16, ge=1)
    precision: Precision = Field(default="auto", description="inference precision: auto | fp32 | bf16")
    seed: int = 0


class SynthConfig(_Strict):
    """Built-in synthetic head-CT benchmark (DESIGN.md) sizes."""

    grid: tuple[int, int, int] = (64, 64, 64)
    spacing_mm: float = Field(default=3.2, gt=0)
    n_train: int = Field(default=48, ge=1)
    n_val: int = Field(default=12, ge=1)
    n_test: int = Field(default=12, ge=1)
    n_far_per_class: int = Field(default=8, ge=1)
    slice_size: int = Field(default=64, ge=8)
    n_train_2d: int = Field(default=800, ge=1)
    n_val_2d: int = Field(default=100, ge=1)
    n_test_2d: int = Field(default=100, ge=1)
    seed: int = 0


class Config(_Strict):
    """All stages of one run."""

    preset: str = "custom"
    data: DataConfig = Field(default_factory=DataConfig)
    first_stage: FirstStageConfig = Field(default_factory=FirstStageConfig)
    ldm: DiffusionConfig = Field(default_factory=DiffusionConfig)
    transformer: TransformerConfig = Field(default_factory=TransformerConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)

    @model_validator(mode="after")
    def _first_stage_fits_grid(self) -> "Config":
        f = self.first_stage.downsampling_factor
        bad = [g for g in self.data.grid if g % f]
        if bad:
            raise ValueError(
                f"data.grid {self.data.grid} is not divisible by 2**first_stage.levels = {f}"
            )
        return self


# --------------------------------------------------------------------------- presets

_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    # seconds-long tests: 16^3 volumes / 16^2 slices, networks of a few thousand parameters
    "tiny": {
        "data": {"grid": (16, 16, 16)},
        "first_stage": {
            "levels": 2, "channels": 8, "num_res_layers": 1, "num_res_channels": 8,
            "embedding_dim": 4, "num_embeddings": 16, "disc_channels": 8, "disc_layers": 2,
            "optim": {"lr": 1e-3, "batch_size": 2, "max_epochs": 2, "patience": 2, "preview_every": 1,
                      "precision": "fp32"},
        },
        "ldm": {
            "channels": (8, 16, 16), "num_head_channels": 8, "norm_num_groups": 8,
            "optim": {"lr": 1e-3, "batch_size": 2, "max_epochs": 2, "patience": 2, "preview_every": 1,
                      "precision": "fp32"},
        },
        "transformer": {
            "num_layers": 2, "dim": 16, "heads": 2,
            "optim": {"lr": 1e-3, "batch_size": 2, "max_epochs": 2, "patience": 2, "precision": "fp32"},
        },
        # tests compare against fp32 hand computations: no timing-dependent `auto` in the tiny presets
        "score": {"num_t_values": 4, "num_inference_steps": 10, "map_t_values": (250, 500), "batch_size": 2,
                  "precision": "fp32"},
        "segment": {"kl_num_t": 4, "ddim_steps": 5, "batch_size": 4, "precision": "fp32"},
        "synth": {
            "grid": (16, 16, 16), "spacing_mm": 12.0, "n_train": 4, "n_val": 3, "n_test": 3,
            "n_far_per_class": 2, "slice_size": 16, "n_train_2d": 8, "n_val_2d": 4, "n_test_2d": 4,
        },
    },
    # sized for the demo and the one-command benchmark on 2 CPU cores (precision: auto, measured per machine)
    "cpu": {
        "data": {"grid": (64, 64, 64)},
        "first_stage": {
            "levels": 2, "channels": 32, "num_res_layers": 2, "num_res_channels": 32,
            "embedding_dim": 8, "num_embeddings": 256, "disc_channels": 16, "disc_layers": 2,
            "train_patch": (32, 32, 32), "adversarial_warmup_epochs": 10,
            "optim": {"lr": 5e-4, "batch_size": 4, "max_epochs": 120, "patience": 50, "preview_every": 50,
                      "val_every": 10},
        },
        "ldm": {
            "channels": (32, 64, 64), "num_head_channels": 32, "norm_num_groups": 16,
            "optim": {"lr": 2.5e-4, "batch_size": 8, "max_epochs": 80, "patience": 40, "preview_every": 100,
                      "val_every": 5},
        },
        "transformer": {
            "num_layers": 4, "dim": 64, "heads": 4,
            "optim": {"lr": 5e-4, "batch_size": 8, "max_epochs": 6, "patience": 6},
        },
        "score": {"num_t_values": 10, "num_inference_steps": 25, "batch_size": 2},
        "segment": {"batch_size": 50},
        "synth": {"n_test": 8, "n_far_per_class": 6, "n_train_2d": 400, "n_test_2d": 50},
    },
    # paper 000 §3.2 exactly (and paper 001 defaults in `segment`)
    "paper": {
        "data": {"grid": (176, 208, 176), "spacing": (1.0, 1.0, 1.0)},
        "first_stage": {
            "levels": 3, "channels": 128, "num_res_layers": 3, "num_res_channels": 128,
            "embedding_dim": 64, "num_embeddings": 256,
            "optim": {"lr": 3e-4, "batch_size": 64, "max_epochs": 500, "patience": 15},
        },
        "ldm": {
            "channels": (128, 256, 256), "attention_levels": (False, False, True), "num_res_blocks": 1,
            "optim": {"lr": 2.5e-5, "batch_size": 112, "max_epochs": 12000, "patience": 15},
        },
        "transformer": {
            "num_layers": 22, "dim": 256, "heads": 8,
            "optim": {"lr": 1e-4, "batch_size": 128, "max_epochs": 500, "patience": 15},
        },
        "score": {"num_t_values": 50, "num_inference_steps": 100},
        "synth": {"grid": (176, 208, 176), "spacing_mm": 1.0, "n_train": 614, "n_val": 69, "n_test": 47,
                  "n_far_per_class": 22},
    },
}

# `make demo`: the cpu networks on a 32^3 / 32^2 cohort with short training (~10 min on 2 cores)
_PRESET_OVERRIDES["demo"] = copy.deepcopy(_PRESET_OVERRIDES["cpu"])
for _k, _v in {
    "data": {"grid": (32, 32, 32)},
    "synth": {"grid": (32, 32, 32), "spacing_mm": 6.4, "n_train": 32, "n_val": 8, "n_test": 8,
              "n_far_per_class": 4, "slice_size": 32, "n_train_2d": 400, "n_val_2d": 40, "n_test_2d": 30},
}.items():
    _PRESET_OVERRIDES["demo"][_k] = _v
_PRESET_OVERRIDES["demo"]["first_stage"]["optim"].update({"max_epochs": 80, "patience": 80, "preview_every": 40})
_PRESET_OVERRIDES["demo"]["ldm"]["optim"].update({"max_epochs": 100, "patience": 100, "preview_every": 50})
_PRESET_OVERRIDES["demo"]["transformer"]["optim"].update({"max_epochs": 10, "patience": 10})

# 2D variants (paper 001 §4.1: 64x64 slices, VQ-VAE with EMA codebook, f = 4)
_2D = {
    "data": {"spatial_dims": 2, "grid": (64, 64)},
    "first_stage": {"kind": "vqvae", "levels": 2, "perceptual_weight": 0.0, "adversarial_weight": 0.0,
                    "spectral_weight": 0.0, "reconstruction_loss": "l1", "train_patch": None},
}

#: paper 000 §3.2: codebook size by number of VQ-GAN levels
PAPER_CODEBOOK_SIZE = {2: 64, 3: 256, 4: 1024}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values on top, nested mappings merged key by key (inputs untouched)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


for _name, _grid in (("tiny", (16, 16)), ("demo", (32, 32)), ("cpu", (64, 64)), ("paper", (64, 64))):
    _PRESET_OVERRIDES[f"{_name}-2d"] = copy.deepcopy(
        _deep_merge(_deep_merge(_PRESET_OVERRIDES[_name], _2D), {"data": {"grid": _grid, "spacing": None}})
    )
_PRESET_OVERRIDES["cpu-2d"]["first_stage"].update(
    {"channels": 64, "num_res_channels": 64, "embedding_dim": 8, "num_embeddings": 256}
)
_PRESET_OVERRIDES["cpu-2d"]["first_stage"]["optim"].update(
    {"max_epochs": 20, "patience": 10, "val_every": 2, "preview_every": 10}
)
_PRESET_OVERRIDES["cpu-2d"]["ldm"]["optim"].update({"max_epochs": 60, "patience": 20})
_PRESET_OVERRIDES["demo-2d"]["first_stage"]["optim"].update({"max_epochs": 10, "patience": 10, "val_every": 2})
_PRESET_OVERRIDES["demo-2d"]["ldm"]["optim"].update({"max_epochs": 30, "patience": 30, "val_every": 5})
_PRESET_OVERRIDES["paper-2d"]["first_stage"].update({"num_embeddings": 256, "embedding_dim": 64})


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration{f' in {source}' if source else ''}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def preset_dict(name: str) -> dict[str, Any]:
    """The override dictionary of preset ``name`` (``tiny``, ``cpu`` or ``paper``)."""
    if name not in _PRESET_OVERRIDES:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return _deep_merge({"preset": name}, _PRESET_OVERRIDES[name])


def build_config(data: dict[str, Any], source: str = "") -> Config:
    """Validate a nested dict into a :class:`Config`, raising :class:`ConfigError` naming bad fields."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(
    path: str | Path | None = None, preset: str | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Preset (optional) < YAML file (optional) < overrides (optional). A YAML may name ``preset:``.

    This builds a new configuration; to change some fields of an existing one (a run's saved
    ``config.yaml``) use :func:`override_config`.
    """
    data: dict[str, Any] = {}
    from_file = read_yaml(path) if path is not None else {}
    preset = preset or from_file.get("preset")
    if preset and preset != "custom":
        data = preset_dict(preset)
    data = _deep_merge(data, from_file)
    if preset:
        data["preset"] = preset
    data = _deep_merge(data, overrides or {})
    return build_config(data, source=str(path) if path else "")


def save_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML (round-trips through :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


# --------------------------------------------------------------------------- overriding an existing config


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

    A bad value fails with the field path, the reason and the file. A ``preset`` (the argument or the
    YAML's ``preset:``) must be ``base``'s own, where its other fields came from: it then adds nothing,
    and a different one is a ConfigError (the preset of an existing run cannot change).
    """
    from_file = read_yaml(path) if path is not None else {}
    for given, where in ((preset, "--preset"), (from_file.get("preset"), str(path))):
        if given is not None and given != base.preset:
            raise ConfigError(
                f"{where}: preset {given!r}, but the run already has a different configuration, from preset "
                f"{base.preset!r}: the preset of an existing run cannot change; train in a new --run directory "
                "(or change single fields with --config)"
            )
    merged = _deep_merge(base.model_dump(mode="json"), from_file)
    return build_config(merged, source=str(path) if path is not None else "")


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
