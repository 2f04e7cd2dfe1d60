"""Latent Transformer Model training (paper 000 §3.2, after Pinaya et al. / Graham et al.).

Tokens are the frozen first stage's codebook indices (``models.first_stage.encode_indices``,
computed once in eval mode and cached), flattened by the configured ordering with a BOS token
prepended (``models.transformer.tokens_to_sequence``): ``(B, *s) -> (B, L + 1)``. Loss: next-token
cross-entropy, ``logits = model(seq[:, :-1])`` against ``seq[:, 1:]``; Adam with ``optim.lr``.
Validation: the same loss on the validation tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..artifacts.stage_meta import TransformerMeta
from ..config import Config
from ..data.dataset import TensorItems
from ..models.first_stage import encode_indices
from ..models.transformer import bos_index, build_ordering, build_transformer, tokens_to_sequence
from ..precision import autocast
from ..runs import RunDir
from . import losses
from .distributed import DistContext, wrap_ddp
from .finite import optimizer_step
from .ldm import encode_dataset
from .loop import FitResult, fit, seeded

ORDERING_SEED = 0


class TransformerTask:
    """:class:`~ldm_ood.training.loop.StageTask` of the LTM."""

    stage = "transformer"
    loss_names = ("loss", "grad_norm")

    def __init__(self, config: Config, latent_spatial: tuple[int, ...], ctx: DistContext,
                 inputs: dict[str, str] | None = None):
        self.config, self.cfg, self.ctx = config, config.transformer, ctx
        self.inputs = dict(inputs or {})  # sha256 of the first stage it is trained on (StageMeta.inputs)
        self.bf16 = False  # set by the training loop (use_bf16) once the precision is resolved
        self.latent_spatial = tuple(latent_spatial)
        self.num_tokens = config.first_stage.num_embeddings + 1
        self.seq_len = math.prod(self.latent_spatial)
        with seeded(self.cfg.optim.seed):
            self.net_core = build_transformer(self.cfg, self.num_tokens, self.seq_len).to(ctx.device)
        # MONAI builds a cross-attention LayerNorm in every block even without cross-attention; it never
        # receives gradients, which DDP would report as unused parameters
        for name, p in self.net_core.named_parameters():
            if "norm_cross_attn" in name:
                p.requires_grad_(False)
        self.net = wrap_ddp(self.net_core, ctx)
        self.opt = torch.optim.Adam([p for p in self.net_core.parameters() if p.requires_grad], lr=self.cfg.optim.lr)
        self.generator = torch.Generator(device="cpu")

    def use_bf16(self, flag: bool) -> None:
        """Train under bf16 autocast or in fp32 from the next step on."""
        self.bf16 = flag

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.net_core}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"transformer": self.opt}

    def model(self) -> torch.nn.Module:
        return self.net_core

    def model_config(self) -> TransformerMeta:
        return TransformerMeta(spatial_dims=self.config.data.spatial_dims, config=self.config.model_dump(mode="json"),
                               num_tokens=self.num_tokens, seq_len=self.seq_len,
                               latent_spatial_shape=tuple(self.latent_spatial), ordering=self.cfg.ordering,
                               ordering_seed=ORDERING_SEED, inputs=self.inputs)

    def _loss(self, net: torch.nn.Module, seq: torch.Tensor) -> torch.Tensor:
        seq = seq.to(self.ctx.device)
        with autocast(self.ctx.device, self.bf16):
            logits = net(seq[:, :-1])
        return losses.next_token_loss(logits, seq[:, 1:])

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(self.net, batch["tokens"])
        params = [p for p in self.net_core.parameters() if p.requires_grad]
        norm = optimizer_step(loss, self.opt, params, self.cfg.optim.grad_clip_norm)
        return {"loss": loss.item(), "grad_norm": norm}

    def probe_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token loss of one batch (precision self-check)."""
        return self._loss(self.net_core, batch["tokens"])

    def val_step(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[float, int]:
        seq = batch["tokens"]
        return self._loss(self.net_core, seq).item() * seq.shape[0], seq.shape[0]

    def preview(self, batch: Any, path: Path) -> None:  # sampling 1000s of tokens is too slow for a preview
        return None


def fit_transformer(
    run: RunDir, config: Config, train_ds: Dataset, val_ds: Dataset, resume: bool = False,
    ctx: DistContext | None = None, first_stage: torch.nn.Module | None = None,
) -> FitResult:
    """Train the LTM on image datasets (``{"image"}`` items) through the run's frozen first stage."""
    from ..models.loading import load_first_stage, upstream_hashes

    ctx = ctx or DistContext()
    fs = first_stage if first_stage is not None else load_first_stage(run, ctx.device)
    fs.eval()
    train_idx = encode_dataset(fs, train_ds, ctx.device, fn=encode_indices)
    val_idx = encode_dataset(fs, val_ds, ctx.device, fn=encode_indices)
    spatial = tuple(train_idx.shape[1:])
    ordering = build_ordering(config.transformer.ordering, spatial, seed=ORDERING_SEED)
    bos = bos_index(config.first_stage.num_embeddings)
    train_seq = tokens_to_sequence(train_idx, ordering, bos)
    val_seq = tokens_to_sequence(val_idx, ordering, bos)
    task = TransformerTask(config, spatial, ctx, inputs=upstream_hashes(run, ("first_stage",)))
    return fit(task, TensorItems("tokens", train_seq), TensorItems("tokens", val_seq), config.transformer.optim, run, ctx, resume)
