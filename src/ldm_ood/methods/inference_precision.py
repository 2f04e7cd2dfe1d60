"""Inference precision of the scoring networks, one measured choice per network.

``score.precision`` (LDM and LTM scoring) and ``segment.precision`` are ``auto | fp32 | bf16``;
``auto`` runs ``precision_policy.choose_precision`` on each network the method uses, with the
shapes it will see:

* ``first_stage`` — the decoder on ``decode_batch`` latents of a scan (the encoder, run once per
  scan, follows the decoder's choice; the codebook search is always fp32);
* ``unet`` — one ε-prediction over the chains that run together;
* ``lpips`` — the 2.5D LPIPS of a few reconstructions against their input;
* ``transformer`` — one teacher-forced pass of the LTM over a token sequence.

Probe inputs are drawn from a fixed seed, so the check is deterministic. The choices are returned
as ``{network: PrecisionChoice}`` and written into the calibration and score settings.
"""

from __future__ import annotations

import json
from typing import Callable, Mapping, Sequence

import torch
from rich.console import Console

from ..artifacts.atomic import atomic_write_text
from ..models.diffusion import pad_latent, predict_noise
from ..models.first_stage import decode, encode
from ..precision import set_layout
from ..precision_policy import PrecisionChoice, choose_precision, network_signature
from ..runs import RunDir
from . import sharding

Probe = Callable[[bool], list[torch.Tensor]]

console = Console(stderr=True)

_SEED = 0


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(_SEED)


def first_stage_probe(first_stage: torch.nn.Module, grid: Sequence[int], n: int, device: torch.device) -> tuple[Probe, tuple]:
    """Decode ``n`` copies of the latent of a random image ``(1, 1, *grid)``; ``(probe, signature shapes)``."""
    sd = len(grid)
    x = torch.rand((1, 1, *grid), generator=_generator()).to(device)
    z = encode(first_stage, x).repeat(n, *([1] * (sd + 1)))

    def probe(bf16: bool) -> list[torch.Tensor]:
        set_layout(first_stage, sd, bf16)
        return [decode(first_stage, z, requantize=False, bf16=bf16)]

    return probe, (tuple(z.shape),)


def unet_probe(unet: torch.nn.Module, first_stage: torch.nn.Module, grid: Sequence[int], multiple: int, n: int,
               timestep: int, device: torch.device) -> tuple[Probe, tuple]:
    """ε_θ of ``n`` noisy latents at ``timestep``, shaped as the UNet sees images of ``grid``
    (the first stage's latent, padded to ``multiple``)."""
    latent = pad_latent(encode(first_stage, torch.zeros((1, 1, *grid), device=device)), multiple)[0].shape[1:]
    sd = len(latent) - 1
    zt = torch.randn((n, *latent), generator=_generator()).to(device)

    def probe(bf16: bool) -> list[torch.Tensor]:
        set_layout(unet, sd, bf16)
        with torch.no_grad():
            return [predict_noise(unet, zt, timestep, bf16)]

    return probe, (tuple(zt.shape),)


def lpips_probe(similarity_for: Callable[[bool], Callable], grid: Sequence[int], n: int, device: torch.device) -> tuple[Probe, tuple]:
    """LPIPS of ``n`` perturbed copies of a random image against it; ``similarity_for(bf16)`` builds the function."""
    gen = _generator()
    x = torch.rand((1, 1, *grid), generator=gen).to(device)
    recons = (x.unsqueeze(1) + 0.1 * torch.randn((1, n, 1, *grid), generator=gen).to(device)).clamp(0, 1)

    def probe(bf16: bool) -> list[torch.Tensor]:
        with torch.no_grad():
            return [similarity_for(bf16)(recons, x)]

    return probe, (tuple(recons.shape),)


def transformer_probe(model: torch.nn.Module, seq_len: int, num_tokens: int, device: torch.device) -> tuple[Probe, tuple]:
    """Per-token log-likelihood of one random token sequence ``(1, seq_len + 1)``."""
    from ..models.transformer import sequence_log_likelihood

    seq = torch.randint(0, num_tokens, (1, seq_len + 1), generator=_generator()).to(device)

    def probe(bf16: bool) -> list[torch.Tensor]:
        with torch.no_grad():
            return [sequence_log_likelihood(model, seq, bf16=bf16)]

    return probe, (tuple(seq.shape),)


def resolve(
    requested: str,
    networks: Mapping[str, tuple[torch.nn.Module, Callable[[], tuple[Probe, tuple]]]],
    device: torch.device,
    what: str,
) -> dict[str, PrecisionChoice]:
    """``{name: choice}`` for ``networks`` = ``{name: (module, make_probe)}``; probes are built only when measured.

    ``what`` names the method in the choice (``"unet (ldm scoring)"``). Under ``torchrun`` rank 0
    measures and every rank runs in its choice (:mod:`.sharding`: the same numbers on every rank).
    """
    return sharding.on_main(_resolve, requested, networks, device, what)


def _resolve(requested: str, networks: Mapping[str, tuple[torch.nn.Module, Callable[[], tuple[Probe, tuple]]]],
             device: torch.device, what: str) -> dict[str, PrecisionChoice]:
    out = {}
    for name, (module, make_probe) in networks.items():
        if requested in ("fp32", "bf16"):
            out[name] = choose_precision(requested, f"{name} ({what})", lambda bf16: [], "", device)
            continue
        probe, shapes = make_probe()
        out[name] = choose_precision(requested, f"{name} ({what})", probe, network_signature([module], *shapes), device)
    return out


def dtypes(choices: Mapping[str, PrecisionChoice]) -> dict[str, str]:
    """``{network: "bf16" | "fp32"}`` (what calibration and scoring settings record)."""
    return {k: c.dtype for k, c in choices.items()}


def report(choices: Mapping[str, PrecisionChoice], run: RunDir | None = None) -> None:
    """One line per network on stderr (what it runs in and why), and the record in the run's
    ``precision.json`` (``{"<network> (<method>)": PrecisionChoice.as_dict()}``, merged); rank 0 only under
    ``torchrun``; a model bundle, which is read-only, gets no record."""
    if not sharding.world().is_main:
        return
    for c in choices.values():
        console.print(f"precision of {c.line()}" + (" [cached]" if c.cached else ""), highlight=False)
    if run is None or not run.root.is_dir() or run.is_bundle:
        return
    path = run.inference_precision_path
    try:
        record = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        record = {}
    record.update({c.network: c.as_dict() for c in choices.values()})
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
