"""Multi-start latent reconstructions for OOD scoring (paper 000 §2.2, §3.2).

A scan ``x`` is encoded once, ``z = E(x)`` (scaled by the LDM's ``scale_factor`` and zero-padded to
the UNet's ``latent_multiple``). For every start ``t`` the latent is noised with its own seeded
noise, ``z_t = sqrt(ᾱ_t) z + sqrt(1 − ᾱ_t) ε`` (``scheduler.add_noise``), and denoised back to 0 on
the inference grid with PLMS (MONAI ``PNDMScheduler(skip_prk_steps=True)``), DDIM (η = 0),
DPM-Solver++(2M) (:mod:`ldm_ood.samplers.dpm_solver`, on DDIM's grid), or in one step: ``one_step``
takes ``x̂_0`` from a single UNet call at each start (:mod:`ldm_ood.samplers.one_step`; its grid is
every training timestep, so each t is used as is).

**t-values.** The default ``num_t_values`` = N starts are the midpoints of N equal bins of
``[0, T]``: ``t_k = round((k + ½)·T/N)``. For the paper (N = 50, T = 1000, 100 PLMS steps) these
are 10, 30, …, 990, exactly the reference code's ``reversed(timesteps)[1::2]``. Each t is mapped
onto the inference grid by :func:`snap_to_grid`: the chain starts at the largest grid timestep
``≤ t`` (and then visits every grid timestep ``≤`` its start, as the reference does). A start of 0
means *no noise*: ``ẑ_0 = z`` (the first stage's own reconstruction). Starts that snap to the same
grid timestep are one chain.

**Executions** (``execution``; all produce ``(B, n_starts, C, *s)`` latents from the same noise):

* ``"batched"`` (default, fast): all chains advance together. At each grid step ``s``, every chain
  (over starts and over the scans of the batch) whose start is ``≥ s`` goes through ONE UNet call
  (split into ``unet_batch`` chunks only to bound memory). Each chain keeps its own PLMS history in
  :class:`PLMSHistory`, which reproduces MONAI's ``PNDMScheduler.step_plms`` per chain.
* ``"sequential"``: one start at a time with a fresh MONAI scheduler state per chain — the
  correct per-chain reference; ``"batched"`` equals it up to float rounding.
* ``"reference"``: one start at a time (ascending), reusing ONE MONAI scheduler for all of a
  batch's chains, as ``ddpm-ood``'s ``reconstruct.py`` does. Its PLMS history (``ets``,
  ``counter``) leaks from one chain into the next (DESIGN.md "Known traps"); kept as the faithful
  reference execution and for timing.

MONAI's PLMS with ``skip_prk_steps`` differs from diffusers': it has no repeated second timestep, so
the chain's 2nd call redoes the step ``t0 → t0−δ`` with the averaged ε (Heun-like) and the later
calls label the sample one grid step lower than its noise level; the last call (at ``s = 0``) is the
identity. :class:`PLMSHistory` reproduces this exactly so results equal MONAI's.

Precision: the UNet (and encoder/decoder) run under bf16 autocast in channels-last layout when
``bf16=True`` (``ldm_ood.precision``); the latent state and the sampler update stay in fp32.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler, PNDMScheduler

from ...models.diffusion import CallCounter, crop_latent, pad_latent, predict_noise
from ...models.first_stage import decode, encode
from ...samplers.dpm_solver import DPMSolverPP2M
from ...samplers.ddim import ddim_step
from ...samplers.noise import make_noise, noised_chains
from ...samplers.one_step import OneStepChains
from ...samplers.plms import PLMSHistory

Execution = Literal["batched", "sequential", "reference"]
EXECUTIONS: tuple[str, ...] = ("batched", "sequential", "reference")


# ----------------------------------------------------------------------------- t-values and grid


def default_t_values(num_t_values: int, num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """N starts evenly spaced over ``[0, T]``: bin midpoints ``round((k + ½)·T/N)``, k = 0..N−1."""
    if num_t_values < 1:
        raise ValueError("num_t_values must be >= 1")
    step = num_train_timesteps / num_t_values
    return tuple(int(math.floor((k + 0.5) * step + 0.5)) for k in range(num_t_values))


def inference_grid(scheduler: PNDMScheduler | DDIMScheduler) -> np.ndarray:
    """The scheduler's inference timesteps, descending and de-duplicated: ``(n_steps,)`` int64."""
    ts = np.asarray(scheduler.timesteps.cpu().numpy(), dtype=np.int64)
    return np.unique(ts)[::-1].copy()


