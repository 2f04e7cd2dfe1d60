"""The single-step estimate of the clean latent from one ε-prediction (no chain), and its per-chain form."""

from __future__ import annotations

import torch


def predict_x0(alphas_cumprod: torch.Tensor, eps: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
    """``x̂_0 = (z_t − sqrt(1 − ᾱ_t) ε) / sqrt(ᾱ_t)`` (DDPM Eq. 15; DDIM's predicted x_0 and the data
    prediction of DPM-Solver++): ``eps``, ``sample`` ``(k, C, *s)`` at timestep ``t``; fp32 out."""
    ab_t = alphas_cumprod.to(sample.device, torch.float32)[t]
    return (sample - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()


class OneStepChains:
    """Each chain jumps from its start ``t`` to ``x̂_0`` with one UNet call (``visits`` only its start).

    The same interface as :class:`~ldm_ood.samplers.plms.PLMSHistory`; no state.
    """

    single_step = True

    def __init__(self, scheduler, n_chains: int = 0, shape=(), device: torch.device | str = "cpu"):
        self.alphas_cumprod = scheduler.alphas_cumprod

    def step(self, eps: torch.Tensor, timestep: int, sample: torch.Tensor, chains: torch.Tensor | None = None
             ) -> torch.Tensor:
        """``x̂_0`` of the chains ``chains`` (``(k,)``) at ``timestep``: ``eps``, ``sample`` ``(k, C, *s)``."""
        return predict_x0(self.alphas_cumprod, eps, int(timestep), sample)
