"""``optim.precision`` of a training stage, resolved before its first epoch (``precision_policy``).

The self-check is one real training step of the stage on its first batch, in fp32 and under bf16
autocast, comparing the loss and every parameter's gradient (:func:`training_probe`). Rank 0
measures; every rank follows its answer (:func:`resolve_training_precision`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from ..config import OptimConfig
from ..precision_policy import (
    TRAIN_TENSOR_TOLERANCE,
    TRAIN_TOLERANCE,
    PrecisionChoice,
    choose_precision,
    network_signature,
)
from .distributed import DistContext, broadcast_object
from .task import StageTask


def training_probe(task: StageTask, batch: Any, seed: int):
    """``probe(bf16) -> [loss, *gradients]`` of one training step of ``task`` on ``batch``.

    The step runs on the task's own (unwrapped) modules in train mode with the task's generator
    re-seeded, then every parameter, buffer (EMA codebook, batch-norm statistics) and gradient is
    restored: the probe leaves training exactly as it found it.
    """
    modules = task.modules()

    def probe(bf16: bool) -> list[torch.Tensor]:
        saved = {k: copy.deepcopy(m.state_dict()) for k, m in modules.items()}
        was = task.bf16
        try:
            task.use_bf16(bf16)
            task.generator.manual_seed(seed)
            for m in modules.values():
                m.train()
            loss = task.probe_loss(batch)
            loss.backward()
            return [loss.detach().float().reshape(1)] + [
                p.grad.detach().float().clone() for m in modules.values() for p in m.parameters() if p.grad is not None
            ]
        finally:
            for k, m in modules.items():
                m.zero_grad(set_to_none=True)
                m.load_state_dict(saved[k])
            task.use_bf16(was)

    return probe


def resolve_training_precision(task: StageTask, train_ds: Dataset, optim: OptimConfig, ctx: DistContext) -> PrecisionChoice:
    """``optim.precision`` of ``task`` (module docstring): rank 0 measures, every rank gets its answer."""
    choice = None
    if ctx.is_main:
        batch = default_collate([train_ds[i] for i in range(min(optim.batch_size, len(train_ds)))])
        shapes = [v.shape for v in (batch.values() if isinstance(batch, dict) else [batch]) if isinstance(v, torch.Tensor)]
        choice = choose_precision(
            optim.precision, f"{task.stage} (training)", training_probe(task, batch, optim.seed),
            network_signature(task.modules().values(), *shapes), ctx.device, tolerance=TRAIN_TOLERANCE,
            tensor_tolerance=TRAIN_TENSOR_TOLERANCE,
        )
    choice = broadcast_object(choice, ctx)
    task.use_bf16(choice.bf16)
    return choice
