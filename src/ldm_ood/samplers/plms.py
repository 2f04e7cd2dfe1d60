"""PLMS with one history per chain (paper 000 §2.2 reconstructions from many starting points at once)."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.schedulers import PNDMScheduler


class PLMSHistory:
    """Pseudo-linear multistep (PLMS) update with one history per chain (Liu et al. 2022).

    Reproduces ``monai.networks.schedulers.PNDMScheduler.step_plms`` with ``skip_prk_steps=True``
    exactly, vectorised over chains: ``counter`` (steps taken), ``ets`` (last ≤ 4 ε, newest first)
    and ``cur_sample`` are stored per chain instead of on the scheduler object.

    Args:
        scheduler: a PLMS scheduler (``build_inference_scheduler(..., "plms", n)``); read only.
        n_chains: number of chains ``n``.
        shape: shape of one chain's latent ``(C, *s)``.
    """

    def __init__(self, scheduler: PNDMScheduler, n_chains: int, shape: Sequence[int], device: torch.device | str = "cpu"):
        if not scheduler.skip_prk_steps:
            raise ValueError("PLMSHistory implements PNDMScheduler(skip_prk_steps=True) only")
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.final_alpha_cumprod = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32, device=device)
        self.ratio = scheduler.num_train_timesteps // scheduler.num_inference_steps
        self.counter = torch.zeros(n_chains, dtype=torch.long)
        self.ets = torch.zeros((n_chains, 4, *shape), dtype=torch.float32, device=device)
        self.cur_sample = torch.zeros((n_chains, *shape), dtype=torch.float32, device=device)

    def prev_sample(self, sample: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor) -> torch.Tensor:
        """PNDM formula (9) (MONAI ``_get_prev_sample``, ε-prediction): ``x_t → x_{t_prev}``."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        b_prev = 1 - a_prev
        sample_coeff = (a_prev / a_t) ** 0.5
        denom = a_t * b_prev ** (0.5) + (a_t * b_t * a_prev) ** (0.5)
        return sample_coeff * sample - (a_prev - a_t) * eps / denom

    def step(self, eps: torch.Tensor, timestep: int, sample: torch.Tensor, chains: torch.Tensor) -> torch.Tensor:
        """One PLMS step of the chains ``chains`` (long ``(k,)``), all at grid timestep ``timestep``.

        Args:
            eps: UNet output ``(k, C, *s)`` for ``sample`` at ``timestep``.
            sample: current latents ``(k, C, *s)``.
        Returns:
            the previous sample ``(k, C, *s)``.
        """
        s = int(timestep)
        counter = self.counter[chains]
        out = torch.empty_like(sample)
        for bucket in range(5):
            sel = (counter >= 4) if bucket == 4 else (counter == bucket)
            if not bool(sel.any()):
                continue
            j = sel.nonzero().squeeze(1)
            g = chains[j]
            e = eps[j]
            smp = sample[j]
            t, t_prev = s, s - self.ratio
            if bucket == 0:  # first step: Euler, remember x_t
                self.ets[g, 0] = e
                self.cur_sample[g] = smp
                model_output = e
            elif bucket == 1:  # second call: redo t+δ → t with the mean of both ε (history not appended)
                model_output = (e + self.ets[g, 0]) / 2
                smp = self.cur_sample[g]
                t, t_prev = s + self.ratio, s
            else:
                self.ets[g] = torch.cat([e.unsqueeze(1), self.ets[g, :3]], dim=1)
                h = self.ets[g]
                if bucket == 2:
                    model_output = (3 * h[:, 0] - h[:, 1]) / 2
                elif bucket == 3:
                    model_output = (23 * h[:, 0] - 16 * h[:, 1] + 5 * h[:, 2]) / 12
                else:
                    model_output = (1 / 24) * (55 * h[:, 0] - 59 * h[:, 1] + 37 * h[:, 2] - 9 * h[:, 3])
            out[j] = self.prev_sample(smp, t, t_prev, model_output)
        self.counter[chains] += 1
        return out
