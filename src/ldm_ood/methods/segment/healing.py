"""Masked "healing" of a latent with the DDPM's reverse process (paper 001 §3).

Starting from ``z'_{t_s} ~ q(z_{t_s} | z_0)`` at ``t_s = start_t`` (500), every reverse step is

    paper form (``healing="paper"``):   z'_{t-1} ~ p_θ(z_{t-1} | m ⊙ z'_t + (1 - m) ⊙ z_0)

so the masked (anomalous, ``m = 1``) latent elements are denoised a little at each step while the
rest is held at the original ``z_0``. The result is composed once more, ``m ⊙ z'_0 + (1 - m) ⊙ z_0``
(with ``torch.where``), so every unmasked element ends *bit-exactly* equal to ``z_0``.

``healing="repaint"`` (beyond the paper, after RePaint, Lugmayr et al. 2022): the known region is fed
at the noise level of the step instead, ``m ⊙ z'_t + (1 - m) ⊙ z_t^known`` with a fresh
``z_t^known ~ q(z_t | z_0)``, so the network always sees a consistently noised input.

Samplers (timesteps are MONAI's 0-indexed t; the step at ``t = 0`` returns the clean latent):

* ``"ddpm"`` — ancestral sampling with MONAI ``DDPMScheduler.step`` (fixed-small variance β̃_t) at
  every t = start_t, start_t - 1, ..., 0: ``start_t + 1`` UNet calls (variants a, b, c).
* ``"ddim"`` — deterministic DDIM (η = 0) on ``num_steps`` timesteps evenly spaced from start_t down
  to 0 (``round(linspace(start_t, 0, num_steps))``): ``num_steps`` UNet calls (variant d, 50 steps).
  MONAI's ``DDIMScheduler.step`` derives the previous timestep from a uniform ratio ``T // n`` over
  the whole chain, which cannot start at 500 with exactly 50 steps, so :func:`ddim_step` is the same
  update with an explicit previous timestep (tested against MONAI's on a uniform grid).

Variant (a) of paper 001 Table 1 is this process with ``m = 1`` everywhere (no masking).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from ...models.diffusion import crop_latent, epsilon, pad_latent
from ...samplers.ddim import ddim_step
from ...samplers.ddpm import ddpm_step
from ...samplers.noise import Generators, q_sample, randn_per_item

Sampler = Literal["ddpm", "ddim"]
Healing = Literal["paper", "repaint"]


def healing_timesteps(start_t: int, num_steps: int | None = None) -> list[int]:
    """Timesteps of the reverse process, descending to 0.

    ``num_steps=None`` -> every t from ``start_t`` to 0 (DDPM); else ``num_steps`` distinct timesteps
    evenly spaced from ``start_t`` to 0 (DDIM), e.g. ``(500, 50) -> [500, 490, 480, ..., 10, 0]``.
    """
    if start_t < 0:
        raise ValueError(f"start_t must be >= 0, got {start_t}")
    if num_steps is None or num_steps >= start_t + 1:
        return list(range(start_t, -1, -1))
    if num_steps < 2:
        return [start_t] if num_steps == 1 else []
    vals = torch.linspace(start_t, 0, num_steps, dtype=torch.float64).round().long().tolist()
    out: list[int] = []
    for v in vals:
        if not out or v < out[-1]:
            out.append(int(v))
    return out


@torch.no_grad()
def heal(
    unet: torch.nn.Module,
    z0: torch.Tensor,
    mask: torch.Tensor | None,
    scheduler,
    timesteps: Sequence[int],
    *,
    sampler: Sampler = "ddpm",
    healing: Healing = "paper",
    multiple: int = 1,
    generator: Generators = None,
    bf16: bool = False,
    callback=None,
) -> torch.Tensor:
    """Heal the masked region of ``z0`` with the reverse process (paper 001 §3).

    Args:
        unet: ε-prediction network called as ``unet(x, timesteps=t)``.
        z0: clean, scaled latents ``(B, C, *s)``.
        mask: ``(B, *s)`` or ``(B, 1, *s)``, true/1 where the latent is anomalous and gets healed;
            ``None`` = everywhere (variant a: plain reverse steps from ``timesteps[0]``).
        scheduler: MONAI ``DDPMScheduler`` (``build_ddpm_scheduler``; its ᾱ are used by DDIM too).
        timesteps: descending, ending at 0, from :func:`healing_timesteps`. ``"ddpm"`` needs every t.
        sampler: ``"ddpm"`` (ancestral, MONAI step) or ``"ddim"`` (deterministic).
        healing: ``"paper"`` (known region fed as z_0) or ``"repaint"`` (known region noised to level t).
        multiple: latents are zero-padded to multiples of this for the UNet (padding is never healed).
        generator: one generator, or one per image.
        bf16: UNet under bf16 autocast (the scheduler arithmetic stays float32).
        callback: optional ``callback(step_index, t)`` after each UNet call (progress).

    Returns:
        Healed latents ``(B, C, *s)`` float32; ``== z0`` bit-exactly wherever ``mask`` is false.
    """
    ts = [int(t) for t in timesteps]
    if not ts or ts[-1] != 0 or any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending and end at 0, got {ts[:3]}...{ts[-3:]}")
    if sampler == "ddpm" and any(a - b != 1 for a, b in zip(ts, ts[1:])):
        raise ValueError("the DDPM sampler steps t -> t-1: pass every timestep (use 'ddim' to skip)")
    if sampler not in ("ddpm", "ddim") or healing not in ("paper", "repaint"):
        raise ValueError(f"unknown sampler {sampler!r} or healing {healing!r}")
    z0 = z0.float()
    if mask is None:
        mask = torch.ones((z0.shape[0], 1, *z0.shape[2:]), dtype=torch.bool, device=z0.device)
    elif mask.dim() == z0.dim() - 1:
        mask = mask.unsqueeze(1)
    if mask.shape[0] != z0.shape[0] or mask.shape[2:] != z0.shape[2:]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match latents {tuple(z0.shape)}")
    zp, spatial = pad_latent(z0, multiple)
    mp = pad_latent(mask.float(), multiple)[0] > 0.5  # padding is "known" (never healed)
    B, dev = zp.shape[0], zp.device
    gens = generator if generator is None or isinstance(generator, torch.Generator) else list(generator)

    z = q_sample(scheduler, zp, ts[0], randn_per_item(tuple(zp.shape), gens, dev))
    for i, t in enumerate(ts):
        if healing == "paper":
            known = zp
        else:
            known = z if i == 0 else q_sample(scheduler, zp, t, randn_per_item(tuple(zp.shape), gens, dev))
        x_in = torch.where(mp, z, known)
        eps = epsilon(unet, x_in, torch.full((B,), t, device=dev, dtype=torch.long), bf16)
        if sampler == "ddpm":
            z = ddpm_step(scheduler, eps, t, x_in, gens)
        else:
            z = ddim_step(scheduler, eps, t, ts[i + 1] if i + 1 < len(ts) else -1, x_in)
        if callback is not None:
            callback(i, t)
    return crop_latent(torch.where(mp, z, zp), spatial)
