"""Similarity of every reconstruction to its input, in image space (paper 000 §2.2, §2.3).

For each scan and each score start t: ``MSE(x̂_t, x)`` and ``LPIPS(x̂_t, x)`` (2D: ``lpips``; 3D: the
2.5D ``lpips_volume`` over all slices of the three planes) → 2N values per scan (both are
*distances*: higher = less similar = more OOD). For the map starts (default t = 100, 200, 300, 400)
the MAE maps ``|x − x̂_t|`` are kept as well.

Reconstructions are decoded in chunks (``decode_batch`` chains at a time); MAE maps are taken as they
come, and a scan's score reconstructions are held until ``measure_batch`` of them (or all) are
decoded, then measured together against their input: the similarity functions take one input and
many reconstructions (:data:`SimilarityFn`), so LPIPS computes the input's features once per group
(``lpips_volume_many``) instead of once per reconstruction. At most ``decode_batch +
measure_batch`` decoded volumes live in memory at once. Like the reference code, decoded
reconstructions are clamped to the input range [0, 1] before measuring (LPIPS expects [0, 1]).

Precision: with ``bf16`` (``score.bf16``) LPIPS runs its trunk under bf16 autocast; its first
convolution, the feature normalisation and the linear heads stay in fp32 (``models.perceptual``).
Measured on 2.5D volumes its error vs fp32 is ≤ 1.1e-3 relative (``benchmarks/results/
lpips_precision.json``), i.e. ~1e-5–1e-4 absolute: far below the validation standard deviations of
the LPIPS metrics that the §2.2 z-scores divide by (``benchmarks/results/scoring.json`` reports the
resulting score differences), so scoring uses bf16 LPIPS whenever ``score.bf16`` is on.

The similarity functions are injected (``SimilarityFn``), so the LPIPS model is passed in and tests
can substitute their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .reconstruct import Reconstructions, decode_chains

#: ``(recons (B, N, C, *S), x (B, C, *S)) -> (B, N)`` float32: each reconstruction against its
#: input, higher = more different
SimilarityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(recons: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each reconstruction: ``recons (B, N, C, *S)``, ``x (B, C, *S)`` -> ``(B, N)``."""
    return (recons.float() - x.float().unsqueeze(1)).pow(2).flatten(2).mean(2)


def mae_map(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Absolute error map ``|x − x̂|`` averaged over channels: ``(K, C, *S) x2 -> (K, *S)`` (§2.3)."""
    return (x.float() - recon.float()).abs().mean(1)


def missing_map(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Missing-tissue map ``max(x̂ − x, 0)`` averaged over channels: ``(K, C, *S) x2 -> (K, *S)``.

    Where tissue was removed from the input, a reconstruction that restores it is brighter than the
    input; where the input has something the model does not expect, it is darker (not counted)."""
    return (recon.float() - x.float()).clamp_min(0).mean(1)


#: ``score.map_error`` -> the per-t error map (``absolute``: paper 000 §2.3)
MAP_ERRORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"absolute": mae_map, "missing": missing_map}


def lpips_similarity(model: torch.nn.Module, spatial_dims: int, bf16: bool = False, batch_slices: int = 64) -> SimilarityFn:
    """LPIPS as a :data:`SimilarityFn`: 2D ``lpips_many`` or 2.5D ``lpips_volume_many`` (all slices,
    3 planes); the input's features are computed once for all its reconstructions. ``bf16``: the
    LPIPS trunk under bf16 autocast (see the module docstring)."""
    from ...models.perceptual import lpips_many, lpips_volume_many

    if spatial_dims == 2:
        return lambda recons, x: lpips_many(model, x, recons, batch=batch_slices, bf16=bf16).float()
    return lambda recons, x: lpips_volume_many(model, x, recons, batch_slices=batch_slices, bf16=bf16).float()


def similarity_functions(
    metrics: Sequence[str], spatial_dims: int, lpips_model: torch.nn.Module | None = None, bf16: bool = False
) -> dict[str, SimilarityFn]:
    """``{"mse": mse, "lpips": ...}`` for the configured metrics (``ScoreConfig.metrics``); ``bf16``
    (``score.bf16``) runs LPIPS under bf16 autocast."""
    out: dict[str, SimilarityFn] = {}
    for m in metrics:
        if m == "mse":
            out[m] = mse
        elif m == "lpips":
            if lpips_model is None:
                raise ValueError("metric 'lpips' needs an LPIPS model (models.perceptual.load_lpips)")
            out[m] = lpips_similarity(lpips_model, spatial_dims, bf16=bf16)
        else:
            raise ValueError(f"unknown metric {m!r}; use 'mse' or 'lpips'")
    return out


