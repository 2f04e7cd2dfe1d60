"""LTM baseline scoring (paper 000 §1, §3.2; Graham et al. 2022): the OOD score of a scan is the
negative log-likelihood of its VQ-GAN token sequence under the autoregressive Transformer, and its
anomaly map is the per-token NLL put back in the latent layout.

Score definitions (nats):

* ``nll`` = −Σ_i log p(token_i | tokens_<i) over the ``L`` latent tokens (the BOS token is only
  conditioned on, never scored). This sum is ``pred_score`` (higher = more OOD).
* ``nll_per_token`` = ``nll / L`` is also reported (``nll`` column of the score CSV); it ranks scans
  of one run identically and is comparable across VQ-GAN levels.
* Ensemble over orderings (``transformer.ensemble_orderings``; needs one trained Transformer per
  ordering, each with its own ordering): every per-token NLL map is mapped back to the latent
  layout, and score and map are the mean over the members.
* Per-position log-likelihood of an ensemble (:func:`position_log_likelihood`; paper 001 Table 1
  "Ensemble", after Pinaya et al. 2021): each member's per-token log p mapped back to the latent
  grid and **summed** over the members (one member: that member's). The token-healing baselines
  (:mod:`ldm_ood.methods.transformer_heal`) choose the tokens to resample from it.

Maps: the latent map ``(*s)`` is upsampled to the model grid ``(*s · 2**levels)`` with
nearest-neighbour interpolation by default (each latent token becomes a ``2**levels`` block — the
honest resolution of the LTM, paper 000 §4) or linear (``bilinear``/``trilinear``) on request,
then inverted to the input's native grid and affine by the preprocessor
(:mod:`ldm_ood.methods.ltm.pipeline`).

Calibration (:class:`LTMCalibration`) keeps the validation NLL distribution: mean / std, the
validation image scores ``values``, the operating threshold = the ``(1 − fpr)`` quantile (linear
interpolation) of them, and ``percentile(s)`` = 100 · fraction of validation scores ≤ s; ``flag(s)`` =
``s > threshold``. The image score follows ``score.tails`` (the calibration's ``tails``): one-sided it
is the NLL itself (the paper's); two-sided it is ``|NLL − mean| / std`` over validation, since a scan
simpler than the training scans (less tissue, blanker, smoother) is *more* likely under the model than
any in-distribution scan (Serrà et al. 2020) and a one-sided NLL ranks it the most normal of all.
A calibration written before ``tails`` existed has ``tails`` None and is one-sided.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import VQVAE, DecoderOnlyTransformer

from ...config import Config, ConfigError
from ...models.first_stage import encode_indices
from ...models.transformer import LatentOrdering, sequence_log_likelihood, sequence_to_latent, tokens_to_sequence

__all__ = [
    "LTMCalibration",
    "LTMNetworks",
    "LTMScore",
    "check_ensemble",
    "encode_tokens",
    "position_log_likelihood",
    "score_image",
    "score_tokens",
    "token_nll",
    "upsample_map",
]


# --------------------------------------------------------------------------- networks


@dataclass
class LTMNetworks:
    """First stage + one Transformer per ordering (one pair normally; several for an ensemble)."""

    first_stage: VQVAE
    transformers: list[DecoderOnlyTransformer]
    orderings: list[LatentOrdering]
    bos: int

    def __post_init__(self) -> None:
        if not self.transformers or len(self.transformers) != len(self.orderings):
            raise ValueError(
                f"need one ordering per transformer, got {len(self.transformers)} transformers "
                f"and {len(self.orderings)} orderings"
            )
        shapes = {o.spatial_shape for o in self.orderings}
        if len(shapes) != 1:
            raise ValueError(f"all orderings must cover the same latent grid, got {sorted(shapes)}")

    @property
    def kinds(self) -> list[str]:
        return [o.kind for o in self.orderings]


def check_ensemble(cfg: Config, networks: LTMNetworks, wanted: Sequence[str] | None = None,
                   field_name: str = "transformer.ensemble_orderings") -> None:
    """Raise ``ConfigError`` unless ``networks`` provide every ordering of ``wanted`` (default
    ``transformer.ensemble_orderings``, named ``field_name`` in the message; the ensemble stage passes
    ``ensemble.orderings``), in any order.

    With an empty ``wanted`` any networks are accepted (normally one model, ``ordering``).
    """
    wanted = list(cfg.transformer.ensemble_orderings if wanted is None else wanted)
    if not wanted:
        return
    if sorted(wanted) != sorted(networks.kinds):
        raise ConfigError(
            f"{field_name}={tuple(wanted)} needs one trained Transformer per ordering, "
            f"but {len(networks.kinds)} model(s) with ordering(s) {tuple(networks.kinds)} are available; "
            f"train one Transformer per ordering or set {field_name} to the trained ones"
        )


# --------------------------------------------------------------------------- per-scan likelihood


@dataclass
class LTMScore:
    """Likelihood result of one scan. ``token_nll`` is ``(*s)`` float32 in the latent layout."""

    nll: float
    nll_per_token: float
    token_nll: torch.Tensor
    member_nll: list[float] = field(default_factory=list)


@torch.no_grad()
def encode_tokens(first_stage: VQVAE, image: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Codebook indices ``(B, *s)`` of images ``(B, C, *S)``.

    The encoder may run under bf16 autocast; the nearest-codebook search always runs in float32
    (MONAI only disables autocast there on CUDA), so bf16 cannot flip token assignments by rounding
    distances.
    """
    first_stage.eval()
    return encode_indices(first_stage, image, bf16)


