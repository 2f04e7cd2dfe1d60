"""Training losses of the three stages, each a small function on explicit tensors.

First stage (``FirstStageConfig``):

* VQ-GAN, paper 000 §2.1/§3.2: L2 reconstruction + VQ loss (MONAI ``VQVAE``'s quantization loss:
  β·commitment, the codebook itself follows an EMA) + ``perceptual_weight`` · LPIPS (2.5D)
  + ``adversarial_weight`` · least-squares patch-adversarial loss + ``spectral_weight`` · Jukebox
  spectral loss; discriminator loss ½ (real + fake).
* VQ-VAE, paper 001 §2.1: ‖x − x̂‖ (``reconstruction_loss="l1"``) + codebook (EMA) + β·commitment.

Latent DDPM, paper 000 §2.1 / paper 001 §2.2: L_simple = E‖ε − ε_θ(z_t, t)‖² (mean over elements).

Latent transformer, paper 000 §3.2: next-token cross-entropy over codebook indices.

Every loss is computed in float32 (inputs produced under bf16 autocast are upcast first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from monai.losses import JukeboxLoss, PatchAdversarialLoss

from ..config import FirstStageConfig

_ADV = PatchAdversarialLoss(criterion="least_squares", reduction="mean")


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Mean squared (``"l2"``, paper 000) or mean absolute (``"l1"``, paper 001) error.

    ``x, x_hat``: ``(B, C, *S)``; returns a scalar.
    """
    x, x_hat = x.float(), x_hat.float()
    if kind == "l2":
        return F.mse_loss(x_hat, x)
    if kind == "l1":
        return F.l1_loss(x_hat, x)
    raise ValueError(f"unknown reconstruction_loss {kind!r}; use 'l2' or 'l1'")


def spectral_loss(x: torch.Tensor, x_hat: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """MONAI ``JukeboxLoss``: mean over (B, C, *S) of (|FFT(x)| − |FFT(x̂)|)² with ortho norm."""
    return JukeboxLoss(spatial_dims=spatial_dims)(x_hat.float(), x.float())


def _logits(disc_out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The patch logits: the last element of ``PatchDiscriminator``'s list of features."""
    out = disc_out[-1] if isinstance(disc_out, (list, tuple)) else disc_out
    return out.float()


def generator_adversarial_loss(fake_logits: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Least-squares generator loss mean((a(D(x̂)) − 1)²), a = LeakyReLU(0.05) (MONAI ``PatchAdversarialLoss``)."""
    return _ADV(_logits(fake_logits), target_is_real=True, for_discriminator=False)


def discriminator_loss(
    real_logits: torch.Tensor | list[torch.Tensor], fake_logits: torch.Tensor | list[torch.Tensor]
) -> torch.Tensor:
    """½ (mean((a(D(x)) − 1)²) + mean(a(D(x̂))²)), a = LeakyReLU(0.05): least-squares discriminator loss."""
    real = _ADV(_logits(real_logits), target_is_real=True, for_discriminator=True)
    fake = _ADV(_logits(fake_logits), target_is_real=False, for_discriminator=True)
    return 0.5 * (real + fake)


def diffusion_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L_simple (paper 000 eq. after (2)): mean over all elements of (ε − ε_θ)²."""
    return F.mse_loss(eps_pred.float(), eps.float())


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token prediction. ``logits (B, L, K)``, ``targets (B, L)`` long."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets)


@dataclass
class GeneratorLoss:
    """Weighted first-stage generator loss and its unweighted terms (for logging)."""

    total: torch.Tensor
    terms: dict[str, float]


def first_stage_generator_loss(
    cfg: FirstStageConfig,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    quantization_loss: torch.Tensor,
    spatial_dims: int,
    fake_logits: torch.Tensor | list[torch.Tensor] | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> GeneratorLoss:
    """recon + vq + w_p·perceptual + w_adv·adversarial + w_s·spectral (terms with weight 0 skipped).

    ``fake_logits`` are the discriminator's outputs on ``x_hat`` (None: no adversarial term, e.g.
    during warm-up); ``perceptual(x, x_hat)`` returns the scalar LPIPS (None: no perceptual term).
    """
    rec = reconstruction_loss(x, x_hat, cfg.reconstruction_loss)
    vq = quantization_loss.float().mean()
    total = rec + vq
    terms = {"recon": rec.item(), "vq": vq.item()}
    if cfg.perceptual_weight > 0 and perceptual is not None:
        p = perceptual(x, x_hat)
        total = total + cfg.perceptual_weight * p
        terms["perceptual"] = p.item()
    if cfg.spectral_weight > 0:
        s = spectral_loss(x, x_hat, spatial_dims)
        total = total + cfg.spectral_weight * s
        terms["spectral"] = s.item()
    if cfg.adversarial_weight > 0 and fake_logits is not None:
        a = generator_adversarial_loss(fake_logits)
        total = total + cfg.adversarial_weight * a
        terms["adv_g"] = a.item()
    return GeneratorLoss(total=total, terms=terms)
