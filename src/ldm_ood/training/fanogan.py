"""f-AnoGAN training, both phases in one stage (Schlegl et al. 2019 §2; paper 001 Table 1's baseline).

``ldm-ood train fanogan`` runs one :func:`~ldm_ood.training.loop.fit` of ``gan_epochs + encoder_epochs``
epochs on the 2D training slices ``x (B, 1, *grid)`` in [0, 1]:

* **GAN phase**, epochs ``1 .. gan_epochs``: each step makes ``n_critic`` critic updates on the step's
  real batch (a fresh ``z ~ N(0, I)`` and fresh interpolation weights each) and one generator update
  (:mod:`.wgan_gp`; Adam ``optim.lr`` with ``betas`` for both, the WGAN-GP paper's (0, 0.9)). The
  reference code draws a new real batch for every critic update; here they share the step's batch, so
  every epoch updates G once per batch. Validation loss: the critic's Wasserstein estimate
  ``E[D(x_val)] − E[D(G(z))]`` (z seeded, the same every epoch);
* **encoder phase**, epochs ``gan_epochs + 1 ..``: G and D frozen (eval mode: G's batch norm uses its
  running statistics), E trained on the izi_f loss ``mean_b [(1/n)‖x − G(E(x))‖² + κ (1/n_d)‖f(x) − f(G(E(x)))‖²]``
  (``encoder_optimizer`` with ``encoder_lr``; the reference code's RMSprop 5e-5). Validation loss: the
  same izi_f loss on the validation slices.

Only encoder-phase epochs select the best model and count for early stopping
(``first_selected_epoch = gan_epochs + 1``): the saved ``model.safetensors`` (G, D and E of one
:class:`~ldm_ood.models.fanogan.FAnoGAN` under ``generator.`` / ``critic.`` / ``encoder.``) is never a
GAN-phase checkpoint with an untrained encoder. ``metrics.csv`` tells the phases apart by their columns:
``critic``, ``wasserstein``, ``gp``, ``generator`` and their gradient norms are filled in GAN epochs,
``izi_f``, ``residual``, ``feature`` and ``grad_norm_encoder`` in encoder epochs; ``loss`` is the phase's
own objective (critic loss, then izi_f) and ``lr`` its learning rate. ``state.pt`` holds all three networks and optimizers after every
epoch, so a resume after the GAN phase continues with the encoder phase. One process only (no DDP).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..artifacts.stage_meta import FanoganMeta
from ..config import Config, ConfigError
from ..config.schema import FanoganConfig
from ..models.fanogan import FAnoGAN, build_fanogan, izi_f
from ..precision import autocast
from ..runs import RunDir
from ..viz.preview import save_row_preview
from .distributed import DistContext
from .finite import optimizer_step
from .first_stage import frozen
from .loop import FitResult, fit, seeded
from .wgan_gp import critic_loss, generator_loss

GAN, ENCODER = "gan", "encoder"
PREVIEW_SEED = 0


def _encoder_optimizer(cfg: FanoganConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``encoder_optimizer`` with ``encoder_lr``: RMSprop (the reference code's) or Adam."""
    if cfg.encoder_optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.encoder_lr)
    return torch.optim.RMSprop(params, lr=cfg.encoder_lr)


