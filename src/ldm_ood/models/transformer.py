"""Latent Transformer Model (LTM) baseline, paper 000 §1 and §3.2: an autoregressive decoder-only
Transformer over the VQ-GAN's codebook indices, flattened into a 1D sequence by an ordering.

Token layout (fixed; training and scoring both use it)::

    indices (B, *s)  --flatten (C order)--> (B, L)  --ordering--> (B, L)  --prepend BOS--> (B, L + 1)

* vocabulary: the ``num_embeddings`` codebook indices plus one beginning-of-sequence token whose
  index is ``num_embeddings`` (``num_tokens = num_embeddings + 1``, :func:`bos_index`);
* ``max_seq_len = L + 1`` (the whole BOS-prefixed sequence fits), although teacher forcing only feeds
  the first ``L`` tokens: ``logits = model(seq[:, :-1])`` predicts ``seq[:, 1:]``
  (:func:`sequence_log_likelihood`).

Attention: ``use_flash_attention=True`` makes MONAI 1.6.1's ``SABlock`` call
``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)`` (memory-efficient exact
attention, paper 000 §3.2 / Rabe & Staats), so the L×L attention matrix is never materialised.
MONAI nevertheless registers a ``tril(ones(max_seq_len, max_seq_len))`` fp32 ``causal_mask`` buffer
in every layer (DESIGN.md, Known traps) that the SDPA path never reads: 4·(L+1)² bytes per layer,
≈ 0.63 GB per layer at 12,585 tokens (22 layers: ≈ 13.9 GB), ≈ 40.5 GB per layer at 100,673 tokens.
:func:`build_transformer` therefore constructs the network with ``max_seq_len=1`` (a 1×1 mask),
then installs the real positional embedding and removes the mask buffers, so neither memory nor
checkpoints (``state_dict``) contain them. Memory figures of this project exclude the masks;
:func:`causal_mask_bytes` gives their theoretical size.

Orderings (:func:`build_ordering`): MONAI's ``Ordering`` (``raster_scan``, ``s_curve``, ``random``)
plus ``hilbert_curve``, which MONAI 1.6.1 does not have. ``random`` is seeded (MONAI's uses the
global NumPy RNG, which would give training and scoring different orders). Each kind also comes
``_transposed`` (the grid's axes reversed before it is scanned: raster becomes column-major),
``_reflected`` (every axis flipped: raster read backwards) or ``_transposed_reflected``, through
MONAI's ``transpositions_axes`` / ``reflected_spatial_dims`` (transpose first, then reflect):
the differently ordered views of one latent that the ensemble of Pinaya et al. 2021 (paper 001
§1 and Table 1, its reference 16) trains one transformer each on
(``ensemble.orderings``, :class:`~ldm_ood.config.schema.EnsembleConfig`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DecoderOnlyTransformer
from monai.networks.nets.transformer import AbsolutePositionalEmbedding
from monai.utils.enums import OrderingType
from monai.utils.ordering import Ordering

from ..config import TransformerConfig
from ..precision import autocast

ORDERING_KINDS: tuple[str, ...] = ("raster_scan", "s_curve", "random", "hilbert_curve")
#: suffixes of an ordering name, in this order: ``<kind>[_transposed][_reflected]``
ORDERING_TRANSFORMS: tuple[str, ...] = ("transposed", "reflected")

__all__ = [
    "ORDERING_KINDS",
    "ORDERING_TRANSFORMS",
    "LatentOrdering",
    "bos_index",
    "build_ordering",
    "build_transformer",
    "causal_mask_bytes",
    "ordering_names",
    "parse_ordering",
    "sequence_log_likelihood",
    "sequence_to_latent",
    "tokens_to_sequence",
]


def bos_index(num_embeddings: int) -> int:
    """Index of the beginning-of-sequence token: one past the last codebook index."""
    return num_embeddings


def causal_mask_bytes(seq_len: int, num_layers: int) -> int:
    """Bytes MONAI's per-layer fp32 ``causal_mask`` buffers would take at ``max_seq_len = seq_len + 1``."""
    return 4 * (seq_len + 1) ** 2 * num_layers


# --------------------------------------------------------------------------- network


