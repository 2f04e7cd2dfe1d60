"""One batch of the transformer baselines of paper 001 Table 1 (Pinaya et al. 2021): tokens,
likelihoods, resampling mask, healing, decoding and the filtered residual map.

A batch ``x (B, 1, *grid)`` in [0, 1] goes through (2D and 3D alike):

1. the first stage's codebook indices ``(B, *s)`` (:func:`~ldm_ood.methods.ltm.likelihood.encode_tokens`);
2. the per-position log-likelihood ``(B, *s)``, summed over the members of an ensemble
   (:func:`~ldm_ood.methods.ltm.likelihood.position_log_likelihood`; one member for "Transformer");
   the image score is its negative sum: the sum of the members' NLLs (nats);
3. the resampling mask = log-likelihood below the calibrated threshold (:func:`.healing.resample_mask`);
4. the masked tokens resampled by the healing member in its order (:func:`.healing.heal_tokens`)
   and the healed tokens decoded, ``x̂' = D(e[healed])`` (:func:`~ldm_ood.models.first_stage.decode_indices`);
5. the map ``|x − x̂'|`` × the upsampled mask, Gaussian-smoothed with σ = ``segment.gaussian_sigma``
   latent voxels: the filtering of paper 001 variant (c) (:mod:`ldm_ood.methods.segment.variants`).

:func:`heal_context` loads what the ``transformer`` (the run's ``transformer`` stage) or ``ensemble``
(the ``ensemble`` stage) method needs, each network in the precision ``token_healing.precision``
resolves to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ...config import Config, ConfigError
from ...models.first_stage import decode_indices
from ...precision import prepare_for_inference
from ...precision_policy import PrecisionChoice
from ...runs import RunDir
from ...samplers.noise import case_seed
from .. import inference_precision
from ..context import Context, Preprocessing, load_context
from ..inference_precision import first_stage_probe, transformer_probe
from ..ltm.likelihood import LTMNetworks, check_ensemble, encode_tokens, position_log_likelihood
from ..segment.variants import residual_map, upsample_mask
from .healing import heal_generators, heal_tokens, resample_mask

#: the two segmentation methods of this folder: the run's stage each one heals with
STAGE_OF = {"transformer": "transformer", "ensemble": "ensemble"}


@dataclass
class HealModels:
    """The first stage and the transformers (``networks``; one, or the ensemble's members) and which
    member heals (``heal_index`` into ``networks.transformers``)."""

    networks: LTMNetworks
    heal_index: int = 0
    bf16: bool = False  # the transformers' precision
    first_stage_bf16: bool = False
    precision: dict[str, PrecisionChoice] = field(default_factory=dict)

    @property
    def healer_ordering(self) -> str:
        return self.networks.kinds[self.heal_index]


def heal_index(cfg: Config, networks: LTMNetworks) -> int:
    """Index of ``ensemble.orderings[token_healing.heal_member]`` among the loaded members."""
    wanted, k = cfg.ensemble.orderings, cfg.token_healing.heal_member
    if k >= len(wanted):
        raise ConfigError(f"token_healing.heal_member={k} but ensemble.orderings has {len(wanted)} members")
    return networks.kinds.index(wanted[k])


def _networks(method: str, run: RunDir, cfg: Config, device: torch.device, force: bool) -> tuple[LTMNetworks, int]:
    """``(networks, heal index)`` of ``method`` loaded from the run."""
    from ...models.loading import load_ensemble, load_first_stage, load_transformer

    if method not in STAGE_OF:
        raise ValueError(f"unknown token-healing method {method!r}; one of {', '.join(STAGE_OF)}")
    members = [load_transformer(run, device, force)] if method == "transformer" else load_ensemble(run, device, force)
    bos = members[0].config.first_stage.num_embeddings
    networks = LTMNetworks(load_first_stage(run, device), [m.transformer for m in members],
                           [m.ordering for m in members], bos=bos)
    if method == "transformer":
        return networks, 0
    check_ensemble(cfg, networks, cfg.ensemble.orderings, "ensemble.orderings")
    return networks, heal_index(cfg, networks)


def load_heal_models(method: str, run: RunDir, cfg: Config, device: torch.device, force: bool = False) -> HealModels:
    """The run's networks for ``method``, each in the precision ``token_healing.precision`` resolves to
    (:mod:`..inference_precision`; one choice for all members, measured on the first); ``force``:
    networks trained on another first stage are used anyway."""
    networks, heal = _networks(method, run, cfg, device, force)
    fs, model = networks.first_stage, networks.transformers[0]
    seq_len = math.prod(networks.orderings[0].spatial_shape)
    choices = inference_precision.resolve(cfg.token_healing.precision, {
        "first_stage": (fs, lambda: first_stage_probe(fs, cfg.data.grid, cfg.token_healing.batch_size, device)),
        "transformer": (model, lambda: transformer_probe(model, seq_len, networks.bos, device)),
    }, device, f"{method} segmentation")
    inference_precision.report(choices, run)
    prepare_for_inference(fs, cfg.data.spatial_dims, choices["first_stage"].bf16)
    return HealModels(networks, heal, choices["transformer"].bf16, choices["first_stage"].bf16, choices)


def heal_context(method: str, run_dir: str | Path, config: Config | None, models: HealModels | None,
                 preprocessor: Preprocessing | None, device: str | torch.device | None,
                 force: bool = False) -> tuple[Context, HealModels]:
    """Run, config, device and preprocessor (:func:`..context.load_context`) and ``method``'s models unless given."""
    ctx = load_context(run_dir, config, preprocessor, device)
    if models is None:
        models = load_heal_models(method, ctx.run, ctx.cfg, ctx.device, force)
    return ctx, models


def case_seeds(case_ids: Sequence[str], seed: int) -> list[int]:
    """One healing seed per case from ``token_healing.seed`` and the case id."""
    return [case_seed(seed, c) for c in case_ids]


@dataclass
class HealOutput:
    """:func:`heal_batch` for ``B`` images."""

    healed: torch.Tensor  # (B, 1, *grid) decoded healed tokens x̂'
    anomaly_map: torch.Tensor  # (B, 1, *grid) |x - x̂'| x smoothed upsampled mask
    pred_score: torch.Tensor  # (B,) float64: sum of the members' NLL (nats)
    log_likelihood: torch.Tensor  # (B, *s) per position, summed over members
    mask: torch.Tensor  # (B, *s) bool: resampled positions
    tokens: torch.Tensor  # (B, *s) the input's codebook indices
    healed_tokens: torch.Tensor  # (B, *s)


@torch.no_grad()
def likelihoods(models: HealModels, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices (B, *s), per-position log-likelihood (B, *s))`` of images ``x (B, 1, *grid)``."""
    net = models.networks
    indices = encode_tokens(net.first_stage, x, models.first_stage_bf16)
    if tuple(indices.shape[1:]) != net.orderings[0].spatial_shape:
        raise ValueError(f"latent grid {tuple(indices.shape[1:])} of the image differs from the transformers' "
                         f"{net.orderings[0].spatial_shape}: was it preprocessed to the training grid?")
    return indices, position_log_likelihood(net, indices, models.bf16)


@torch.no_grad()
def heal_batch(models: HealModels, x: torch.Tensor, threshold: float, cfg: Config, seeds: Sequence[int]) -> HealOutput:
    """Score, mask, heal, decode and map ``x (B, 1, *grid)`` (module docstring); ``threshold``: on the
    per-position log-likelihood (calibration); ``seeds``: one per image (:func:`case_seeds`)."""
    net, th = models.networks, cfg.token_healing
    indices, ll = likelihoods(models, x)
    mask = resample_mask(ll, threshold)
    gens = heal_generators(seeds, indices.device) if th.sampling == "sample" else None
    k = models.heal_index
    healed_tokens = heal_tokens(net.transformers[k], net.orderings[k], indices, mask, net.bos, th.sampling, gens,
                                models.bf16)
    healed = decode_indices(net.first_stage, healed_tokens, models.first_stage_bf16)
    smooth = upsample_mask(mask, x.shape[2:], cfg.segment.gaussian_sigma)
    return HealOutput(healed, residual_map(x, healed, smooth), -ll.flatten(1).double().sum(1), ll, mask, indices,
                      healed_tokens)
