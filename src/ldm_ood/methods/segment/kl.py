"""KL-divergence maps L_{t-1} of a latent DDPM (paper 001 §2.2 Eq. 1, §3 and §4.1).

For a clean latent ``z_0`` and a timestep ``t`` the forward process gives
``z_t = sqrt(ᾱ_t) z_0 + sqrt(1 - ᾱ_t) ε``. The per-element term of the variational bound

    L_{t-1} = D_KL( q(z_{t-1} | z_t, z_0)  ‖  p_θ(z_{t-1} | z_t) )

is a KL between two Gaussians. ``q`` has mean μ̃_t(z_t, z_0) and the posterior variance
β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t). ``p_θ`` uses the DDPM's *fixed* variance σ_t² = β̃_t (Ho et al.
2020's "fixed-small" choice, MONAI's ``DDPMVarianceType.FIXED_SMALL``, the same variance the
ancestral sampler in :mod:`.healing` uses) and the ε-parametrised mean
μ_θ = μ̃_t(z_t, ẑ_0) with ẑ_0 = (z_t - sqrt(1 - ᾱ_t) ε_θ) / sqrt(ᾱ_t). With equal variances the
log-determinant terms cancel and

    L_{t-1} = ‖μ̃ - μ_θ‖² / (2 β̃_t) = c_t · (ε - ε_θ)²,    c_t = β_t² / (2 β̃_t α_t (1 - ᾱ_t)),

computed per latent element from the noise difference (no cancellation between two large means, and
exactly 0 when the network predicts the true noise).

Timesteps are MONAI's 0-indexed ``t ∈ {0, ..., T-1}`` (index ``t`` is the paper's ``t + 1``). At
``t = 0`` β̃_0 = 0 and L_{t-1} is the decoder term L_0, not a KL, so every t here must be ≥ 1.

* :func:`kl_terms` — mean over the requested t of L_{t-1} per latent element, ``(B, C, *s)``.
* :func:`kl_map` — its mean over channels, the paper's ``v ∈ R^{h×w}`` (§3), ``(B, *s)``.
* :func:`image_kl_score` — mean over channels and positions; with t spread over the whole chain this
  is the image-level anomaly score of §4.1.
* :func:`chain_kl` — the per-image mean at every t, ``(B, n_t)``: the whole-chain score and a subsample's
  (:func:`subsample_score`) from one set of draws.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ...models.diffusion import crop_latent, epsilon, pad_latent
from ...samplers.noise import Generators, randn_per_item

#: evenly spaced t-values of the image-level score's cheaper subsample (the paper averages every t)
SUBSAMPLE_NUM_T = 50


def kl_t_values(t_range: tuple[int, int], num_t: int | None) -> list[int]:
    """Timesteps of ``t_range`` (inclusive): every t when ``num_t`` is None, else ``num_t`` evenly spaced.

    ``(400, 600), None`` -> 201 values (paper 001 §3); ``(400, 600), 50`` -> 50 values (§4.3 variant d).
    """
    lo, hi = int(t_range[0]), int(t_range[1])
    if lo < 1 or hi < lo:
        raise ValueError(f"KL t-range must satisfy 1 <= lo <= hi, got {t_range}")
    if num_t is None or num_t >= hi - lo + 1:
        return list(range(lo, hi + 1))
    if num_t == 1:
        return [round((lo + hi) / 2)]
    return sorted({int(round(v)) for v in torch.linspace(lo, hi, num_t, dtype=torch.float64).tolist()})


def score_t_values(num_train_timesteps: int, num_t: int | None = None) -> list[int]:
    """t-values of the image-level score: the whole Markov chain ``[1, T-1]`` (every t, or ``num_t`` of them)."""
    return kl_t_values((1, num_train_timesteps - 1), num_t)


def kl_coefficients(scheduler) -> torch.Tensor:
    """``c_t = β_t² / (2 β̃_t α_t (1 - ᾱ_t))`` for every t, float64 ``(T,)``; ``c_0 = inf`` (no KL at t = 0).

    ``scheduler``: anything with ``betas``, ``alphas``, ``alphas_cumprod`` (MONAI ``DDPMScheduler``).
    """
    betas = scheduler.betas.double()
    alphas = scheduler.alphas.double()
    ab = scheduler.alphas_cumprod.double()
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    coef = betas**2 / (2 * post_var * alphas * (1 - ab))
    coef[0] = float("inf")
    return coef


def posterior_mean(scheduler, t: int, z0: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """μ̃_t(z_t, z_0) of q(z_{t-1} | z_t, z_0) (Ho et al. 2020 Eq. 7), in float64."""
    ab = scheduler.alphas_cumprod.double()
    ab_t, ab_prev = ab[t], (ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
    beta_t, alpha_t = scheduler.betas.double()[t], scheduler.alphas.double()[t]
    return (ab_prev.sqrt() * beta_t / (1 - ab_t)) * z0.double() + (alpha_t.sqrt() * (1 - ab_prev) / (1 - ab_t)) * zt.double()


def posterior_variance(scheduler, t: int) -> float:
    """β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t): variance of q(z_{t-1} | z_t, z_0) and of p_θ here."""
    ab = scheduler.alphas_cumprod.double()
    ab_prev = ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    return float(scheduler.betas.double()[t] * (1 - ab_prev) / (1 - ab[t]))


def gaussian_kl(mean1: torch.Tensor, var1: float | torch.Tensor, mean2: torch.Tensor, var2: float | torch.Tensor) -> torch.Tensor:
    """Elementwise D_KL(N(mean1, var1) ‖ N(mean2, var2)) of diagonal Gaussians (the general closed form)."""
    var1, var2 = torch.as_tensor(var1, dtype=torch.float64), torch.as_tensor(var2, dtype=torch.float64)
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1.double() - mean2.double()) ** 2) / var2 - 1.0)


def _kl_chunks(
    unet: torch.nn.Module, z0: torch.Tensor, scheduler, t_values: Sequence[int], multiple: int,
    generator: Generators, max_batch: int, bf16: bool,
) -> Iterator[torch.Tensor]:
    """L_{t-1} per latent element, ``(B, k, C, *s)`` float32 per chunk of ``k`` consecutive ``t_values``.

    The noise is drawn per image in t order before chunking, so it does not depend on ``max_batch``.
    """
    if not t_values:
        raise ValueError("no t-values for the KL")
    T = len(scheduler.alphas_cumprod)
    if min(t_values) < 1 or max(t_values) > T - 1:
        raise ValueError(f"KL t-values must lie in [1, {T - 1}], got [{min(t_values)}, {max(t_values)}]")
    zp, spatial = pad_latent(z0.float(), multiple)
    B = zp.shape[0]
    dev = zp.device
    ab = scheduler.alphas_cumprod.to(dev, torch.float32)
    coef = kl_coefficients(scheduler).to(dev, torch.float32)
    gens = generator if generator is None or isinstance(generator, torch.Generator) else list(generator)
    noise = torch.stack([randn_per_item(tuple(zp.shape), gens, dev) for _ in t_values], 1)  # (B, n_t, C, *s)
    per_call = max(1, max_batch // B)
    for i in range(0, len(t_values), per_call):
        ts = t_values[i : i + per_call]
        k = len(ts)
        tt = torch.tensor(ts, device=dev)
        shape = (1, k) + (1,) * (zp.dim() - 1)
        eps = noise[:, i : i + k]  # (B, k, C, *s)
        a = ab[tt].view(shape)
        zt = a.sqrt() * zp.unsqueeze(1) + (1 - a).sqrt() * eps
        pred = epsilon(unet, zt.flatten(0, 1), tt.repeat(B), bf16).view_as(eps)
        terms = coef[tt].view(shape) * (eps - pred) ** 2
        yield crop_latent(terms.flatten(0, 1), spatial).unflatten(0, (B, k))


@torch.no_grad()
def kl_terms(
    unet: torch.nn.Module,
    z0: torch.Tensor,
    scheduler,
    t_values: Sequence[int],
    *,
    multiple: int = 1,
    generator: Generators = None,
    max_batch: int = 256,
    bf16: bool = False,
) -> torch.Tensor:
    """Mean over ``t_values`` of L_{t-1} per latent element (paper 001 §3).

    Args:
        unet: ε-prediction network called as ``unet(x, timesteps=t)``.
        z0: clean, already *scaled* latents ``(B, C, *s)``.
        scheduler: MONAI ``DDPMScheduler`` (its ``betas``, ``alphas``, ``alphas_cumprod``).
        t_values: timesteps (MONAI indexing, each in [1, T-1]).
        multiple: latents are zero-padded to multiples of this for the UNet and cropped back.
        generator: one generator, or one per image (draws in t order, independent of ``max_batch``).
        max_batch: at most this many noised latents per UNet call; t-values are batched together.
        bf16: UNet under bf16 autocast (the KL itself is computed in float32).

    Returns:
        ``(B, C, *s)`` float32.
    """
    t_values = [int(t) for t in t_values]
    total = sum(c.sum(1) for c in _kl_chunks(unet, z0, scheduler, t_values, multiple, generator, max_batch, bf16))
    return total / len(t_values)


@torch.no_grad()
def chain_kl(
    unet: torch.nn.Module,
    z0: torch.Tensor,
    scheduler,
    t_values: Sequence[int],
    *,
    multiple: int = 1,
    generator: Generators = None,
    max_batch: int = 256,
    bf16: bool = False,
) -> torch.Tensor:
    """Mean L_{t-1} over the latent elements of each image at each t: ``(B, len(t_values))`` float32.

    Its mean over t is :func:`image_kl_score` of :func:`kl_terms` with the same draws (§4.1); a subset of
    its columns is the score on fewer t-values of the same chain (:func:`subsample_score`). Arguments as
    :func:`kl_terms`.
    """
    t_values = [int(t) for t in t_values]
    chunks = _kl_chunks(unet, z0, scheduler, t_values, multiple, generator, max_batch, bf16)
    return torch.cat([c.flatten(2).mean(2) for c in chunks], 1)


def subsample_score(per_t: torch.Tensor, t_values: Sequence[int], subset: Sequence[int]) -> torch.Tensor | None:
    """Mean of the ``per_t (B, len(t_values))`` columns at the t-values of ``subset``, ``(B,)``; None when
    ``subset`` is not contained in ``t_values`` (those draws were not made)."""
    where = {int(t): i for i, t in enumerate(t_values)}
    if not subset or any(int(t) not in where for t in subset):
        return None
    return per_t[:, [where[int(t)] for t in subset]].mean(1)


def kl_map(terms: torch.Tensor) -> torch.Tensor:
    """The paper's ``v``: mean over the channel dim n_z, ``(B, C, *s) -> (B, *s)`` (§3)."""
    return terms.mean(1)


def image_kl_score(terms: torch.Tensor) -> torch.Tensor:
    """One number per image, ``(B, C, *s) -> (B,)``: mean KL over elements (and the t already averaged)."""
    return terms.flatten(1).mean(1)


def kl_thresholds(maps: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per-position ``percentile`` of validation maps ``(K, *s) -> (*s)`` (§3: 97.5, linear interpolation)."""
    if maps.shape[0] < 1:
        raise ValueError("no validation maps for the KL thresholds")
    q = np.percentile(maps.detach().double().cpu().numpy(), percentile, axis=0)
    return torch.from_numpy(np.asarray(q, dtype=np.float32))


def kl_mask(v: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Binary latent mask ``m = v >= threshold`` (§3), ``(B, *s)`` bool."""
    if v.shape[1:] != thresholds.shape:
        raise ValueError(f"KL map shape {tuple(v.shape[1:])} differs from thresholds {tuple(thresholds.shape)}")
    return v >= thresholds.to(v.device)
