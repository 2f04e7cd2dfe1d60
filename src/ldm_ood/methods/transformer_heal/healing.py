"""Token healing with an autoregressive transformer: paper 001 Table 1 "Transformer" / "Ensemble"
(Pinaya et al. 2021, paper 001's reference 16; paper 001 §1 describes it as resampling the unlikely
sequence elements, whose errors accumulate along the sequence).

Given codebook indices ``(B, *s)`` and a resampling mask ``(B, *s)`` (the positions whose
log-likelihood is below the threshold, :func:`resample_mask`), :func:`heal_tokens` walks the
healing member's sequence in order; at every masked position ``k`` it replaces the token by a draw
(``sampling="sample"``, with each image's own generator) or the mode (``"argmax"``) of

    p(token_k | healed tokens_<k)        (the BOS token excluded: only codebook indices),

where the prefix already holds the tokens healed before ``k``; unmasked tokens are copied unchanged.
One forward pass per masked position, over the images masked there: the cost grows with the number
of resampled tokens and the sequence length (paper 001 Table 3's slow transformers).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DecoderOnlyTransformer

from ...models.transformer import LatentOrdering, sequence_to_latent, tokens_to_sequence
from ...precision import autocast

SAMPLINGS = ("sample", "argmax")


def resample_mask(log_likelihood: torch.Tensor, threshold: float) -> torch.Tensor:
    """Positions to resample: ``log_likelihood (B, *s) < threshold`` (bool, same shape)."""
    return log_likelihood < threshold


def heal_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One generator per image (seeded by its case), so a case heals the same however cases are batched."""
    return [torch.Generator(device=device).manual_seed(int(s) % (2**63)) for s in seeds]


def _pick(logits: torch.Tensor, rows: torch.Tensor, sampling: str,
          generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """New token per row of ``logits (r, num_embeddings)`` (float32): mode, or a draw with row ``rows[i]``'s generator."""
    if sampling == "argmax":
        return logits.argmax(-1)
    probs = F.softmax(logits, dim=-1)
    if generators is None:
        raise ValueError("sampling='sample' needs one generator per image")
    return torch.cat([torch.multinomial(probs[i], 1, generator=generators[int(b)]) for i, b in enumerate(rows)])


@torch.no_grad()
def heal_tokens(
    model: DecoderOnlyTransformer,
    ordering: LatentOrdering,
    indices: torch.Tensor,
    mask: torch.Tensor,
    bos: int,
    sampling: str = "sample",
    generators: Sequence[torch.Generator] | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Healed codebook indices ``(B, *s)`` long: masked tokens resampled in ``ordering``'s sequence order.

    Args:
        model: the (healing) transformer; its vocabulary is ``bos + 1`` (codebook + BOS).
        ordering: the order ``model`` reads tokens in.
        indices: codebook indices ``(B, *s)``.
        mask: ``(B, *s)`` bool, True where the token is resampled.
        bos: the BOS index (= codebook size); never sampled.
        sampling: ``sample`` (a draw from p(· | healed prefix), ``generators[b]`` for image b) or ``argmax``.
        bf16: forward passes under bf16 autocast (the softmax is float32).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; use one of {', '.join(SAMPLINGS)}")
    if mask.shape != indices.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of the indices {tuple(indices.shape)}")
    model.eval()
    seq = tokens_to_sequence(indices, ordering, bos)  # (B, L + 1), seq[:, k + 1] is token k
    masked = mask.reshape(mask.shape[0], -1)[:, ordering.sequence.to(mask.device)]  # (B, L), sequence order
    for k in torch.nonzero(masked.any(0)).flatten().tolist():
        rows = torch.nonzero(masked[:, k]).flatten()
        with autocast(seq.device, bf16):
            logits = model(seq[rows, : k + 1])[:, -1, :bos]  # p(token_k | healed tokens_<k), codebook only
        seq[rows, k + 1] = _pick(logits.float(), rows, sampling, generators)
    return sequence_to_latent(seq[:, 1:], ordering)
