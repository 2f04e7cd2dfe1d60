"""LTM network, orderings and per-token log-likelihood (paper 000 §3.2) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.nets import DecoderOnlyTransformer

from ldm_ood.config import TransformerConfig
from ldm_ood.models.transformer import (
    ORDERING_KINDS,
    bos_index,
    build_ordering,
    build_transformer,
    causal_mask_bytes,
    sequence_log_likelihood,
    sequence_to_latent,
    tokens_to_sequence,
)

CFG = TransformerConfig(num_layers=2, dim=16, heads=2)
V = 7  # codebook size; BOS = 7, vocabulary 8


def _model(seq_len: int, seed: int = 0) -> DecoderOnlyTransformer:
    torch.manual_seed(seed)
    return build_transformer(CFG, num_tokens=V + 1, seq_len=seq_len).eval()


def test_build_transformer_has_no_mask_buffers_and_full_length():
    m = build_transformer(CFG, num_tokens=V + 1, seq_len=12)
    assert m.max_seq_len == 13
    assert m.position_embeddings.embedding.weight.shape == (13, 16)
    assert not [k for k in m.state_dict() if "causal_mask" in k]
    assert all(b.attn.use_flash_attention and b.attn.causal for b in m.blocks)
    assert m(torch.zeros(2, 13, dtype=torch.long)).shape == (2, 13, V + 1)


def test_sdpa_without_mask_buffer_equals_monai_explicit_masked_attention():
    """Our build (SDPA, no buffer) computes what MONAI's einsum + stored causal mask computes."""
    ours = _model(9)
    ref = DecoderOnlyTransformer(num_tokens=V + 1, max_seq_len=10, attn_layers_dim=16, attn_layers_depth=2,
                                 attn_layers_heads=2, use_flash_attention=False).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert all("causal_mask" in k for k in missing) and not unexpected
    x = torch.randint(0, V + 1, (3, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_causal_mask_bytes():
    assert causal_mask_bytes(12584, 22) == 4 * 12585**2 * 22  # ≈ 13.9 GB with paper's 22 layers
    assert causal_mask_bytes(3, 1) == 64


def test_sequence_log_likelihood_equals_stepwise_hand_log_softmax():
    torch.manual_seed(1)
    L = 6
    model = _model(L)
    seq = torch.cat([torch.full((2, 1), bos_index(V)), torch.randint(0, V, (2, L))], dim=1)
    got = sequence_log_likelihood(model, seq)
    assert got.shape == (2, L) and got.dtype == torch.float32
    for b in range(2):
        total = 0.0
        for i in range(L):
            with torch.no_grad():
                logits = model(seq[b : b + 1, : i + 1])[0, -1].double().tolist()  # prefix only
            mx = max(logits)
            log_z = mx + math.log(sum(math.exp(v - mx) for v in logits))
            lp = logits[int(seq[b, i + 1])] - log_z
            assert got[b, i].item() == pytest.approx(lp, abs=1e-5)
            total += lp
        assert got[b].sum().item() == pytest.approx(total, abs=1e-4)


def test_log_likelihood_no_underflow_with_huge_logits():
    model = _model(3)
    with torch.no_grad():
        model.to_logits.bias.fill_(0.0)
        model.to_logits.bias[0] = 1e4  # p(other tokens) = exp(-1e4): 0 in any float, finite in log space
    seq = torch.tensor([[V, 1, 2, 3]])
    ll = sequence_log_likelihood(model, seq)
    assert torch.isfinite(ll).all() and (ll < -5e3).all()


def test_causality_changing_token_k_leaves_earlier_log_probs_unchanged():
    torch.manual_seed(2)
    L, k = 8, 4  # change sequence position k (a latent token)
    model = _model(L)
    seq = torch.cat([torch.full((1, 1), V), torch.randint(0, V, (1, L))], dim=1)
    seq2 = seq.clone()
    seq2[0, k] = (seq[0, k] + 1) % V
    a, b = sequence_log_likelihood(model, seq), sequence_log_likelihood(model, seq2)
    # output j scores token j + 1 given tokens <= j: outputs j < k - 1 never see position k
    torch.testing.assert_close(a[:, : k - 1], b[:, : k - 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, k - 1], b[:, k - 1])  # token k itself is scored differently


def test_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(3)
    model = _model(10)
    seq = torch.cat([torch.full((2, 1), V), torch.randint(0, V, (2, 10))], dim=1)
    a = sequence_log_likelihood(model, seq)
    b = sequence_log_likelihood(model, seq, bf16=True)
    assert b.dtype == torch.float32
    torch.testing.assert_close(a.sum(1), b.sum(1), atol=0.2, rtol=0.02)


@pytest.mark.parametrize("kind", ORDERING_KINDS)
@pytest.mark.parametrize("shape", [(4, 6), (5, 3), (4, 4, 4), (3, 5, 2)])
def test_orderings_are_permutations_and_inverse_restores_latent(kind, shape):
    o = build_ordering(kind, shape)
    n = math.prod(shape)
    assert sorted(o.sequence.tolist()) == list(range(n))
    assert torch.equal(o.sequence[o.inverse], torch.arange(n))
    np.testing.assert_array_equal(o.get_sequence_ordering(), o.sequence.numpy())
    np.testing.assert_array_equal(o.get_revert_sequence_ordering(), o.inverse.numpy())
    idx = torch.randint(0, V, (2, *shape))
    seq = tokens_to_sequence(idx, o, bos=V)
    assert seq.shape == (2, n + 1) and (seq[:, 0] == V).all()
    assert torch.equal(seq[:, 1:], idx.reshape(2, -1)[:, o.sequence])
    assert torch.equal(sequence_to_latent(seq[:, 1:], o, shape), idx)
    values = torch.randn(2, n)  # per-token values (e.g. NLL) go back to the latent position they scored
    lat = sequence_to_latent(values, o)
    for k in (0, n // 2, n - 1):
        pos = np.unravel_index(int(o.sequence[k]), shape)
        assert lat[(1, *pos)] == values[1, k]


def test_raster_and_s_curve_by_hand():
    assert build_ordering("raster_scan", (2, 3)).sequence.tolist() == [0, 1, 2, 3, 4, 5]
    assert build_ordering("s_curve", (2, 3)).sequence.tolist() == [0, 1, 2, 5, 4, 3]
    assert build_ordering("raster_scan", (2, 2, 2)).sequence.tolist() == list(range(8))


@pytest.mark.parametrize("shape", [(8, 8), (4, 4, 4), (8, 8, 8)])
def test_hilbert_curve_steps_to_face_neighbours(shape):
    o = build_ordering("hilbert_curve", shape)
    coords = np.stack(np.unravel_index(o.sequence.numpy(), shape), axis=1)
    assert (np.abs(np.diff(coords, axis=0)).sum(1) == 1).all()
    assert build_ordering("hilbert_curve", (2, 2)).sequence.tolist() == [0, 1, 3, 2]  # U: (0,0) (0,1) (1,1) (1,0)


def test_random_ordering_is_seeded():
    a, b = build_ordering("random", (4, 5, 3)), build_ordering("random", (4, 5, 3))
    assert torch.equal(a.sequence, b.sequence)
    assert not torch.equal(a.sequence, build_ordering("random", (4, 5, 3), seed=1).sequence)
    assert not torch.equal(a.sequence, torch.arange(60))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown ordering"):
        build_ordering("zigzag", (4, 4))
    o = build_ordering("raster_scan", (4, 4))
    with pytest.raises(ValueError, match="do not match"):
        tokens_to_sequence(torch.zeros(1, 4, 5, dtype=torch.long), o, bos=V)
    with pytest.raises(ValueError, match="seq must be"):
        sequence_log_likelihood(_model(3), torch.zeros(1, 1, dtype=torch.long))