def snap_to_grid(t_values: Sequence[int], grid: np.ndarray) -> tuple[int, ...]:
    """Grid start of each t: the largest grid timestep ``≤ t`` (0 if none; 0 = no noise)."""
    out = []
    for t in t_values:
        below = grid[grid <= int(t)]
        out.append(int(below.max()) if below.size else 0)
    return tuple(out)


def chain_starts(*t_value_sets: Sequence[int], grid: np.ndarray) -> tuple[int, ...]:
    """Unique ascending grid starts needed by all the given t-value sets (nothing computed twice)."""
    starts: set[int] = set()
    for ts in t_value_sets:
        starts.update(snap_to_grid(ts, grid))
    return tuple(sorted(starts))


def unet_evaluations(starts: Sequence[int], grid: np.ndarray, sampler: str) -> int:
    """UNet evaluations (chain-steps) of one scan's chains: a chain from start ``s > 0`` calls the UNet at
    every grid timestep ``≤ s`` (0 included; PLMS, DDIM, DPM-Solver++(2M)), ``one_step`` once; a start of
    0 calls it never. The same count in every execution (``CallCounter.evals`` per scan)."""
    if sampler == "one_step":
        return sum(1 for s in starts if int(s) > 0)
    return sum(int((grid <= int(s)).sum()) for s in starts if int(s) > 0)


# ----------------------------------------------------------------------------- denoising

#: the per-chain samplers of the samplers that are not a MONAI scheduler's own ``step``
CHAIN_SAMPLERS = {"dpmpp_2m": DPMSolverPP2M, "one_step": OneStepChains}


def next_grid_step(grid: np.ndarray, k: int) -> int:
    """The timestep after ``grid[k]`` (descending grid), −1 after the last (the clean sample).

    DDIM steps to this timestep. MONAI's ``DDIMScheduler.step`` steps to ``t − T // n_steps`` instead,
    which is not the next timestep of its own grid when ``T / n_steps`` is not an integer (25 steps:
    999 → 959 instead of 957; 10 steps: 999 → 899 instead of 888), so the chain would be labelled with
    the wrong noise level.
    """
    return int(grid[k + 1]) if k + 1 < len(grid) else -1


def sampler_of(scheduler: PNDMScheduler | DDIMScheduler, sampler: str | None) -> str:
    """``sampler``, or the scheduler's own (``plms`` for PNDM, else ``ddim``) when None."""
    return sampler or ("plms" if isinstance(scheduler, PNDMScheduler) else "ddim")


