"""Latent DDPM training (paper 000 §2.1/§3.2, paper 001 §2.2) on a frozen first stage.

* The first stage is loaded from the run and kept in ``eval()`` (MONAI's VQVAE would otherwise
  update its EMA codebook); latents are ``models.first_stage.encode`` — the quantised ("de-quantised",
  paper 000 §2.1) latent — computed **once** in float32 and cached in memory.
* Latent scale factor s = 1 / std(training latents) (over every element of the training split),
  stored in the LDM's ``config.json``; the UNet sees ``s·z`` zero-padded with ``pad_latent`` to a
  multiple of ``latent_multiple``.
* One step: t ~ U{0, …, T−1}, ε ~ N(0, I) from the task's seeded generator,
  z_t = √ᾱ_t s·z + √(1−ᾱ_t) ε (``DDPMScheduler.add_noise``), loss = L_simple on the unpadded region.
* Validation: the same loss on the validation latents with t and ε from a generator re-seeded
  identically every validation, so validation losses of different epochs are comparable.
* Preview: a DDIM sample (20 steps) from noise and DDIM reconstructions of validation latents from
  t = T/2, decoded by the first stage.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..artifacts.stage_meta import LDMMeta
from ..config import Config
from ..data.dataset import TensorItems
from ..models.diffusion import (
    build_ddpm_scheduler,
    build_inference_scheduler,
    build_unet,
    crop_latent,
    epsilon,
    latent_multiple,
    pad_latent,
)
from ..models.first_stage import decode, encode
from ..precision import guard_small_convolutions, set_layout, to_channels_last
from ..runs import RunDir
from ..viz.preview import save_row_preview
from . import losses
from .distributed import DistContext, wrap_ddp
from .finite import optimizer_step
from .loop import FitResult, fit, seeded


@torch.no_grad()
def encode_dataset(first_stage: torch.nn.Module, ds: Dataset, device: torch.device, batch_size: int = 4,
                   key: str = "image", fn=encode) -> torch.Tensor:
    """``fn(first_stage, x)`` over every item of ``ds`` (eval mode, float32): ``(N, …)`` on CPU."""
    first_stage.eval()
    out = []
    for i in range(0, len(ds), batch_size):
        x = torch.stack([ds[j][key] for j in range(i, min(i + batch_size, len(ds)))]).to(device)
        out.append(fn(first_stage, x.float()).cpu())
    return torch.cat(out)


def latent_scale_factor(latents: torch.Tensor) -> float:
    """1 / std of all elements of the training latents (Rombach et al. 2022, used by paper 000)."""
    std = latents.float().std().item()
    if not std > 0:
        raise ValueError("training latents have zero variance: is the first stage trained?")
    return 1.0 / std


class LDMTask:
    """:class:`~ldm_ood.training.loop.StageTask` of the latent DDPM."""

    stage = "ldm"
    loss_names = ("loss", "grad_norm")

    def __init__(self, config: Config, first_stage: torch.nn.Module, scale_factor: float,
                 latent_spatial: tuple[int, ...], ctx: DistContext, inputs: dict[str, str] | None = None):
        self.config, self.cfg, self.ctx = config, config.ldm, ctx
        self.inputs = dict(inputs or {})  # sha256 of the first stage it is trained on (StageMeta.inputs)
        self.spatial_dims = config.data.spatial_dims
        self.bf16 = False  # set by the training loop (use_bf16) once the precision is resolved
        self.first_stage = first_stage.eval()
        self.scale_factor = scale_factor
        self.latent_spatial = tuple(latent_spatial)
        self.multiple = latent_multiple(self.cfg)
        with seeded(self.cfg.optim.seed):
            self.unet = guard_small_convolutions(
                build_unet(self.cfg, self.spatial_dims, config.first_stage.embedding_dim).to(ctx.device))
        self.net = wrap_ddp(self.unet, ctx)
        self.scheduler = build_ddpm_scheduler(self.cfg)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=self.cfg.optim.lr)
        self.generator = torch.Generator(device="cpu")

    def use_bf16(self, flag: bool) -> None:
        """Train under bf16 autocast (channels-last) or in fp32 from the next step on."""
        self.bf16 = flag
        set_layout(self.unet, self.spatial_dims, flag)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": self.opt}

    def model(self) -> torch.nn.Module:
        return self.unet

    def model_config(self) -> LDMMeta:
        return LDMMeta(spatial_dims=self.spatial_dims, config=self.config.model_dump(mode="json"),
                       scale_factor=self.scale_factor, latent_multiple=self.multiple,
                       latent_spatial_shape=tuple(self.latent_spatial), latent_channels=self.config.first_stage.embedding_dim,
                       inputs=self.inputs)

    def _loss(self, net: torch.nn.Module, z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """L_simple of a batch of unscaled latents ``z (B, C, *s)``."""
        z = z.to(self.ctx.device).float() * self.scale_factor
        zp, spatial = pad_latent(z, self.multiple)
        b = zp.shape[0]
        t = torch.randint(0, self.scheduler.num_train_timesteps, (b,), generator=gen).to(self.ctx.device)
        eps = torch.randn(zp.shape, generator=gen).to(self.ctx.device)
        zt = self.scheduler.add_noise(original_samples=zp, noise=eps, timesteps=t)
        if self.bf16:
            zt = to_channels_last(zt, self.spatial_dims)
        pred = epsilon(net, zt, t, self.bf16)
        return losses.diffusion_loss(crop_latent(pred, spatial), crop_latent(eps, spatial))

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(self.net, batch["latent"], self.generator)
        norm = optimizer_step(loss, self.opt, self.unet.parameters(), self.cfg.optim.grad_clip_norm)
        return {"loss": loss.item(), "grad_norm": norm}

    def probe_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L_simple of one batch (precision self-check)."""
        return self._loss(self.unet, batch["latent"], self.generator)

    def val_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[float, int]:
        z = batch["latent"]
        return self._loss(self.unet, z, generator).item() * z.shape[0], z.shape[0]

    def _ddim(self, z: torch.Tensor, start: int | None, gen: torch.Generator, steps: int = 20) -> torch.Tensor:
        sch = build_inference_scheduler(self.cfg, "ddim", steps)
        timesteps = [t for t in sch.timesteps.tolist() if start is None or t <= start]
        zp, spatial = pad_latent(z * self.scale_factor, self.multiple)
        noise = torch.randn(zp.shape, generator=gen).to(zp.device)
        if start is None:
            x = noise
        else:
            x = self.scheduler.add_noise(zp, noise, torch.full((zp.shape[0],), timesteps[0], dtype=torch.long))
        for t in timesteps:
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            eps = epsilon(self.unet, x, tt, self.bf16)
            x, _ = sch.step(eps, t, x)
        return crop_latent(x, spatial) / self.scale_factor

    def preview(self, batch: dict[str, torch.Tensor], path: Path) -> None:
        z = batch["latent"].to(self.ctx.device).float()
        gen = torch.Generator().manual_seed(self.config.ldm.optim.seed)
        recon = self._ddim(z, self.scheduler.num_train_timesteps // 2, gen)
        sample = self._ddim(torch.zeros_like(z), None, gen)
        t_half = self.scheduler.num_train_timesteps // 2
        save_row_preview([("decoded latent", decode(self.first_stage, z, requantize=False)),
                          (f"DDIM from t={t_half}", decode(self.first_stage, recon, requantize=True)),
                          ("sample", decode(self.first_stage, sample, requantize=True))], path)


def fit_ldm(
    run: RunDir, config: Config, train_ds: Dataset, val_ds: Dataset, resume: bool = False,
    ctx: DistContext | None = None, first_stage: torch.nn.Module | None = None,
) -> FitResult:
    """Train the latent DDPM on image datasets (``{"image"}`` items) through the run's first stage."""
    from ..models.loading import load_first_stage, upstream_hashes

    ctx = ctx or DistContext()
    fs = first_stage if first_stage is not None else load_first_stage(run, ctx.device)
    fs.eval()
    for p in fs.parameters():
        p.requires_grad_(False)
    train_z = encode_dataset(fs, train_ds, ctx.device)
    val_z = encode_dataset(fs, val_ds, ctx.device)
    scale = latent_scale_factor(train_z)
    task = LDMTask(config, fs, scale, tuple(train_z.shape[2:]), ctx, inputs=upstream_hashes(run, ("first_stage",)))
    return fit(task, TensorItems("latent", train_z), TensorItems("latent", val_z), config.ldm.optim, run, ctx, resume)
