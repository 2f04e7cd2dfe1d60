"""What a training stage gives the loop (:func:`ldm_ood.training.loop.fit`): the ``StageTask`` protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from ..artifacts.stage_meta import StageMeta


class StageTask(Protocol):
    """What a stage gives the loop. Losses are Python floats already reduced over the batch."""

    stage: str
    loss_names: tuple[str, ...]  # train-loss columns of metrics.csv, first one shown as "loss"
    generator: torch.Generator  # noise / timestep draws of train_step
    bf16: bool  # current precision (set through use_bf16)
    # optional ``first_selected_epoch: int``: the first epoch whose validation loss may select the best model
    # and count for early stopping (default 1; f-AnoGAN: its first encoder epoch, after the GAN phase)

    def use_bf16(self, flag: bool) -> None: ...  # precision (and matching layout) of the next steps

    def modules(self) -> dict[str, torch.nn.Module]: ...  # all trained modules (possibly DDP-wrapped)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def model(self) -> torch.nn.Module: ...  # the module saved as model.safetensors

    def model_config(self) -> StageMeta: ...  # saved as config.json

    def train_step(self, batch: Any, epoch: int) -> dict[str, float]: ...  # raises errors.NonFiniteValue

    def probe_loss(self, batch: Any) -> torch.Tensor: ...  # one step's loss, unwrapped modules, no optimizer

    def val_step(self, batch: Any, generator: torch.Generator) -> tuple[float, int]: ...  # (loss sum, count)

    # optional ``val_metric_names: tuple[str, ...]`` with ``validation_metrics(ctx) -> dict[str, float]``: more
    # validation columns of metrics.csv (the first stage's PSNR, SSIM, codebook usage), accumulated by val_step

    def preview(self, batch: Any, path: Path) -> None: ...
