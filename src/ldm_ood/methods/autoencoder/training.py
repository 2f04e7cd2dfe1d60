"""Training of the AE (spatial) and VAE (dense) baselines on healthy slices: ``ldm-ood train ae`` / ``train vae``.

One :class:`AutoencoderTask` (:class:`~ldm_ood.training.task.StageTask`) for both, plugged into
:func:`ldm_ood.training.loop.fit` (resume, validation, early stopping, ``model.safetensors`` +
``config.json`` with ``weights_sha256``, ``DONE``). One step on ``x (B, 1, *grid)`` in [0, 1]
(Baur et al. 2021, paper 001 Table 1):

* AE: ``x̂ = D(E(x))``, loss = L1 (``reconstruction_loss``);
* VAE: ``μ, log σ² = E(x)``, ``z = μ + ε σ`` with ``ε ~ N(0, I)`` from the task's seeded generator,
  ``x̂ = D(z)``, loss = L1 + ``kl_weight`` · KL per voxel (:func:`.model.autoencoder_loss`).

Adam with ``adam_betas`` and ``optim.lr``. The validation loss is the same objective on the
validation split (the VAE's ε from the loop's re-seeded validation generator, so every epoch sees
the same noise). Precision as every stage (``optim.precision``); convolutions whose kernel is wider
than their input run in fp32 under CPU bf16 (``precision.guard_small_convolutions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...artifacts.stage_meta import AEMeta, StageMeta, VAEMeta
from ...config import Config
from ...precision import autocast, guard_small_convolutions, to_channels_last
from ...runs import RunDir
from ...training.distributed import DistContext, wrap_ddp
from ...training.finite import optimizer_step
from ...training.loop import FitResult, fit, seeded
from ...viz.preview import save_row_preview
from .model import AutoencoderLoss, TrainingPass, autoencoder_loss, build_autoencoder, section, set_autoencoder_layout

_META: dict[str, type[StageMeta]] = {"ae": AEMeta, "vae": VAEMeta}


class AutoencoderTask:
    """:class:`~ldm_ood.training.task.StageTask` of the ``ae`` or ``vae`` stage (``kind``)."""

    def __init__(self, config: Config, kind: str, ctx: DistContext | None = None):
        self.ctx = ctx or DistContext()
        self.config, self.cfg, self.stage = config, section(config, kind), kind
        self.spatial_dims = config.data.spatial_dims
        self.variational = kind == "vae"
        self.loss_names = ("loss", "recon", "kl", "grad_norm") if self.variational else ("loss", "recon", "grad_norm")
        self.bf16 = False  # set by the training loop (use_bf16) once the precision is resolved
        with seeded(self.cfg.optim.seed):
            net = build_autoencoder(kind, self.cfg, config.data.grid)
            self.net = guard_small_convolutions(net.to(self.ctx.device))
        self._pass = TrainingPass(self.net)
        self.ddp = wrap_ddp(self._pass, self.ctx)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg.optim.lr, betas=tuple(self.cfg.adam_betas))
        self.generator = torch.Generator(device="cpu")

    # ---- StageTask
    def use_bf16(self, flag: bool) -> None:
        """Train under bf16 autocast (channels-last) or in fp32 from the next step on."""
        self.bf16 = flag
        set_autoencoder_layout(self.net, self.spatial_dims, flag)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {self.stage: self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {self.stage: self.opt}

    def model(self) -> torch.nn.Module:
        return self.net

    def model_config(self) -> StageMeta:
        return _META[self.stage](spatial_dims=self.spatial_dims, config=self.config.model_dump(mode="json"))

    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"].to(self.ctx.device, non_blocking=True)
        return to_channels_last(x, self.spatial_dims) if self.bf16 and not self.variational else x

    def loss(self, net: torch.nn.Module, x: torch.Tensor, generator: torch.Generator | None) -> AutoencoderLoss:
        """The objective on ``x (B, 1, *grid)`` through ``net`` (a :class:`.model.TrainingPass`, maybe
        DDP-wrapped); the VAE's ``ε (B, latent_size)`` is drawn from ``generator`` (None: z = μ)."""
        eps = None
        if self.variational and generator is not None:
            eps = torch.randn((x.shape[0], self.cfg.latent_size), generator=generator).to(x.device)
        with autocast(x.device, self.bf16):
            x_hat, mu, logvar = net(x, eps)
        kl_weight = getattr(self.cfg, "kl_weight", 0.0)
        return autoencoder_loss(x, x_hat, self.cfg.reconstruction_loss, mu, logvar, kl_weight)

    def train_step(self, batch: dict[str, Any], epoch: int) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.ddp, self._images(batch), self.generator)
        terms = loss.terms
        norm = optimizer_step(loss.total, self.opt, self.net.parameters(), self.cfg.optim.grad_clip_norm, terms=terms)
        return {"loss": float(loss.total.detach()), **terms, "grad_norm": norm}

    def probe_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The training objective of one batch on the unwrapped network (precision self-check)."""
        return self.loss(self._pass, self._images(batch), self.generator).total

    def val_step(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[float, int]:
        x = batch["image"].to(self.ctx.device)
        return float(self.loss(self._pass, x, generator).total) * x.shape[0], x.shape[0]

    def preview(self, batch: dict[str, Any], path: Path) -> None:
        x = batch["image"].to(self.ctx.device)
        with autocast(x.device, self.bf16):
            x_hat = self._pass(x)[0].float()
        save_row_preview([("input", x), ("reconstruction", x_hat), ("|error|", (x - x_hat).abs())], path)


def _fit(kind: str, run: RunDir, config: Config, train_ds, val_ds, resume: bool, ctx: DistContext | None) -> FitResult:
    ctx = ctx or DistContext()
    task = AutoencoderTask(config, kind, ctx)
    return fit(task, train_ds, val_ds, task.cfg.optim, run, ctx, resume)


def fit_ae(run: RunDir, config: Config, train_ds, val_ds, resume: bool = False,
           ctx: DistContext | None = None) -> FitResult:
    """Train the AE (spatial) baseline on datasets of ``{"image": (1, *grid)}`` items (``<run>/ae/``)."""
    return _fit("ae", run, config, train_ds, val_ds, resume, ctx)


def fit_vae(run: RunDir, config: Config, train_ds, val_ds, resume: bool = False,
            ctx: DistContext | None = None) -> FitResult:
    """Train the VAE (dense) baseline on datasets of ``{"image": (1, *grid)}`` items (``<run>/vae/``)."""
    return _fit("vae", run, config, train_ds, val_ds, resume, ctx)
