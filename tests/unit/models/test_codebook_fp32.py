"""Every nearest-codebook search runs in float32, also inside bf16 autocast (training, scoring, LTM)."""

import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.models.first_stage import build_first_stage, decode, encode, encode_indices, encoder_output, indices_fp32

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_like(seed=0, n=512):
    """A VQVAE whose codebook has the scale of trained codes (|e| ≈ 10) and latents near the codes."""
    cfg = load_config(preset="tiny").first_stage
    torch.manual_seed(seed)
    model = build_first_stage(cfg, 3).eval()
    emb = model.quantizer.quantizer.embedding.weight
    with torch.no_grad():
        emb.copy_(torch.randn_like(emb) * 3 + 8)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, emb.shape[0], (n,), generator=g)
    z = emb[idx].detach() + 1.5 * torch.randn(n, emb.shape[1], generator=g)
    return model, z.T.reshape(1, emb.shape[1], 8, 8, 8).contiguous()


def _exact_indices(model, z):
    emb = model.quantizer.quantizer.embedding.weight.double()
    flat = z.double().movedim(1, -1).reshape(-1, emb.shape[1])
    return torch.cdist(flat, emb).argmin(1).reshape(z.shape[0], *z.shape[2:])


def test_fp32_search_inside_bf16_autocast_picks_the_exact_nearest_codes():
    model, z = _trained_like()
    exact = _exact_indices(model, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = indices_fp32(model, z)
        monai_raw = model.quantizer.quantize(z)  # what MONAI does on CPU under autocast
    assert torch.equal(ours, exact)
    assert not torch.equal(monai_raw, exact)  # bf16 distances flip codes: the test can fail


def test_bf16_and_fp32_encoders_feed_the_same_fp32_search_and_requantising_decode_is_consistent():
    model, _ = _trained_like(1)
    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    for bf16 in (False, True):
        z = encoder_output(model, x, bf16)
        assert torch.equal(encode_indices(model, x, bf16), _exact_indices(model, z))
        q = encode(model, x, bf16)
        codes = model.quantizer.embed(_exact_indices(model, z))
        torch.testing.assert_close(q, codes)
        # requantising decode of an already quantised latent = decoding the latent as is
        torch.testing.assert_close(decode(model, q, requantize=True, bf16=bf16), decode(model, q, requantize=False, bf16=bf16))
