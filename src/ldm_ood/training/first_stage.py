"""First-stage training: VQ-GAN (paper 000 §2.1/§3.2) or VQ-VAE with EMA codebook (paper 001 §2.1).

One step (``x``: ``(B, 1, *grid)`` in [0, 1]):

0. with ``train_patch`` (beyond the papers, for CPU budgets), ``x`` is a random crop of the volume:
   the networks are fully convolutional, so a crop costs a fraction of a full volume per step
   and validation still runs on whole volumes;
1. generator: ``x̂, vq = VQVAE(x)``; loss = recon + vq + w_p·LPIPS + w_s·spectral
   (+ w_adv·adversarial after ``adversarial_warmup_epochs``), Adam ``optim.lr``;
2. discriminator (VQ-GAN with ``adversarial_weight > 0``): ½(LS(D(x), 1) + LS(D(x̂), 0)),
   Adam ``disc_lr``;
3. every ``codebook_restart_every`` steps, dead codes restart at encoder outputs of the batch
   (:mod:`.codebook_restart`).

The validation loss (early stopping, best checkpoint) is recon + vq on the validation split: the
deterministic, non-adversarial part of the generator objective.

Precision (``optim.precision``, resolved by the training loop): with bf16, encoder, decoder and
discriminator run under autocast in channels-last layout, the convolutions whose kernel is wider
than their input run in fp32 (``precision.guard_small_convolutions``: the CPU bf16 weight-gradient
fault that made the discriminator's last layer NaN after one step), and the nearest-codebook
search always runs in float32 (``models.first_stage.quantize_fp32``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
from monai.networks.nets import VQVAE

from ..artifacts.stage_meta import FirstStageMeta
from ..config import Config
from ..models.first_stage import build_discriminator, build_first_stage, encoder_output, vq_forward, vq_forward_with_indices
from ..models.perceptual import lpips_loss
from ..precision import autocast, guard_small_convolutions, set_layout, to_channels_last
from ..runs import RunDir
from ..viz.preview import save_row_preview
from . import losses
from .distributed import DistContext, all_reduce_sum, wrap_ddp
from .finite import optimizer_step
from .codebook_restart import restart_dead_codes
from .loop import FitResult, fit, seeded
from .reconstruction_metrics import COLUMNS as VAL_METRICS
from .reconstruction_metrics import ReconstructionStats


class _VQForward(torch.nn.Module):
    """``vq_forward`` of the wrapped VQVAE at the task's current precision (what DDP wraps)."""

    def __init__(self, vqvae: VQVAE):
        super().__init__()
        self.vqvae = vqvae
        self.bf16 = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vq_forward(self.vqvae, x, self.bf16)


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Parameters of ``module`` need no gradient inside the block (generator step through D)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class FirstStageTask:
    """:class:`~ldm_ood.training.loop.StageTask` of the VQ-GAN / VQ-VAE."""

    stage = "first_stage"

    def __init__(self, config: Config, ctx: DistContext, lpips_model: torch.nn.Module | None = None):
        self.config, self.cfg, self.ctx = config, config.first_stage, ctx
        self.spatial_dims = config.data.spatial_dims
        self.bf16 = False  # set by the training loop (use_bf16) once the precision is resolved
        dev = ctx.device
        self.use_adv = self.cfg.kind == "vqgan" and self.cfg.adversarial_weight > 0
        with seeded(self.cfg.optim.seed):
            self.vqvae = guard_small_convolutions(build_first_stage(self.cfg, self.spatial_dims).to(dev))
            self.disc = (guard_small_convolutions(build_discriminator(self.cfg, self.spatial_dims).to(dev))
                         if self.use_adv else None)
        self.lpips_model = lpips_model if self.cfg.perceptual_weight > 0 else None
        # DDP wrappers (identity in one process); the forward wrapper keeps fp32 quantisation under DDP
        self._forward = _VQForward(self.vqvae)
        self.g_net = wrap_ddp(self._forward, ctx)
        self.d_net = wrap_ddp(self.disc, ctx) if self.disc is not None else None
        self.g_opt = torch.optim.Adam(self.vqvae.parameters(), lr=self.cfg.optim.lr)
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=self.cfg.disc_lr) if self.disc is not None else None
        self.generator = torch.Generator(device="cpu")
        self.loss_names = ("loss", "recon", "vq", "perceptual", "spectral", "adv_g", "adv_d", "grad_norm", "grad_norm_d",
                           "codes_restarted")
        self.steps = 0
        self.val_metric_names = VAL_METRICS
        self.val_stats = ReconstructionStats(self.cfg.num_embeddings)

    # ---- StageTask
    def use_bf16(self, flag: bool) -> None:
        """Train under bf16 autocast (channels-last) or in fp32 from the next step on."""
        self.bf16 = self._forward.bf16 = flag
        for m in self.modules().values():
            set_layout(m, self.spatial_dims, flag)

    def modules(self) -> dict[str, torch.nn.Module]:
        out: dict[str, torch.nn.Module] = {"vqvae": self.vqvae}
        if self.disc is not None:
            out["discriminator"] = self.disc
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        out = {"vqvae": self.g_opt}
        if self.d_opt is not None:
            out["discriminator"] = self.d_opt
        return out

    def model(self) -> torch.nn.Module:
        return self.vqvae

    def model_config(self) -> FirstStageMeta:
        return FirstStageMeta(spatial_dims=self.spatial_dims, config=self.config.model_dump(mode="json"))

    def _perceptual(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        assert self.lpips_model is not None
        return lpips_loss(self.lpips_model, x.float(), x_hat.float(), generator=self.generator, bf16=self.bf16)

    def _random_patch(self, x: torch.Tensor) -> torch.Tensor:
        """A random crop ``(B, C, *train_patch)`` of ``x (B, C, *S)``, one location per step (seeded)."""
        patch = self.cfg.train_patch
        if patch is None or tuple(patch) == tuple(x.shape[2:]):
            return x
        starts = [int(torch.randint(0, s - p + 1, (1,), generator=self.generator)) for s, p in zip(x.shape[2:], patch)]
        return x[(slice(None), slice(None), *(slice(a, a + p) for a, p in zip(starts, patch)))].contiguous()

    def _patch(self, batch: dict[str, Any]) -> torch.Tensor:
        x = self._random_patch(batch["image"].to(self.ctx.device, non_blocking=True))
        return to_channels_last(x, self.spatial_dims) if self.bf16 else x

    def _generator_loss(self, net: torch.nn.Module, x: torch.Tensor, adv_on: bool) -> tuple[losses.GeneratorLoss, torch.Tensor]:
        x_hat, vq_loss = net(x)
        fake_logits = None
        if adv_on:
            with frozen(self.disc), autocast(x.device, self.bf16):
                fake_logits = self.disc(x_hat)
        g = losses.first_stage_generator_loss(
            self.cfg, x, x_hat, vq_loss, self.spatial_dims, fake_logits,
            self._perceptual if self.lpips_model is not None else None,
        )
        return g, x_hat

    def _discriminator_loss(self, net: torch.nn.Module, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.bf16):
            real = net(x)
            fake = net(x_hat.detach())
        return losses.discriminator_loss(real, fake)

    def train_step(self, batch: dict[str, Any], epoch: int) -> dict[str, float]:
        x = self._patch(batch)
        adv_on = self.use_adv and epoch > self.cfg.adversarial_warmup_epochs
        clip = self.cfg.optim.grad_clip_norm
        # generator
        self.g_opt.zero_grad(set_to_none=True)
        g, x_hat = self._generator_loss(self.g_net, x, adv_on)
        out = {"loss": g.total.item(), **g.terms}
        out["grad_norm"] = optimizer_step(g.total, self.g_opt, self.vqvae.parameters(), clip, terms=g.terms)
        # discriminator
        if adv_on:
            self.d_opt.zero_grad(set_to_none=True)
            d = self._discriminator_loss(self.d_net, x, x_hat)
            out["adv_d"] = d.item()
            out["grad_norm_d"] = optimizer_step(d, self.d_opt, self.disc.parameters(), clip, "grad_norm_d",
                                                terms={"adv_d": out["adv_d"]})
        self.steps += 1
        every = self.cfg.codebook_restart_every
        if every and self.steps % every == 0:
            z = encoder_output(self.vqvae, x, self.bf16)
            out["codes_restarted"] = float(restart_dead_codes(self.vqvae.quantizer.quantizer, z,
                                                              self.cfg.codebook_restart_threshold, self.generator))
        return out

    def probe_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Generator + discriminator loss of one step with every term on (precision self-check)."""
        x = self._patch(batch)
        g, x_hat = self._generator_loss(self._forward, x, self.use_adv)
        return g.total + (self._discriminator_loss(self.disc, x, x_hat) if self.use_adv else 0.0)

    def val_step(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[float, int]:
        x = batch["image"].to(self.ctx.device)
        x_hat, vq_loss, indices = vq_forward_with_indices(self.vqvae, x, self.bf16)
        loss = losses.reconstruction_loss(x, x_hat, self.cfg.reconstruction_loss) + vq_loss.float().mean()
        self.val_stats.add(x, x_hat, indices)
        return loss.item() * x.shape[0], x.shape[0]

    def validation_metrics(self, ctx: DistContext) -> dict[str, float]:
        """PSNR, SSIM, codebook perplexity and dead codes over the validation split (all ranks)."""
        return self.val_stats.result(all_reduce_sum(self.val_stats.totals(), ctx))

    def preview(self, batch: dict[str, Any], path: Path) -> None:
        x = batch["image"].to(self.ctx.device)
        x_hat, _ = vq_forward(self.vqvae, x, self.bf16)
        save_row_preview([("input", x), ("reconstruction", x_hat), ("|error|", (x - x_hat.float()).abs())], path)


def load_lpips_for(config: Config, device: torch.device) -> torch.nn.Module | None:
    """LPIPS network when the perceptual term is on (``perceptual_weight > 0``), else None."""
    if config.first_stage.perceptual_weight <= 0:
        return None
    from ..models.perceptual import load_lpips

    return load_lpips(device)


def fit_first_stage(
    run: RunDir, config: Config, train_ds, val_ds, resume: bool = False, ctx: DistContext | None = None,
    lpips_model: torch.nn.Module | None = None,
) -> FitResult:
    """Train the first stage on datasets of ``{"image": (1, *grid)}`` items (see :func:`fit`)."""
    ctx = ctx or DistContext()
    if lpips_model is None:
        lpips_model = load_lpips_for(config, ctx.device)
    task = FirstStageTask(config, ctx, lpips_model)
    return fit(task, train_ds, val_ds, config.first_stage.optim, run, ctx, resume)
