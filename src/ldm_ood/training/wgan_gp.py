"""The WGAN-GP objective (Gulrajani et al. 2017, Algorithm 1), as f-AnoGAN trains its GAN (Schlegl et al. 2019 §2).

With critic D, real images ``x`` and generated ones ``x̃ = G(z)`` (``(B, 1, *grid)``):

* critic loss ``E[D(x̃)] − E[D(x)] + λ · GP``, ``GP = E[(‖∇_x̂ D(x̂)‖₂ − 1)²]`` at the interpolates
  ``x̂ = ε x + (1 − ε) x̃``, one ``ε ~ U[0, 1]`` per image (:func:`gradient_penalty`);
* generator loss ``−E[D(G(z))]``;
* the Wasserstein estimate ``E[D(x)] − E[D(x̃)]`` (what the critic maximises; the GAN phase's
  validation loss, lower = generated images closer to the real ones).

The penalty is always computed in float32 (bf16 autocast off): it differentiates through the critic twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor) -> torch.Tensor:
    """``mean_b (‖∇ D(x̂_b)‖₂ − 1)²`` at ``x̂ = eps · real + (1 − eps) · fake`` (``eps (B, 1, ...)``), with a
    graph (``create_graph``) so the penalty trains the critic."""
    with torch.autocast(device_type=real.device.type, enabled=False):
        x_hat = (eps * real.float() + (1.0 - eps) * fake.float()).requires_grad_(True)
        out = critic(x_hat).float()
        (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
        return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


@dataclass
class CriticLoss:
    """``total = d_fake − d_real + λ · gp`` (tensors, ``total`` with its graph)."""

    total: torch.Tensor
    wasserstein: torch.Tensor  # d_real − d_fake
    gp: torch.Tensor

    def terms(self) -> dict[str, float]:
        return {"critic": self.total.item(), "wasserstein": self.wasserstein.item(), "gp": self.gp.item()}


def critic_loss(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                eps: torch.Tensor, gp_weight: float) -> CriticLoss:
    """The critic's WGAN-GP loss on a batch (module docstring); ``fake`` is detached from G."""
    fake = fake.detach()
    d_real, d_fake = critic(real).float().mean(), critic(fake).float().mean()
    gp = gradient_penalty(critic, real, fake, eps)
    return CriticLoss(d_fake - d_real + gp_weight * gp, (d_real - d_fake).detach(), gp.detach())


def generator_loss(critic: Callable[[torch.Tensor], torch.Tensor], fake: torch.Tensor) -> torch.Tensor:
    """``−mean D(fake)``."""
    return -critic(fake).float().mean()
