"""One ancestral DDPM step through MONAI's ``DDPMScheduler``, per image when each has its own generator."""

from __future__ import annotations

import torch

from .noise import Generators


def ddpm_step(scheduler, eps: torch.Tensor, t: int, sample: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One ancestral step ``t -> t - 1`` with MONAI ``DDPMScheduler.step`` (one call per image when
    ``generator`` is a list, so each image draws from its own generator)."""
    if generator is None or isinstance(generator, torch.Generator):
        return scheduler.step(eps, t, sample, generator=generator)[0]
    return torch.cat(
        [scheduler.step(eps[i : i + 1], t, sample[i : i + 1], generator=g)[0] for i, g in enumerate(generator)]
    )