@torch.no_grad()
def token_nll(
    model: DecoderOnlyTransformer, ordering: LatentOrdering, indices: torch.Tensor, bos: int, bf16: bool = False
) -> torch.Tensor:
    """Per-token NLL ``(B, *s)`` (nats) of codebook indices ``(B, *s)``, in the latent layout."""
    model.eval()
    seq = tokens_to_sequence(indices, ordering, bos)
    nll = -sequence_log_likelihood(model, seq, bf16=bf16)
    return sequence_to_latent(nll, ordering)


@torch.no_grad()
def position_log_likelihood(networks: LTMNetworks, indices: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Σ over members of log p(token | the member's previous tokens), per latent position: ``(B, *s)`` float32.

    Each member reads ``indices (B, *s)`` in its own ordering; its per-token log-likelihoods are put
    back on the latent grid (:func:`token_nll`) before they are summed (in member order), so entry
    ``[b, *j]`` is about the same token for every member.
    """
    total = None
    for model, ordering in zip(networks.transformers, networks.orderings):
        ll = -token_nll(model, ordering, indices, networks.bos, bf16)
        total = ll if total is None else total + ll
    return total


def score_tokens(networks: LTMNetworks, indices: torch.Tensor, bf16: bool = False) -> list[LTMScore]:
    """Score codebook indices ``(B, *s)``: one :class:`LTMScore` per batch element (ensemble mean)."""
    maps = [token_nll(m, o, indices, networks.bos, bf16) for m, o in zip(networks.transformers, networks.orderings)]
    stacked = torch.stack(maps)  # (M, B, *s)
    mean_map = stacked.mean(0)
    n_tokens = math.prod(indices.shape[1:])
    out = []
    for b in range(indices.shape[0]):
        members = [float(m[b].double().sum()) for m in maps]
        nll = float(np.mean(members))
        out.append(LTMScore(nll=nll, nll_per_token=nll / n_tokens, token_nll=mean_map[b].float().cpu(), member_nll=members))
    return out


def score_image(networks: LTMNetworks, image: torch.Tensor, bf16: bool = False) -> list[LTMScore]:
    """Encode images ``(B, C, *S)`` to tokens and score them (paper 000 §3.2 LTM)."""
    indices = encode_tokens(networks.first_stage, image, bf16)
    if tuple(indices.shape[1:]) != networks.orderings[0].spatial_shape:
        raise ValueError(
            f"latent grid {tuple(indices.shape[1:])} of the image differs from the Transformer's "
            f"{networks.orderings[0].spatial_shape}: was it preprocessed to the training grid?"
        )
    return score_tokens(networks, indices, bf16)


def upsample_map(latent_map: torch.Tensor, grid: Sequence[int], interpolation: str = "nearest") -> np.ndarray:
    """Latent map ``(*s)`` → float32 array ``grid`` (``nearest`` blocks, or ``linear`` interpolation)."""
    dims = latent_map.ndim
    if len(grid) != dims:
        raise ValueError(f"grid {tuple(grid)} has {len(grid)} dims, latent map has {dims}")
    if interpolation == "linear":
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]
        kwargs: dict[str, Any] = {"align_corners": False}
    elif interpolation == "nearest":
        mode, kwargs = "nearest", {}
    else:
        raise ValueError(f"unknown map interpolation {interpolation!r}; use 'nearest' or 'linear'")
    x = latent_map.float()[None, None]
    up = F.interpolate(x, size=tuple(int(g) for g in grid), mode=mode, **kwargs)
    return up[0, 0].cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- calibration


@dataclass
class LTMCalibration:
    """Validation distribution of the LTM's NLL (sum, nats: ``mean``, ``std``), the validation image
    scores ``values`` (of ``tails``; one-sided: the NLLs) and the operating threshold on them."""

    mean: float
    std: float
    threshold: float
    fpr: float
    values: list[float]
    case_ids: list[str]
    orderings: list[str]
    score: str = "nll_sum"
    tails: str | None = None  # None: written before score.tails (one-sided)

    @classmethod
    def fit(cls, values: Sequence[float], case_ids: Sequence[str], fpr: float, orderings: Sequence[str],
            tails: str = "one_sided") -> "LTMCalibration":
        """Statistics of validation NLLs ``values``; threshold = ``(1 − fpr)`` quantile of their image scores."""
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            raise ValueError("LTM calibration needs at least one validation case")
        calib = cls(mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else 0.0, threshold=float("nan"),
                    fpr=float(fpr), values=[], case_ids=list(case_ids), orderings=list(orderings), tails=tails)
        scores = calib.image_score(v)
        calib.values = [float(x) for x in scores]
        calib.threshold = float(np.quantile(scores, 1.0 - fpr))
        return calib

    def image_score(self, nll: float | np.ndarray) -> Any:
        """The image score of NLL(s) ``nll`` (scalar or ``(N,)``): the NLL (one-sided) or ``|NLL − mean| /
        std`` (two-sided; std floored as the LDM's metric std, :func:`..ldm.calibration.floored_std`)."""
        from ..ldm.calibration import floored_std, tail_score

        tails = self.tails or "one_sided"
        if tails == "one_sided":
            return tail_score(nll, tails) if np.ndim(nll) else float(nll)
        z = (np.asarray(nll, dtype=np.float64) - self.mean) / float(floored_std(self.std, self.mean))
        out = tail_score(z, tails)
        return out if np.ndim(nll) else float(out)

    def percentile(self, score: float) -> float:
        """100 · fraction of validation scores ≤ ``score`` (an image score)."""
        return float(100.0 * np.mean(np.asarray(self.values) <= score))

    def flag(self, score: float) -> bool:
        """``score`` (an image score) above the threshold."""
        return bool(score > self.threshold)

    def save(self, path: str | Path) -> None:
        from ...artifacts.atomic import atomic_write_text

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "LTMCalibration":
        return cls(**json.loads(Path(path).read_text()))