class FanoganTask:
    """:class:`~ldm_ood.training.task.StageTask` of f-AnoGAN: the GAN phase, then the encoder phase."""

    stage = "fanogan"
    loss_names = ("loss", "critic", "wasserstein", "gp", "generator", "izi_f", "residual", "feature",
                  "grad_norm_critic", "grad_norm_generator", "grad_norm_encoder")

    def __init__(self, config: Config, ctx: DistContext):
        if config.data.spatial_dims != 2:
            raise ConfigError("f-AnoGAN is a 2D baseline (paper 001 Table 1): use a -2d preset")
        if ctx.distributed:
            raise ConfigError("f-AnoGAN trains in one process: run `ldm-ood train fanogan` without torchrun")
        self.config, self.cfg, self.ctx = config, config.fanogan, ctx
        self.grid = tuple(config.data.grid)
        self.bf16 = False  # set by the training loop (use_bf16) once the precision is resolved
        with seeded(self.cfg.optim.seed):
            self.net: FAnoGAN = build_fanogan(self.cfg, self.grid).to(ctx.device)
        lr, betas = self.cfg.optim.lr, tuple(self.cfg.betas)
        self.g_opt = torch.optim.Adam(self.net.generator.parameters(), lr=lr, betas=betas)
        self.c_opt = torch.optim.Adam(self.net.critic.parameters(), lr=lr, betas=betas)
        self.e_opt = _encoder_optimizer(self.cfg, self.net.encoder.parameters())
        self.generator = torch.Generator(device="cpu")
        self.first_selected_epoch = self.cfg.gan_epochs + 1
        self.phase = GAN  # of the epoch being trained / validated (set by train_step)

    # ---- StageTask
    def use_bf16(self, flag: bool) -> None:
        """Forward passes under bf16 autocast from the next step on (the gradient penalty stays fp32)."""
        self.bf16 = flag

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.net.generator, "critic": self.net.critic, "encoder": self.net.encoder}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """All three; the current phase's first (the ``lr`` column of ``metrics.csv``)."""
        if self.phase == ENCODER:
            return {"encoder": self.e_opt, "generator": self.g_opt, "critic": self.c_opt}
        return {"generator": self.g_opt, "critic": self.c_opt, "encoder": self.e_opt}

    def model(self) -> torch.nn.Module:
        return self.net

    def model_config(self) -> FanoganMeta:
        return FanoganMeta(spatial_dims=2, config=self.config.model_dump(mode="json"), grid=self.grid,
                           gan_epochs=self.cfg.gan_epochs)

    def phase_of(self, epoch: int) -> str:
        return GAN if epoch <= self.cfg.gan_epochs else ENCODER

    # ---- randomness (the task's generator: re-seeded by the loop every epoch)
    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, generator=self.generator).to(self.ctx.device)

    def _eps(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape[0], *([1] * (x.dim() - 1)), generator=self.generator).to(x.device)

    # ---- losses
    def _critic_loss(self, x: torch.Tensor):
        with torch.no_grad(), autocast(x.device, self.bf16):
            fake = self.net.generator(self._z(x.shape[0])).float()
        with autocast(x.device, self.bf16):
            return critic_loss(self.net.critic, x, fake, self._eps(x), self.cfg.gp_weight)

    def _generator_loss(self, n: int) -> torch.Tensor:
        with frozen(self.net.critic), autocast(self.ctx.device, self.bf16):
            return generator_loss(self.net.critic, self.net.generator(self._z(n)))

    def _izi_f_loss(self, x: torch.Tensor):
        with autocast(x.device, self.bf16):
            terms = izi_f(self.net, x)
        return terms.score(self.cfg.kappa).mean(), terms

    def _gan_step(self, x: torch.Tensor) -> dict[str, float]:
        clip = self.cfg.optim.grad_clip_norm
        for _ in range(self.cfg.n_critic):
            self.c_opt.zero_grad(set_to_none=True)
            c = self._critic_loss(x)
            terms = c.terms()
            norm_c = optimizer_step(c.total, self.c_opt, self.net.critic.parameters(), clip, "grad_norm_critic",
                                    terms=terms)
        self.g_opt.zero_grad(set_to_none=True)
        g = self._generator_loss(x.shape[0])
        norm_g = optimizer_step(g, self.g_opt, self.net.generator.parameters(), clip, "grad_norm_generator",
                                terms={"generator": g.item()})
        return {"loss": terms["critic"], **terms, "generator": g.item(), "grad_norm_critic": norm_c,
                "grad_norm_generator": norm_g}

    def _encoder_step(self, x: torch.Tensor) -> dict[str, float]:
        self.net.generator.eval()
        self.net.critic.eval()
        self.e_opt.zero_grad(set_to_none=True)
        with frozen(self.net.generator), frozen(self.net.critic):
            loss, t = self._izi_f_loss(x)
        terms = {"izi_f": loss.item(), "residual": t.residual.mean().item(), "feature": t.feature.mean().item()}
        norm = optimizer_step(loss, self.e_opt, self.net.encoder.parameters(), self.cfg.optim.grad_clip_norm,
                              "grad_norm_encoder", terms=terms)
        return {"loss": terms["izi_f"], **terms, "grad_norm_encoder": norm}

    def train_step(self, batch: dict[str, Any], epoch: int) -> dict[str, float]:
        self.phase = self.phase_of(epoch)
        x = batch["image"].to(self.ctx.device)
        return self._gan_step(x) if self.phase == GAN else self._encoder_step(x)

    def probe_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Critic (with the penalty), generator and izi_f losses of one batch (precision self-check)."""
        x = batch["image"].to(self.ctx.device)
        return self._critic_loss(x).total + self._generator_loss(x.shape[0]) + self._izi_f_loss(x)[0]

    def val_step(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[float, int]:
        x = batch["image"].to(self.ctx.device)
        n = x.shape[0]
        with autocast(x.device, self.bf16):
            if self.phase == GAN:
                z = torch.randn(n, self.cfg.latent_dim, generator=generator).to(x.device)
                value = (self.net.critic(x).float() - self.net.critic(self.net.generator(z)).float()).sum()
            else:
                value = izi_f(self.net, x).score(self.cfg.kappa).sum()
        return value.item(), n

    def preview(self, batch: dict[str, Any], path: Path) -> None:
        """GAN phase: inputs and samples G(z) (fixed z); encoder phase: inputs, G(E(x)), |x − G(E(x))|."""
        x = batch["image"].to(self.ctx.device)
        if self.phase == GAN:
            z = torch.randn(x.shape[0], self.cfg.latent_dim, generator=torch.Generator().manual_seed(PREVIEW_SEED))
            save_row_preview([("input", x), ("G(z)", self.net.generator(z.to(x.device)))], path)
            return
        healed = self.net(x)
        save_row_preview([("input", x), ("G(E(x))", healed), ("|x - G(E(x))|", (x - healed).abs())], path)


def fit_fanogan(run: RunDir, config: Config, train_ds: Dataset, val_ds: Dataset, resume: bool = False,
                ctx: DistContext | None = None) -> FitResult:
    """Train f-AnoGAN (both phases, module docstring) on datasets of ``{"image": (1, *grid)}`` items."""
    ctx = ctx or DistContext()
    task = FanoganTask(config, ctx)
    optim = config.fanogan.optim.model_copy(update={"max_epochs": config.fanogan.epochs})
    return fit(task, train_ds, val_ds, optim, run, ctx, resume)
