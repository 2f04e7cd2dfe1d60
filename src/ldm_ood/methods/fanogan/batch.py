"""One batch through the trained f-AnoGAN: healed image, anomaly map, image score (paper 001 Table 1's baseline).

For ``x (B, 1, *grid)`` in [0, 1] (Schlegl et al. 2019 §2, izi_f):

* healed image ``G(E(x))`` ``(B, 1, *grid)``;
* anomaly map ``|x − G(E(x))|`` ``(B, 1, *grid)`` (the residual, :func:`..segment.variants.residual_map`
  without a mask);
* image score ``A(x) = (1/n)‖x − G(E(x))‖² + κ (1/n_d)‖f(x) − f(G(E(x)))‖²`` ``(B,)``
  (:func:`ldm_ood.models.fanogan.izi_f`, κ = ``fanogan.kappa``).

Inference runs in float32 (the networks are small; no precision self-check).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import Config
from ...models.fanogan import FAnoGAN, izi_f
from ..context import Context, Preprocessing, load_context
from ..segment.variants import residual_map


@dataclass
class FanoganOutput:
    """``healed``, ``anomaly_map`` ``(B, 1, *grid)`` and ``score`` ``(B,)``, float32."""

    healed: torch.Tensor
    anomaly_map: torch.Tensor
    score: torch.Tensor


def fanogan_batch(model: FAnoGAN, x: torch.Tensor, kappa: float) -> FanoganOutput:
    """The module docstring's outputs of ``x (B, 1, *grid)`` through ``model`` (eval mode, no gradients)."""
    with torch.no_grad():
        terms = izi_f(model, x.float())
    return FanoganOutput(terms.healed.float(), residual_map(x, terms.healed, None), terms.score(kappa))


def fanogan_context(run_dir: str | Path, config: Config | None, model: FAnoGAN | None,
                    preprocessor: Preprocessing | None, device: str | torch.device | None) -> tuple[Context, FAnoGAN]:
    """The run's :class:`~..context.Context` and its trained f-AnoGAN (``model`` when given) on its device."""
    from ...models.loading import load_fanogan

    ctx = load_context(run_dir, config, preprocessor, device)
    return ctx, (model.to(ctx.device).eval() if model is not None else load_fanogan(ctx.run, ctx.device))
