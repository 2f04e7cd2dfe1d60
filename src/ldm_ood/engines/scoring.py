"""The scoring networks of paper 000 on their chosen engines (``score.engine``).

:func:`scoring_engines` resolves the engine of each of the four networks scoring calls — the
first stage's ``encoder`` and ``decoder``, the ``unet`` and the ``lpips`` trunk — with probes of the
shapes and batch sizes scoring uses, and returns the modules to score with: the originals where
eager runs (nothing wrapped: exactly the behaviour without engines), else :class:`~.networks.EngineFirstStage`,
:class:`~.networks.EngineUNet` and an LPIPS whose trunk runs on its engine. Each network runs in
the precision ``score.precision`` gave it (the encoder and decoder in the first stage's).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from rich.console import Console
from torch import nn

from ..artifacts.atomic import atomic_write_text
from ..models.diffusion import pad_latent
from ..models.first_stage import encoder_output
from .networks import (
    EngineFirstStage,
    EngineUNet,
    decoder_spec,
    encoder_spec,
    lpips_trunk_spec,
    lpips_with_trunk,
    unet_spec,
)
from .select import EngineChoice, choose_engine
from .torch_eager import EagerEngine

console = Console(stderr=True)


@dataclass
class ScoringEngines:
    """The modules scoring calls and ``{network: EngineChoice}`` (encoder, decoder, unet, lpips)."""

    first_stage: nn.Module
    unet: nn.Module
    lpips_model: nn.Module | None
    choices: dict[str, EngineChoice] = field(default_factory=dict)

    def engines(self) -> dict[str, str]:
        """``{network: "<engine> <precision>"}`` (what a run records)."""
        return {k: f"{c.engine} {c.precision}" for k, c in self.choices.items()}


class EagerOnFailure:
    """An engine that hands its network to PyTorch eager (``fallback``) for the rest of the session the first
    time a call raises, with a loud warning naming the network and the error: an engine that passed its probe
    can still fail on an input it was not probed with (e.g. inductor's stride guards after a recompile for
    another batch size), and scoring must not stop for it."""

    def __init__(self, engine, fallback: EagerEngine, network: str):
        self.engine, self.fallback, self.network = engine, fallback, network
        self.engine_name: str = engine.name
        self.failed: str | None = None

    @property
    def name(self) -> str:
        return self.fallback.name if self.failed else self.engine_name

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if self.failed is None:
            try:
                return self.engine(*inputs)
            except Exception as err:  # any engine fault: the network's result comes from PyTorch instead
                self.failed = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
                warnings.warn(f"the {self.engine_name} engine of {self.network} failed on an input of shape "
                              f"{tuple(inputs[0].shape)} ({self.failed}); {self.network} runs in PyTorch eager "
                              f"from now on", RuntimeWarning, stacklevel=2)
                console.print(f"[bold red]engine of {self.network}: {self.engine_name} failed at run time, "
                              f"PyTorch eager from now on[/] ({self.failed})")
        return self.fallback(*inputs)


def _dtype(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


def scoring_engines(
    requested: str,
    first_stage: nn.Module,
    unet: nn.Module,
    lpips_model: nn.Module | None,
    grid: Sequence[int],
    latent_multiple: int,
    bf16: Mapping[str, bool],
    batches: Mapping[str, int],
    timestep: int = 500,
    artifact_dir: Path | None = None,
) -> ScoringEngines:
    """Resolve ``requested`` for every scoring network of images ``(1, *grid)``.

    ``bf16``: ``{"first_stage" | "unet" | "lpips": bool}``; ``batches``: the probe batch of each of
    ``encoder``, ``decoder``, ``unet``, ``lpips`` (as scoring calls them); ``timestep``: the UNet probe's.
    """
    image = (1, *grid)
    with torch.no_grad():
        latent = tuple(encoder_output(first_stage, torch.zeros((1, *image)), False).shape[1:])
    unet_latent = tuple(pad_latent(torch.zeros((1, *latent)), latent_multiple)[0].shape[1:])
    fs_precision, choices = _dtype(bf16.get("first_stage", False)), {}
    engines = {}
    specs = {"encoder": (encoder_spec(first_stage, image, batches["encoder"]), fs_precision),
             "decoder": (decoder_spec(first_stage, image, batches["decoder"]), fs_precision),
             "unet": (unet_spec(unet, unet_latent, batches["unet"], timestep), _dtype(bf16.get("unet", False)))}
    if lpips_model is not None:
        slices = grid[1:] if len(grid) == 3 else grid
        specs["lpips"] = (lpips_trunk_spec(lpips_model, slices, batches["lpips"]), _dtype(bf16.get("lpips", False)))
    for name, (spec, precision) in specs.items():
        engines[name], choices[name] = choose_engine(requested, spec, precision, artifact_dir)
        if not isinstance(engines[name], EagerEngine):
            engines[name] = EagerOnFailure(engines[name], EagerEngine(spec.module, precision, spec.spatial_dims), name)
    run = {k: None if isinstance(e, EagerEngine) else e for k, e in engines.items()}
    fs = first_stage if run["encoder"] is None and run["decoder"] is None else EngineFirstStage(
        first_stage, run["encoder"], run["decoder"], image, latent)
    un = unet if run["unet"] is None else EngineUNet(unet, run["unet"], unet_latent)
    lp = lpips_model
    if lpips_model is not None and run["lpips"] is not None:
        lp = lpips_with_trunk(lpips_model, run["lpips"], tuple(specs["lpips"][0].example[0].shape[1:]))
    return ScoringEngines(fs, un, lp, choices)


def report(choices: Mapping[str, EngineChoice], record_dir: Path | None = None) -> None:
    """One line per network on stderr (the engine it runs on and why) and, with ``record_dir`` (the run's
    ``engines/``), the choices with their measurements in ``record_dir/choices.json``."""
    for c in choices.values():
        console.print(f"engine of {c.line()}" + (" [cached]" if c.cached else ""), highlight=False)
    if record_dir is not None and choices:
        atomic_write_text(Path(record_dir) / "choices.json",
                          json.dumps({k: c.as_dict() for k, c in choices.items()}, indent=1, sort_keys=True))