@dataclass
class ScanMetrics:
    """Raw per-scan similarity values and MAE maps of a batch of ``B`` scans.

    ``values[m]``: ``(B, n_t)`` metric ``m`` at each of ``t_values``;
    ``mae_maps``: ``(B, n_map, *S)`` |x − x̂_t| at each of ``map_t_values`` (image grid, fp32); with
    ``map_error="missing"`` the missing-tissue map ``max(x̂_t − x, 0)`` instead.
    """

    t_values: tuple[int, ...]
    values: dict[str, torch.Tensor]
    map_t_values: tuple[int, ...]
    mae_maps: torch.Tensor

    def select(self, b: int) -> "ScanMetrics":
        """Scan ``b`` alone (batch of one)."""
        return ScanMetrics(self.t_values, {k: v[b : b + 1] for k, v in self.values.items()}, self.map_t_values, self.mae_maps[b : b + 1])


@torch.no_grad()
def measure(
    first_stage: torch.nn.Module,
    rec: Reconstructions,
    x: torch.Tensor,
    similarity: Mapping[str, SimilarityFn],
    t_values: Sequence[int],
    map_t_values: Sequence[int],
    requantize: bool = True,
    bf16: bool = False,
    decode_batch: int = 4,
    clamp: bool = True,
    measure_batch: int = 16,
    map_error: str = "absolute",
) -> ScanMetrics:
    """Decode each chain once and measure it against its input.

    Args:
        rec: reconstructions of ``x`` with chains at ``rec.starts`` (⊇ t_values ∪ map_t_values).
        x: inputs ``(B, C, *S)`` in [0, 1].
        t_values: grid starts whose similarity values are wanted (the score's t-values).
        map_t_values: grid starts whose MAE maps are wanted.
        decode_batch: chains decoded per first-stage call.
        measure_batch: a scan's decoded score reconstructions measured together (one call of each
            similarity function, sharing the input's LPIPS features).
        map_error: the map's error per t, a key of :data:`MAP_ERRORS` (``score.map_error``).
    """
    if map_error not in MAP_ERRORS:
        raise ValueError(f"unknown map error {map_error!r}; use one of {', '.join(MAP_ERRORS)}")
    starts = list(rec.starts)
    missing = [t for t in (*t_values, *map_t_values) if t not in starts]
    if missing:
        raise ValueError(f"no reconstruction chain for t = {missing}; chains start at {starts}")
    B, n = rec.latents.shape[:2]
    col = {t: starts.index(t) for t in t_values}
    map_col = {t: starts.index(t) for t in map_t_values}
    metric_chain = torch.zeros(n, dtype=torch.bool)
    metric_chain[list(col.values())] = True
    map_chain = torch.zeros(n, dtype=torch.bool)
    map_chain[list(map_col.values())] = True
    needed = [k for k in range(B * n) if metric_chain[k % n] or map_chain[k % n]]  # only the decodes needed
    n_metric = int(metric_chain.sum())

    by_chain: dict[str, torch.Tensor] = {m: torch.full((B, n), float("nan")) for m in similarity}
    map_pos: dict[int, list[int]] = {}  # chain column -> positions in map_t_values
    for j, t in enumerate(map_t_values):
        map_pos.setdefault(map_col[t], []).append(j)
    maps = torch.zeros((B, len(map_t_values), *x.shape[2:]), dtype=torch.float32)
    flat = rec.latents.flatten(0, 1)[needed]
    index = torch.tensor(needed, dtype=torch.long)
    x = x.float()
    held: dict[int, list[tuple[int, torch.Tensor]]] = {}  # scan -> decoded score chains (column, image)
    done = [0] * B  # score chains of each scan measured or held

    def flush(b: int) -> None:
        cols, imgs = zip(*held.pop(b))
        recons = torch.stack(imgs)[None]  # (1, k, C, *S)
        for name, fn in similarity.items():
            by_chain[name][b, list(cols)] = fn(recons, x[b : b + 1].to(recons.device))[0].float().cpu()

    for off, imgs in decode_chains(first_stage, flat, requantize=requantize, bf16=bf16, batch=decode_batch):
        if clamp:
            imgs = imgs.clamp_(0, 1)
        k = index[off : off + imgs.shape[0]]
        b, i = k // n, k % n
        for r, (bb, ii) in enumerate(zip(b.tolist(), i.tolist())):
            if metric_chain[ii]:
                held.setdefault(bb, []).append((ii, imgs[r].clone()))  # not a view: frees the chunk
                done[bb] += 1
                if len(held[bb]) >= measure_batch or done[bb] == n_metric:
                    flush(bb)
        sel = map_chain[i]
        if bool(sel.any()):
            ref = x[b[sel].to(x.device)]
            err = MAP_ERRORS[map_error](imgs[sel.to(imgs.device)], ref.to(imgs.device)).cpu()
            for r, (bb, ii) in enumerate(zip(b[sel].tolist(), i[sel].tolist())):
                maps[bb, map_pos[ii]] = err[r]
    values = {m: v[:, [col[t] for t in t_values]] for m, v in by_chain.items()}
    return ScanMetrics(tuple(int(t) for t in t_values), values, tuple(int(t) for t in map_t_values), maps)
