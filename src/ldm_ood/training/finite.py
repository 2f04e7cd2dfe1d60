"""Non-finite guard of every trainer: stop at the first non-finite loss term or gradient norm.

A training step that produced NaN/Inf must never reach the optimizer, a checkpoint or a DONE
marker. :func:`optimizer_step` back-propagates, measures (and optionally clips) the global
gradient norm, and raises :class:`NonFiniteValue` *before* ``optimizer.step()`` when the norm is
not finite, naming the first non-finite of the step's logged loss terms. The training loop
(``training.loop.fit``) adds the stage, epoch and step and re-raises it as a
:class:`~ldm_ood.errors.NonFiniteTrainingError`; the state of the last completed epoch
(``state.pt``) and the best model stay as they were on disk, so ``--resume`` continues from
there (after changing what diverged: ``precision: fp32``, a lower ``lr`` or ``grad_clip_norm``).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from ..errors import NonFiniteValue


def first_non_finite(values: Mapping[str, float]) -> tuple[str, float] | None:
    """``(name, value)`` of the first non-finite entry of ``values``, or None."""
    for name, value in values.items():
        if not math.isfinite(value):
            return name, value
    return None


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[torch.nn.Parameter],
    clip_norm: float | None = None,
    name: str = "grad_norm",
    terms: Mapping[str, float] | None = None,
) -> float:
    """``loss.backward()``, global gradient L2 norm (clipped to ``clip_norm`` when set), ``optimizer.step()``.

    Returns the gradient norm *before* clipping. Raises :class:`NonFiniteValue` without stepping
    when the loss or the norm is not finite, naming the first non-finite of ``terms`` (the loss's
    logged components), else ``loss``, else ``name``. Under DDP the gradients
    are averaged over ranks before the norm is taken, so a NaN on one rank stops every rank at
    the same step.
    """
    loss.backward()  # also with a non-finite loss: under DDP every rank must join the gradient all-reduce
    params = [p for p in parameters if p.grad is not None]
    max_norm = clip_norm if clip_norm is not None else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
    value = float(loss.detach())
    if not (math.isfinite(value) and math.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        culprit = first_non_finite(terms or {}) or first_non_finite({"loss": value}) or (name, norm)
        raise NonFiniteValue(*culprit)
    optimizer.step()
    return norm