@torch.no_grad()
def denoise_latents(
    unet: torch.nn.Module,
    scheduler: PNDMScheduler | DDIMScheduler,
    z0: torch.Tensor,
    starts: Sequence[int],
    noise: torch.Tensor,
    execution: Execution = "batched",
    bf16: bool = False,
    unet_batch: int | None = None,
    counter: CallCounter | None = None,
    sampler: str | None = None,
) -> torch.Tensor:
    """Noise ``z0`` to each start and denoise back to 0 (paper 000 §2.2).

    Args:
        unet: ε-prediction UNet (eval mode).
        scheduler: inference scheduler (PLMS or DDIM, ``set_timesteps`` done); never mutated.
        z0: scaled, padded latents ``(B, C, *s)``.
        starts: grid start timesteps ``(n,)`` (see :func:`snap_to_grid`); 0 = no noise.
        noise: ``(B, n, C, *s)``; chain ``(b, i)`` uses ``noise[b, i]`` in every execution.
        execution: ``"batched"``, ``"sequential"`` (fresh history per chain) or ``"reference"``.
        unet_batch: max chains per UNet call (memory bound); None = all active chains at once.
        sampler: ``plms`` | ``ddim`` | ``dpmpp_2m`` | ``one_step`` (``build_inference_scheduler``'s);
            None: the scheduler's own (PLMS or DDIM). For ``dpmpp_2m`` and ``one_step`` the
            ``sequential`` and ``reference`` executions are the same: a fresh history per chain.
    Returns:
        denoised latents ``(B, n, C, *s)`` fp32 (still scaled and padded).
    """
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; one of {EXECUTIONS}")
    B, n = noise.shape[:2]
    if tuple(noise.shape[2:]) != tuple(z0.shape[1:]) or noise.shape[0] != z0.shape[0] or n != len(starts):
        raise ValueError(f"noise {tuple(noise.shape)} does not match z0 {tuple(z0.shape)} and {len(starts)} starts")
    z0 = z0.float()
    noise = noise.to(device=z0.device, dtype=torch.float32)
    grid = inference_grid(scheduler)
    sampler = sampler_of(scheduler, sampler)
    if execution == "batched":
        return _denoise_batched(unet, scheduler, z0, starts, noise, grid, bf16, unet_batch, counter, sampler)
    if sampler in CHAIN_SAMPLERS:
        return _denoise_per_start(unet, scheduler, z0, starts, noise, grid, bf16, unet_batch, counter, sampler)
    return _denoise_sequential(unet, scheduler, z0, starts, noise, grid, execution == "reference", bf16, unet_batch, counter)


def _denoise_batched(unet, scheduler, z0, starts, noise, grid, bf16, unet_batch, counter, sampler) -> torch.Tensor:
    B, n = noise.shape[:2]
    shape = tuple(z0.shape[1:])
    chain_start = torch.tensor(list(starts) * B, dtype=torch.long)  # chain b*n + i starts at starts[i]
    x = noised_chains(scheduler, z0.repeat_interleave(n, dim=0), noise.reshape(B * n, *shape), chain_start.to(z0.device))
    plms = sampler == "plms"
    history = PLMSHistory(scheduler, B * n, shape, z0.device) if plms else None
    chain_sampler = CHAIN_SAMPLERS[sampler](scheduler, B * n, shape, z0.device) if sampler in CHAIN_SAMPLERS else None
    for k, s in enumerate(grid):
        active = (chain_start >= int(s)) & (chain_start > 0)
        if chain_sampler is not None and chain_sampler.single_step:
            active &= chain_start == int(s)
        chains = active.nonzero().squeeze(1)
        if chains.numel() == 0:
            continue
        idx = chains.to(z0.device)
        eps = predict_noise(unet, x[idx], int(s), bf16, unet_batch, counter)
        if plms:
            x[idx] = history.step(eps, int(s), x[idx], chains)
        elif chain_sampler is not None:
            x[idx] = chain_sampler.step(eps, int(s), x[idx], chains)
        else:  # DDIM is stateless: one step for all active chains (η = 0, deterministic)
            x[idx] = ddim_step(scheduler, eps, int(s), next_grid_step(grid, k), x[idx])
    return x.reshape(B, n, *shape)


def _denoise_per_start(unet, scheduler, z0, starts, noise, grid, bf16, unet_batch, counter, sampler) -> torch.Tensor:
    """One start at a time (ascending), each with a fresh :data:`CHAIN_SAMPLERS` state for the batch's chains."""
    B, n = noise.shape[:2]
    out = torch.empty_like(noise)
    chains = torch.arange(B)
    for i in sorted(range(n), key=lambda k: starts[k]):
        t0 = int(starts[i])
        if t0 == 0:
            out[:, i] = z0
            continue
        chain_sampler = CHAIN_SAMPLERS[sampler](scheduler, B, tuple(z0.shape[1:]), z0.device)
        x = scheduler.add_noise(original_samples=z0, noise=noise[:, i], timesteps=torch.full((B,), t0, dtype=torch.long))
        for s in grid[grid <= t0][: 1 if chain_sampler.single_step else None]:
            eps = predict_noise(unet, x, int(s), bf16, unet_batch, counter)
            x = chain_sampler.step(eps, int(s), x, chains)
        out[:, i] = x
    return out


