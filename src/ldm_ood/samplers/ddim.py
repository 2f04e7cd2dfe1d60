"""The deterministic DDIM update (Song et al. 2021, η = 0), used by paper 001's variant (d)."""

from __future__ import annotations

import torch

from .one_step import predict_x0


def ddim_step(scheduler, eps: torch.Tensor, t: int, t_prev: int, sample: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update (Song et al. 2021 Eq. 12, η = 0) from ``t`` to ``t_prev`` (< 0: clean).

    ``ẑ_0 = (z_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)``; ``z_{t_prev} = sqrt(ᾱ_prev) ẑ_0 + sqrt(1 - ᾱ_prev) ε``.
    """
    ab = scheduler.alphas_cumprod.to(sample.device, torch.float32)
    ab_prev = ab[t_prev] if t_prev >= 0 else torch.ones((), device=sample.device)
    x0 = predict_x0(scheduler.alphas_cumprod, eps, t, sample)
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
