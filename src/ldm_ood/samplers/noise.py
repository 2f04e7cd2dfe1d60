"""The forward process and the noise it draws: ``z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε``, seeded per scan."""

from __future__ import annotations

import zlib
from typing import Sequence

import torch

#: one generator per image (results independent of batching), a single one, or None
Generators = torch.Generator | Sequence[torch.Generator] | None


def q_sample(scheduler, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """``z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε`` (paper 001 §2.2)."""
    ab = scheduler.alphas_cumprod[t].to(z0.device, torch.float32)
    return ab.sqrt() * z0 + (1 - ab).sqrt() * noise


def noised_chains(scheduler, z0: torch.Tensor, noise: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """``add_noise`` per chain; a start of 0 keeps ``z0`` (no noise)."""
    x = scheduler.add_noise(original_samples=z0, noise=noise, timesteps=starts)
    keep = starts == 0
    if bool(keep.any()):
        x[keep] = z0[keep]
    return x


def make_noise(latent_shape: Sequence[int], n_starts: int, seeds: Sequence[int]) -> torch.Tensor:
    """Per-scan, per-chain Gaussian noise ``(B, n_starts, *latent_shape)`` (fp32, CPU).

    Scan ``b`` draws from ``torch.Generator().manual_seed(seeds[b])``, so its noise does not depend
    on which other scans share its batch (scores are reproducible and resumable).
    """
    out = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        out.append(torch.randn((n_starts, *latent_shape), generator=g))
    return torch.stack(out)


def randn_per_item(shape: tuple[int, ...], generators: Generators, device: torch.device | str) -> torch.Tensor:
    """Standard normal ``(B, *shape[1:])``; with one generator per item each item's draws are its own.

    Per-item generators make results independent of how cases are grouped into batches (resume).
    """
    if generators is None or isinstance(generators, torch.Generator):
        return torch.randn(shape, generator=generators, device=device)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device) for g in generators])


def case_seed(seed: int, case_id: str) -> int:
    """The noise seed of one scan: from the method's ``seed`` and the case id only, so a scan draws the
    same noise whatever batch it is in and whether the run was resumed."""
    return (int(seed) * 1_000_003 + zlib.crc32(case_id.encode())) % (2**63)