def build_transformer(cfg: TransformerConfig, num_tokens: int, seq_len: int) -> DecoderOnlyTransformer:
    """MONAI ``DecoderOnlyTransformer`` of paper 000 §3.2 (22 layers, dim 256, 8 heads in ``paper``).

    Args:
        cfg: layers / dim / heads.
        num_tokens: vocabulary size, ``num_embeddings + 1`` (codebook + BOS).
        seq_len: number of latent tokens ``L = prod(latent spatial shape)``; ``max_seq_len = L + 1``.

    The network uses PyTorch scaled-dot-product attention (causal) and carries no causal-mask
    buffers (see module docstring). Input ``(B, n ≤ L + 1)`` long → logits ``(B, n, num_tokens)``.
    """
    if num_tokens < 2 or seq_len < 1:
        raise ValueError(f"need num_tokens >= 2 and seq_len >= 1, got {num_tokens}, {seq_len}")
    model = DecoderOnlyTransformer(
        num_tokens=num_tokens,
        max_seq_len=1,  # real length installed below, without MONAI's L² mask buffers
        attn_layers_dim=cfg.dim,
        attn_layers_depth=cfg.num_layers,
        attn_layers_heads=cfg.heads,
        use_flash_attention=True,
    )
    max_seq_len = seq_len + 1
    model.max_seq_len = max_seq_len
    model.position_embeddings = AbsolutePositionalEmbedding(max_seq_len=max_seq_len, embedding_dim=cfg.dim)
    for block in model.blocks:
        attn = block.attn
        attn._buffers.pop("causal_mask", None)
        attn.causal_mask = torch.Tensor()  # unused: SDPA path with is_causal=True
        attn.sequence_length = max_seq_len
    return model


# --------------------------------------------------------------------------- orderings


