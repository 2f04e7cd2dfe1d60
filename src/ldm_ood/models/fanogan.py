"""f-AnoGAN networks and its izi_f residual (Schlegl et al. 2019 §2; paper 001 Table 1's baseline).

Three small DCGAN-style 2D networks of MONAI ``Convolution`` blocks, held by one :class:`FAnoGAN`
module (saved as one ``model.safetensors`` under the prefixes ``generator.``, ``critic.``, ``encoder.``):

* :class:`Generator` G: ``z (B, latent_dim)`` → Linear → ``(B, c_L, *grid / 2**L)``, batch norm, ReLU →
  L × [transposed 3×3 convolution, stride 2, batch norm, ReLU] → 3×3 convolution → tanh → ``(B, 1, *grid)``;
* :class:`Critic` D: ``x (B, 1, *grid)`` → 3×3 convolution, LeakyReLU(0.2) → L × [3×3 convolution,
  stride 2, layer norm, LeakyReLU(0.2)] → the features ``f(x) (B, n_d)`` (flattened; the layer before
  the last) → Linear → ``D(x) (B,)``. No batch norm: the gradient penalty is per sample (WGAN-GP §4);
  the layer norm is the reference code's (a one-group ``GroupNorm`` over channels and pixels);
* :class:`Encoder` E: a trunk like the critic's (its own weights) → Linear → ``z (B, latent_dim)``,
  unbounded (the reference's ``Z_REG_TYPE = None``).

Widths: ``c_i = channels · min(2**i, 8)`` at the i-th halving (the reference's 64-128-256-512-512 at 64²);
L (:func:`levels_for`) is the largest number of halvings leaving at least 4 pixels on the smaller side
(16² → 2, 32² → 3, 64² → 4). Images are the project's [0, 1] slices outside the networks: D and E see
``2x − 1`` and G's tanh output is mapped to ``(y + 1) / 2``, as the reference feeds its networks [−1, 1].

izi_f, the encoder objective and anomaly score of Schlegl et al.: per image
``A(x) = (1/n)‖x − G(E(x))‖² + κ (1/n_d)‖f(x) − f(G(E(x)))‖²``, n the pixels and n_d the critic features;
its batch mean is the encoder's training loss, its per-image value the image score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution
from torch import nn

from ..config.schema import FanoganConfig
from ..errors import ConfigError

MAX_WIDTH_FACTOR = 8
MIN_BOTTOM = 4
LEAKY = ("leakyrelu", {"negative_slope": 0.2})
LAYER_NORM = ("group", {"num_groups": 1})


def levels_for(grid: Sequence[int]) -> int:
    """Halvings L of the networks on a 2D ``grid``: the most leaving ≥ 4 pixels on the smaller side;
    every side must be divisible by 2**L (:class:`~ldm_ood.errors.ConfigError` otherwise)."""
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or min(grid) < 2 * MIN_BOTTOM:
        raise ConfigError(f"f-AnoGAN is a 2D method for grids of at least {2 * MIN_BOTTOM} pixels a side, got {grid}")
    levels = math.floor(math.log2(min(grid) / MIN_BOTTOM))
    if any(g % 2**levels for g in grid):
        raise ConfigError(f"f-AnoGAN: data.grid {grid} must be divisible by 2**{levels} = {2**levels} "
                          f"(its networks halve the image {levels} times down to >= {MIN_BOTTOM} pixels)")
    return levels


def widths(channels: int, levels: int) -> list[int]:
    """``[c_0, ..., c_L]``: ``channels · min(2**i, 8)``."""
    return [channels * min(2**i, MAX_WIDTH_FACTOR) for i in range(levels + 1)]


def _trunk(channels: int, levels: int) -> nn.Sequential:
    """``(B, 1, *grid)`` → ``(B, c_L, *grid / 2**L)``: the critic's and the encoder's convolutions."""
    c = widths(channels, levels)
    layers = [Convolution(2, 1, c[0], kernel_size=3, act=LEAKY, norm=None)]
    layers += [Convolution(2, c[i], c[i + 1], strides=2, kernel_size=3, act=LEAKY, norm=LAYER_NORM)
               for i in range(levels)]
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """G: ``z (B, latent_dim)`` → image ``(B, 1, *grid)`` in [0, 1] (module docstring)."""

    def __init__(self, latent_dim: int, channels: int, grid: Sequence[int]):
        super().__init__()
        levels = levels_for(grid)
        c = widths(channels, levels)
        self.bottom = (c[-1], *(int(g) // 2**levels for g in grid))
        self.project = nn.Linear(latent_dim, math.prod(self.bottom))
        self.start = nn.Sequential(nn.BatchNorm2d(c[-1]), nn.ReLU())
        self.up = nn.Sequential(*(Convolution(2, c[i + 1], c[i], strides=2, kernel_size=3, is_transposed=True,
                                              act="relu", norm="batch") for i in reversed(range(levels))))
        self.out = Convolution(2, c[0], 1, kernel_size=3, conv_only=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.start(self.project(z).view(z.shape[0], *self.bottom))
        return (torch.tanh(self.out(self.up(h))) + 1.0) / 2.0


class Critic(nn.Module):
    """D: ``x (B, 1, *grid)`` in [0, 1] → ``D(x) (B,)``; :meth:`features` is f(x) ``(B, n_d)``."""

    def __init__(self, channels: int, grid: Sequence[int]):
        super().__init__()
        levels = levels_for(grid)
        self.trunk = _trunk(channels, levels)
        self.n_features = widths(channels, levels)[-1] * math.prod(int(g) // 2**levels for g in grid)
        self.head = nn.Linear(self.n_features, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): the flattened output of the last convolution block, ``(B, n_d)``."""
        return self.trunk(2.0 * x - 1.0).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))[:, 0]


