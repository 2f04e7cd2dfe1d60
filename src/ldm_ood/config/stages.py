"""What a run is made of, one line each: its trained stages and its calibrations.

Import-light (no torch): ``RunDir`` takes its stage folders from :data:`STAGES`, ``ldm-ood train``
its subcommands, training its fit functions (imported on first use), loading the commands it names
in messages, and :mod:`.changes` which artifacts a configuration change makes stale. A new trainable
network (a paper 001 baseline, say) is one :class:`StageInfo` here plus its config section; a new
calibrated method one :class:`CalibrationInfo` (and its line in ``methods.registry``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class StageInfo:
    """A trained network of a run: ``<run>/<name>/``, trained by ``ldm-ood train <command>``.

    ``section``: the :class:`~ldm_ood.config.schema.Config` section it is trained from; ``needs``:
    the stages it is trained on (their change makes it stale); ``fit``: ``"module:function"``, called
    as ``fn(run, config, train_ds, val_ds, resume, ctx) -> FitResult``.
    """

    name: str
    command: str
    section: str
    fit: str
    description: str
    needs: tuple[str, ...] = ()

    def fit_fn(self) -> Callable[..., Any]:
        module, fn = self.fit.split(":")
        return getattr(importlib.import_module(module), fn)


@dataclass(frozen=True)
class CalibrationInfo:
    """``calibration/<method>``: made from the config ``sections`` with the trained ``stages``."""

    method: str
    sections: tuple[str, ...]
    stages: tuple[str, ...]

    @property
    def artifact(self) -> str:
        return f"calibration/{self.method}"


STAGES: dict[str, StageInfo] = {s.name: s for s in (
    StageInfo("first_stage", "first-stage", "first_stage", "ldm_ood.training.first_stage:fit_first_stage",
              "Train the VQ-GAN (3D, paper 000) or VQ-VAE (2D, paper 001) first stage."),
    StageInfo("ldm", "ldm", "ldm", "ldm_ood.training.ldm:fit_ldm",
              "Train the latent DDPM on the frozen first stage's latents.", needs=("first_stage",)),
    StageInfo("transformer", "transformer", "transformer", "ldm_ood.training.transformer:fit_transformer",
              "Train the Latent Transformer Model baseline on the first stage's token indices.", needs=("first_stage",)),
    StageInfo("fanogan", "fanogan", "fanogan", "ldm_ood.training.fanogan:fit_fanogan",
              "Train the f-AnoGAN baseline (paper 001 Table 1): a WGAN-GP, then its izi_f encoder."),
    StageInfo("ae", "ae", "ae", "ldm_ood.methods.autoencoder.training:fit_ae",
              "Train the AE (spatial bottleneck) baseline of paper 001 (Baur et al. 2021) on the training slices."),
    StageInfo("vae", "vae", "vae", "ldm_ood.methods.autoencoder.training:fit_vae",
              "Train the VAE (dense latent) baseline of paper 001 (Baur et al. 2021) on the training slices."),
    StageInfo("ensemble", "ensemble", "ensemble", "ldm_ood.training.ensemble:fit_ensemble",
              "Train the ensemble of latent transformers (one per ordering of ensemble.orderings, one after another; "
              "paper 001 Table 1 baseline).", needs=("first_stage",)),
)}

CALIBRATIONS: dict[str, CalibrationInfo] = {c.method: c for c in (
    CalibrationInfo("ldm", ("score",), ("first_stage", "ldm")),
    CalibrationInfo("ltm", ("score",), ("first_stage", "transformer")),
    CalibrationInfo("segment", ("segment",), ("first_stage", "ldm")),
    CalibrationInfo("fanogan", ("segment",), ("fanogan",)),
    CalibrationInfo("ae", ("ae", "segment"), ("ae",)),
    CalibrationInfo("vae", ("vae", "segment"), ("vae",)),
    CalibrationInfo("transformer", ("segment", "token_healing"), ("first_stage", "transformer")),
    CalibrationInfo("ensemble", ("segment", "token_healing"), ("first_stage", "ensemble")),
)}


def stage_info(name: str) -> StageInfo:
    """The stage named ``name`` or spelled ``name`` on the command line (``first-stage``); ConfigError otherwise."""
    for s in STAGES.values():
        if name in (s.name, s.command):
            return s
    raise ConfigError(f"unknown stage {name!r}; choose {', '.join(s.command for s in STAGES.values())}")


def upstream(stage: str) -> tuple[str, ...]:
    """``stage`` and every stage it is (transitively) trained on."""
    out = [stage]
    for need in STAGES[stage].needs:
        out += [s for s in upstream(need) if s not in out]
    return tuple(out)