def _hilbert_keys(coords: np.ndarray, bits: int) -> np.ndarray:
    """Hilbert-curve index of integer points ``coords (N, n)`` in a ``2**bits`` cube (Skilling 2004).

    Vectorised "AxestoTranspose" followed by bit interleaving; returns ``(N,)`` int64.
    """
    x = coords.astype(np.int64).T.copy()  # (n, N)
    n = x.shape[0]
    m = 1 << (bits - 1)
    q = m
    while q > 1:  # inverse undo
        p = q - 1
        for i in range(n):
            hit = (x[i] & q) != 0
            x[0] = np.where(hit, x[0] ^ p, x[0])
            t = np.where(hit, 0, (x[0] ^ x[i]) & p)
            x[0] ^= t
            x[i] ^= t
        q >>= 1
    for i in range(1, n):  # Gray encode
        x[i] ^= x[i - 1]
    t = np.zeros_like(x[0])
    q = m
    while q > 1:
        t = np.where((x[n - 1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x ^= t
    key = np.zeros_like(x[0])
    for b in range(bits - 1, -1, -1):
        for i in range(n):
            key = (key << 1) | ((x[i] >> b) & 1)
    return key


def parse_ordering(name: str) -> tuple[str, bool, bool]:
    """``(kind, transposed, reflected)`` of an ordering name ``<kind>[_transposed][_reflected]``.

    ``ValueError`` naming the valid names for anything else.
    """
    kind, flags = name, {}
    for suffix in reversed(ORDERING_TRANSFORMS):
        flags[suffix] = kind.endswith(f"_{suffix}")
        kind = kind.removesuffix(f"_{suffix}") if flags[suffix] else kind
    if kind not in ORDERING_KINDS:
        raise ValueError(f"unknown ordering {name!r}; choose one of {', '.join(ordering_names())}")
    return kind, flags["transposed"], flags["reflected"]


def ordering_names() -> list[str]:
    """Every valid ordering name: each kind plain, ``_transposed``, ``_reflected``, ``_transposed_reflected``."""
    return [f"{k}{t}{r}" for k in ORDERING_KINDS for t in ("", "_transposed") for r in ("", "_reflected")]


class LatentOrdering(Ordering):
    """MONAI ``Ordering`` of a latent grid, plus ``hilbert_curve``, a seeded ``random`` and the
    ``_transposed`` / ``_reflected`` variants of each (:func:`parse_ordering`).

    ``sequence[k]`` is the C-order flat latent index of the k-th token; ``inverse`` undoes it
    (``flat[:, sequence][:, inverse] == flat``). MONAI's ``get_sequence_ordering()`` /
    ``get_revert_sequence_ordering()`` return the same as NumPy arrays. ``kind`` is the full name.
    """

    def __init__(self, kind: str, spatial_shape: tuple[int, ...], seed: int = 0):
        base, transposed, reflected = parse_ordering(kind)
        if len(spatial_shape) not in (2, 3) or any(s < 1 for s in spatial_shape):
            raise ValueError(f"latent spatial shape must be 2D or 3D with positive sizes, got {spatial_shape}")
        self.seed = seed
        self.name = kind
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        dims = len(spatial_shape)
        monai_kind = base if base in {o.value for o in OrderingType} else OrderingType.RASTER_SCAN.value
        super().__init__(monai_kind, dims, (1, *self.spatial_shape),
                         reflected_spatial_dims=(True,) * dims if reflected else None,
                         transpositions_axes=(tuple(range(dims - 1, -1, -1)),) if transposed else None)
        if base != monai_kind:  # hilbert_curve: MONAI's constructor rejects it; rebuild with it
            self.ordering_type = base
            self.template = self._create_template()
            self._sequence_ordering = self._create_ordering()
            self._revert_sequence_ordering = np.argsort(self._sequence_ordering)
        self.sequence = torch.as_tensor(np.asarray(self._sequence_ordering, dtype=np.int64))
        self.inverse = torch.as_tensor(np.asarray(self._revert_sequence_ordering, dtype=np.int64))

    @property
    def kind(self) -> str:
        """The ordering's full name (``s_curve_transposed``); MONAI's ``ordering_type`` is its kind (``s_curve``)."""
        return self.name

    def __len__(self) -> int:
        return int(self.sequence.numel())

    def random_idx(self, rows: int, cols: int, depths: int | None = None) -> np.ndarray:  # type: ignore[override]
        idx = Ordering.raster_scan_idx(rows, cols, depths)
        return idx[np.random.default_rng(self.seed).permutation(len(idx))]

    def hilbert_curve_idx(self, rows: int, cols: int, depths: int | None = None) -> np.ndarray:
        """Grid points sorted by their Hilbert index in the enclosing power-of-two cube.

        For power-of-two cubes consecutive tokens are face neighbours; other shapes visit the
        cube's curve restricted to the grid (mostly neighbours, occasional jumps).
        """
        idx = Ordering.raster_scan_idx(rows, cols, depths)
        dims = (rows, cols) if depths is None else (rows, cols, depths)
        bits = max(1, math.ceil(math.log2(max(dims))))
        return idx[np.argsort(_hilbert_keys(idx, bits), kind="stable")]


def build_ordering(kind: str, latent_spatial_shape: tuple[int, ...], seed: int = 0) -> LatentOrdering:
    """Ordering ``kind`` (``raster_scan`` | ``s_curve`` | ``random`` | ``hilbert_curve``, optionally
    ``_transposed`` and/or ``_reflected``: :func:`parse_ordering`) of a 2D/3D latent."""
    return LatentOrdering(kind, tuple(latent_spatial_shape), seed=seed)


def tokens_to_sequence(indices: torch.Tensor, ordering: LatentOrdering, bos: int) -> torch.Tensor:
    """Codebook indices ``(B, *s)`` → token sequence ``(B, L + 1)`` long: flatten, reorder, prepend BOS."""
    if tuple(indices.shape[1:]) != ordering.spatial_shape:
        raise ValueError(f"indices of shape {tuple(indices.shape)} do not match ordering {ordering.spatial_shape}")
    flat = indices.reshape(indices.shape[0], -1).long()
    seq = flat[:, ordering.sequence.to(flat.device)]
    start = torch.full((flat.shape[0], 1), bos, dtype=torch.long, device=flat.device)
    return torch.cat([start, seq], dim=1)


def sequence_to_latent(
    values: torch.Tensor, ordering: LatentOrdering, spatial_shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Per-token values ``(B, L)`` in sequence order → latent layout ``(B, *s)`` (any dtype)."""
    shape = tuple(spatial_shape) if spatial_shape is not None else ordering.spatial_shape
    if values.shape[1] != len(ordering) or math.prod(shape) != len(ordering):
        raise ValueError(f"{values.shape[1]} values cannot fill latent {shape} of ordering {ordering.spatial_shape}")
    flat = values[:, ordering.inverse.to(values.device)]
    return flat.reshape(values.shape[0], *shape)


# --------------------------------------------------------------------------- likelihood


def sequence_log_likelihood(
    model: DecoderOnlyTransformer, seq: torch.Tensor, bf16: bool = False
) -> torch.Tensor:
    """Per-token log p(token_i | tokens_<i) of ``seq (B, L + 1)`` (BOS first) → ``(B, L)`` float32.

    Teacher-forced, one forward pass: ``logits = model(seq[:, :-1])``; log-softmax (over the whole
    vocabulary, BOS included, as in training) is taken in float32, so it cannot underflow even when
    the forward pass runs under bf16 autocast (``bf16=True``). Sum over tokens = log-likelihood of
    the scan's latent (paper 000 §1; the LTM score is its negative, :mod:`ldm_ood.scoring.likelihood`).
    Gradients flow if the caller enables them (training uses ``-result.mean()`` as the loss).
    """
    if seq.ndim != 2 or seq.shape[1] < 2:
        raise ValueError(f"seq must be (B, L + 1) with L >= 1, got {tuple(seq.shape)}")
    device = seq.device
    with autocast(device, bf16):
        logits = model(seq[:, :-1])
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, seq[:, 1:].unsqueeze(-1)).squeeze(-1)