class Encoder(nn.Module):
    """E: ``x (B, 1, *grid)`` in [0, 1] → ``z (B, latent_dim)``."""

    def __init__(self, latent_dim: int, channels: int, grid: Sequence[int]):
        super().__init__()
        levels = levels_for(grid)
        self.trunk = _trunk(channels, levels)
        self.head = nn.Linear(widths(channels, levels)[-1] * math.prod(int(g) // 2**levels for g in grid), latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(2.0 * x - 1.0).flatten(1))


class FAnoGAN(nn.Module):
    """The three networks in one module. Any modules with the same interface fit (tests build exact
    ones): ``generator(z) -> x``, ``encoder(x) -> z``, ``critic(x) -> (B,)`` and ``critic.features(x) -> (B, n_d)``."""

    def __init__(self, generator: nn.Module, critic: nn.Module, encoder: nn.Module):
        super().__init__()
        self.generator, self.critic, self.encoder = generator, critic, encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The healed image ``G(E(x))``, x's shape."""
        return self.generator(self.encoder(x))


def build_fanogan(cfg: FanoganConfig, grid: Sequence[int]) -> FAnoGAN:
    """G, D and E of ``cfg`` for images of ``grid`` (2D)."""
    return FAnoGAN(Generator(cfg.latent_dim, cfg.channels, grid), Critic(cfg.channels, grid),
                   Encoder(cfg.latent_dim, cfg.channels, grid))


@dataclass
class IziF:
    """izi_f of a batch: ``healed = G(E(x)) (B, 1, *grid)``, ``residual (B,) = (1/n)‖x − healed‖²``,
    ``feature (B,) = (1/n_d)‖f(x) − f(healed)‖²``."""

    healed: torch.Tensor
    residual: torch.Tensor
    feature: torch.Tensor

    def score(self, kappa: float) -> torch.Tensor:
        """``A(x) = residual + κ · feature``, ``(B,)``."""
        return self.residual + kappa * self.feature


def izi_f_terms(x: torch.Tensor, healed: torch.Tensor, f_x: torch.Tensor, f_healed: torch.Tensor) -> IziF:
    """The izi_f terms of images ``x`` / ``healed`` ``(B, 1, *grid)`` and their critic features ``(B, n_d)``."""
    residual = (x.float() - healed.float()).pow(2).flatten(1).mean(1)
    feature = (f_x.float() - f_healed.float()).pow(2).flatten(1).mean(1)
    return IziF(healed, residual, feature)


def izi_f(model: FAnoGAN, x: torch.Tensor) -> IziF:
    """:func:`izi_f_terms` of ``x (B, 1, *grid)`` through ``model``: ``G(E(x))`` and the critic's features."""
    healed = model(x)
    return izi_f_terms(x, healed, model.critic.features(x), model.critic.features(healed))
