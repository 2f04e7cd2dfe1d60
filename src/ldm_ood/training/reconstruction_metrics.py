"""First-stage quality on the validation split: PSNR, SSIM and codebook usage, per validation epoch.

Logged as columns of ``first_stage/metrics.csv`` (``val_psnr``, ``val_ssim``, ``val_perplexity``,
``val_dead_codes``) so a first stage that barely reconstructs, or that has collapsed onto a few codes
(every slice encoded by one code, which caps every latent model trained on it), shows in the record
of its training, epoch by epoch.

* PSNR per image: ``10 log10(R² / MSE(x, x̂))`` with data range ``R = 1`` (images are in [0, 1]),
  averaged over images; an exact reconstruction is capped at :data:`PSNR_CAP` dB.
* SSIM per image: MONAI's :func:`~monai.metrics.compute_ssim_and_cs` (Gaussian window, σ = 1.5,
  K1 = 0.01, K2 = 0.03), averaged over images; the window shrinks to fit small grids.
* Codebook usage over all validation latents: with ``p_k`` the fraction of latent positions assigned
  code ``k``, the perplexity ``exp(-Σ p_k log p_k)`` (1 = collapsed onto one code, ``K`` = every code
  used equally) and the number of dead codes (``p_k = 0``).
"""

from __future__ import annotations

import math

import torch
from monai.metrics.regression import compute_ssim_and_cs

#: PSNR of an exact reconstruction (MSE 0), in dB
PSNR_CAP = 100.0

#: metrics.csv columns, in order
COLUMNS = ("val_psnr", "val_ssim", "val_perplexity", "val_dead_codes")


def psnr(x: torch.Tensor, x_hat: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image of ``(B, C, *S)`` pairs -> ``(B,)`` (float64), capped at :data:`PSNR_CAP`."""
    mse = (x.double() - x_hat.double()).pow(2).flatten(1).mean(1)
    out = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-300))
    return out.clamp(max=PSNR_CAP)


def ssim(x: torch.Tensor, x_hat: torch.Tensor, data_range: float = 1.0, win_size: int = 11) -> torch.Tensor:
    """Mean SSIM per image of ``(B, C, *S)`` pairs -> ``(B,)``, Gaussian window (odd, at most the smallest side)."""
    dims = x.ndim - 2
    side = min(x.shape[2:])
    w = max(1, min(win_size, side if side % 2 else side - 1))
    sigma = 1.5 * w / 11
    s, _ = compute_ssim_and_cs(x_hat.float(), x.float(), dims, [w] * dims, [sigma] * dims, data_range, "gaussian")
    return s.flatten(1).mean(1).double()


def codebook_usage(counts: torch.Tensor) -> tuple[float, int]:
    """``(perplexity, dead codes)`` of code counts ``(K,)`` (module docstring); ``(nan, K)`` without counts."""
    total = float(counts.sum())
    if total <= 0:
        return math.nan, int(counts.numel())
    p = counts.double() / total
    nz = p[p > 0]
    return float(torch.exp(-(nz * nz.log()).sum())), int((counts == 0).sum())


class ReconstructionStats:
    """Accumulates PSNR, SSIM and code counts over validation batches (:meth:`add`), reduced by :meth:`result`."""

    def __init__(self, num_codes: int):
        self.num_codes = num_codes
        self.reset()

    def reset(self) -> None:
        self.psnr_sum = self.ssim_sum = 0.0
        self.n = 0
        self.counts = torch.zeros(self.num_codes, dtype=torch.float64)

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, indices: torch.Tensor) -> None:
        """One batch: images ``x, x̂ (B, C, *S)`` and code indices ``(B, *s)``."""
        self.psnr_sum += float(psnr(x, x_hat).sum())
        self.ssim_sum += float(ssim(x, x_hat).sum())
        self.n += x.shape[0]
        self.counts += torch.bincount(indices.flatten().long().cpu(), minlength=self.num_codes).double()

    def totals(self) -> list[float]:
        """Sums to all-reduce across ranks: ``[psnr_sum, ssim_sum, n, *counts]``."""
        return [self.psnr_sum, self.ssim_sum, float(self.n), *self.counts.tolist()]

    def result(self, totals: list[float] | None = None) -> dict[str, float]:
        """The :data:`COLUMNS` from (reduced) ``totals`` (default: this process's); resets the sums."""
        t = self.totals() if totals is None else totals
        n = t[2]
        perplexity, dead = codebook_usage(torch.tensor(t[3:], dtype=torch.float64))
        self.reset()
        return {"val_psnr": t[0] / n if n else math.nan, "val_ssim": t[1] / n if n else math.nan,
                "val_perplexity": perplexity, "val_dead_codes": dead}