def _denoise_sequential(unet, scheduler, z0, starts, noise, grid, leaky, bf16, unet_batch, counter) -> torch.Tensor:
    B, n = noise.shape[:2]
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(scheduler.num_inference_steps)  # one fresh state per batch, as the reference
    out = torch.empty_like(noise)
    for i in sorted(range(n), key=lambda k: starts[k]):  # ascending starts, as the reference loop
        t0 = int(starts[i])
        if t0 == 0:
            out[:, i] = z0
            continue
        if not leaky:
            sch.set_timesteps(scheduler.num_inference_steps)  # resets ets / counter: fresh history
        x = sch.add_noise(original_samples=z0, noise=noise[:, i], timesteps=torch.full((B,), t0, dtype=torch.long))
        chain_grid = grid[grid <= t0]
        for k, s in enumerate(chain_grid):
            eps = predict_noise(unet, x, int(s), bf16, unet_batch, counter)
            if isinstance(sch, PNDMScheduler):
                x, _ = sch.step(eps, int(s), x)
            else:
                x = ddim_step(sch, eps, int(s), next_grid_step(chain_grid, k), x)
        out[:, i] = x
    return out


# ----------------------------------------------------------------------------- encode / decode


@dataclass
class Reconstructions:
    """Denoised latents of every chain of a batch of scans.

    ``latents[b, i]`` is ``ẑ_{0,t}`` for scan ``b`` started at ``starts[i]``: ``(B, n, C, *s)``,
    unscaled (divided by ``scale_factor``) and cropped to the first stage's latent grid;
    ``z`` is the encoded input ``(B, C, *s)``.
    """

    starts: tuple[int, ...]
    latents: torch.Tensor
    z: torch.Tensor
    calls: CallCounter


@torch.no_grad()
def encode_latents(first_stage: torch.nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Quantised latent ``z = E(x)``: ``(B, C_in, *S) -> (B, C, *S/f)`` fp32 (one encode per scan)."""
    return encode(first_stage, x, bf16)


@torch.no_grad()
def reconstruct(
    first_stage: torch.nn.Module,
    unet: torch.nn.Module,
    scheduler: PNDMScheduler | DDIMScheduler,
    x: torch.Tensor,
    starts: Sequence[int],
    seeds: Sequence[int],
    scale_factor: float = 1.0,
    multiple: int = 1,
    execution: Execution = "batched",
    bf16: bool = False,
    unet_batch: int | None = None,
    noise: torch.Tensor | None = None,
    encode_bf16: bool | None = None,
    sampler: str | None = None,
) -> Reconstructions:
    """Encode ``x (B, C_in, *S)`` once and reconstruct its latent from every start (paper 000 §2.2).

    ``noise`` (``(B, n, C, *s_padded)``) overrides the seeded noise of :func:`make_noise`;
    ``bf16`` is the UNet's precision, ``encode_bf16`` the encoder's (default: ``bf16``); ``sampler``:
    as :func:`denoise_latents`.
    """
    z = encode_latents(first_stage, x, bf16 if encode_bf16 is None else encode_bf16)
    z_pad, spatial = pad_latent(z * scale_factor, multiple)
    if noise is None:
        noise = make_noise(tuple(z_pad.shape[1:]), len(starts), seeds)
    calls = CallCounter()
    lat = denoise_latents(unet, scheduler, z_pad, starts, noise, execution, bf16, unet_batch, calls, sampler)
    B, n = lat.shape[:2]
    lat = crop_latent(lat.flatten(0, 1), spatial) / scale_factor
    return Reconstructions(tuple(int(s) for s in starts), lat.reshape(B, n, *lat.shape[1:]), z, calls)


@torch.no_grad()
def decode_chains(
    first_stage: torch.nn.Module,
    latents: torch.Tensor,
    requantize: bool,
    bf16: bool,
    batch: int = 4,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Decode latents ``(K, C, *s)`` in chunks of ``batch``: yields ``(offset, images (k, C_in, *S))`` fp32."""
    for off in range(0, latents.shape[0], batch):
        yield off, decode(first_stage, latents[off : off + batch], requantize=requantize, bf16=bf16)
