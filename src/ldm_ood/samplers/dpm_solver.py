"""DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data prediction, one history per chain.

Lu et al. 2022, *DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models*,
Algorithm 2. With ``α_t = sqrt(ᾱ_t)``, ``σ_t = sqrt(1 − ᾱ_t)``, ``λ_t = log(α_t / σ_t)`` and the data
prediction ``x_θ(x, t) = (x − σ_t ε_θ(x, t)) / α_t`` (:func:`.one_step.predict_x0`), a step from grid
time ``t_{i−1}`` to ``t_i`` with ``h_i = λ_{t_i} − λ_{t_{i−1}}`` is

    x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) D_i

where the first step of a chain is first order, ``D_1 = x_θ(x_{t_0}, t_0)`` (DDIM), and every later
step uses the chain's previous data prediction, ``r_i = h_{i−1} / h_i``:

    D_i = (1 + 1 / (2 r_i)) x_θ(x_{t_{i−1}}, t_{i−1}) − (1 / (2 r_i)) x_θ(x_{t_{i−2}}, t_{i−2}).

The grid is the inference scheduler's timesteps (descending); after its last timestep comes the clean
end, ``ᾱ = final_alpha_cumprod``. When that is 1 (``σ = 0``, ``λ = ∞``) the last step is taken in
first order, ``x = x_θ(x_{t_{M−1}}, t_{M−1})`` (the limit of the update as ``h → ∞``; the second-order
correction is not defined there), as diffusers does with ``final_sigmas_type="zero"``.

A chain may start at any grid timestep; each keeps its previous data prediction and timestep, so
chains started at different times advance together through one UNet call per grid step.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .one_step import predict_x0


def half_log_snr(alpha_cumprod: float) -> float:
    """``λ = log(α / σ) = ½ log(ᾱ / (1 − ᾱ))``; ``+inf`` at ``ᾱ = 1``."""
    if alpha_cumprod >= 1.0:
        return math.inf
    return 0.5 * (math.log(alpha_cumprod) - math.log1p(-alpha_cumprod))


class DPMSolverPP2M:
    """DPM-Solver++(2M) with one history per chain (module docstring).

    The same interface as :class:`~ldm_ood.samplers.plms.PLMSHistory`: ``step(eps, timestep, sample,
    chains)`` moves the chains ``chains`` from grid timestep ``timestep`` to the next one.

    Args:
        scheduler: an inference scheduler whose ``timesteps`` are the grid and whose
            ``alphas_cumprod`` / ``final_alpha_cumprod`` the noise levels (``build_inference_scheduler(...,
            "dpmpp_2m", n)``); read only.
        n_chains: number of chains ``n``.
        shape: shape of one chain's latent ``(C, *s)``.
    """

    single_step = False

    def __init__(self, scheduler, n_chains: int, shape: Sequence[int], device: torch.device | str = "cpu"):
        self.alphas_cumprod = scheduler.alphas_cumprod
        ab = scheduler.alphas_cumprod.double().tolist()
        final = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
        grid = sorted({int(t) for t in scheduler.timesteps.tolist()}, reverse=True)
        #: the noise level ``ᾱ`` of every grid timestep and of the clean end (key -1)
        self.level = {t: ab[t] for t in grid} | {-1: final}
        #: the grid timestep after each one (-1: the clean end)
        self.next = dict(zip(grid, grid[1:] + [-1]))
        self.prev_x0 = torch.zeros((n_chains, *shape), dtype=torch.float32, device=device)
        self.prev_t = torch.full((n_chains,), -1, dtype=torch.long)  # -1: no step taken yet

    def coefficients(self, t: int) -> tuple[float, float, float]:
        """``(σ_next / σ_t, α_next (e^{−h} − 1), h)`` of the step from grid timestep ``t`` (float64)."""
        ab_t, ab_n = self.level[t], self.level[self.next[t]]
        h = half_log_snr(ab_n) - half_log_snr(ab_t)
        if math.isinf(h):  # to σ = 0: x = x_θ
            return 0.0, -1.0 * math.sqrt(ab_n), h
        return math.sqrt((1 - ab_n) / (1 - ab_t)), math.sqrt(ab_n) * math.expm1(-h), h

    def step(self, eps: torch.Tensor, timestep: int, sample: torch.Tensor, chains: torch.Tensor) -> torch.Tensor:
        """One step of the chains ``chains`` (long ``(k,)``), all at grid timestep ``timestep``.

        Args:
            eps: UNet output ``(k, C, *s)`` for ``sample`` at ``timestep``.
            sample: current latents ``(k, C, *s)``.
        Returns:
            the latents at the next grid timestep (or clean after the last) ``(k, C, *s)``.
        """
        t = int(timestep)
        if t not in self.next:
            raise ValueError(f"timestep {t} is not on the solver's grid {sorted(self.next, reverse=True)}")
        x0 = predict_x0(self.alphas_cumprod, eps, t, sample)
        ratio, phi, h = self.coefficients(t)
        d = x0
        prev_t = self.prev_t[chains]
        second = (prev_t >= 0).nonzero().squeeze(1)
        if second.numel() and not math.isinf(h):
            lam_t = half_log_snr(self.level[t])
            h_prev = torch.tensor([lam_t - half_log_snr(self.level[int(p)]) for p in prev_t[second]], dtype=torch.float64)
            half_inv_r = (0.5 * h / h_prev).to(torch.float32).reshape(-1, *([1] * (sample.ndim - 1))).to(sample.device)
            d = x0.clone()
            d[second] = (1 + half_inv_r) * x0[second] - half_inv_r * self.prev_x0[chains[second].to(sample.device)]
        self.prev_x0[chains.to(sample.device)] = x0
        self.prev_t[chains] = t
        return ratio * sample - phi * d
