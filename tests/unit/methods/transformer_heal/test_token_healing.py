"""Token healing of the transformer baselines (paper 001 Table 1, Pinaya et al. 2021) against definitions:
only masked tokens change, each from p(. | healed prefix), the ensemble's log-likelihood is the sum of its
members', nothing masked gives the first stage's reconstruction and a zero map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm_ood.config import load_config
from ldm_ood.methods.ltm.likelihood import LTMNetworks, position_log_likelihood
from ldm_ood.methods.segment.variants import upsample_mask
from ldm_ood.methods.transformer_heal.batch import HealModels, heal_batch, likelihoods
from ldm_ood.methods.transformer_heal.healing import heal_generators, heal_tokens, resample_mask
from ldm_ood.models.first_stage import build_first_stage, decode, decode_indices, encode, encode_indices
from ldm_ood.models.transformer import build_ordering, build_transformer, tokens_to_sequence

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = load_config(preset="tiny-2d", overrides={"token_healing": {"sampling": "argmax"}})
V = CFG.first_stage.num_embeddings  # 16 codes; BOS = 16
LATENT = (4, 4)  # 16^2 grid, 2 levels


def _transformer(seed: int):
    torch.manual_seed(seed)
    return build_transformer(CFG.transformer, V + 1, 16).eval()


def _models(kinds=("raster_scan",), heal_index=0) -> HealModels:
    torch.manual_seed(0)
    fs = build_first_stage(CFG.first_stage, 2).eval()
    nets = LTMNetworks(fs, [_transformer(10 + i) for i in range(len(kinds))], [build_ordering(k, LATENT) for k in kinds],
                       bos=V)
    return HealModels(nets, heal_index)


def _case(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (b, *LATENT), generator=g), torch.rand((b, *LATENT), generator=g) < 0.3


def test_only_masked_tokens_are_resampled():
    model, o = _transformer(0), build_ordering("s_curve_transposed", LATENT)
    idx, mask = _case()
    healed = heal_tokens(model, o, idx, mask, V, "sample", heal_generators([1, 2, 3], "cpu"))
    assert torch.equal(healed[~mask], idx[~mask])  # bit-identical elsewhere
    assert healed.dtype == torch.long and bool(((healed >= 0) & (healed < V)).all())
    assert bool((healed[mask] != idx[mask]).any())  # something was resampled
    assert torch.equal(heal_tokens(model, o, idx, torch.zeros_like(mask), V, "sample",
                                   heal_generators([1, 2, 3], "cpu")), idx)


def test_each_masked_token_is_the_mode_given_the_healed_prefix():
    model, o = _transformer(0), build_ordering("raster_scan_reflected", LATENT)
    idx, mask = _case()
    healed = heal_tokens(model, o, idx, mask, V, "argmax")
    seq = tokens_to_sequence(healed, o, V)
    masked = mask.reshape(3, -1)[:, o.sequence]
    with torch.no_grad():
        logits = model(seq[:, :-1])[..., :V]  # position k predicts token k from the healed tokens before it
    for b, k in torch.nonzero(masked).tolist():
        assert seq[b, k + 1].item() == logits[b, k].argmax().item()


def test_a_case_heals_the_same_alone_or_in_a_batch_and_never_draws_bos():
    model, o = _transformer(0), build_ordering("raster_scan", LATENT)
    idx, mask = _case()
    together = heal_tokens(model, o, idx, mask, V, "sample", heal_generators([5, 6, 7], "cpu"))
    alone = heal_tokens(model, o, idx[1:2], mask[1:2], V, "sample", heal_generators([6], "cpu"))
    assert torch.equal(together[1:2], alone)

    class LovesBos(torch.nn.Module):  # every logit but BOS's is 0: BOS would win every draw and argmax
        def forward(self, seq):
            out = torch.zeros(*seq.shape, V + 1)
            out[..., V] = 50.0
            return out

    for sampling in ("sample", "argmax"):
        healed = heal_tokens(LovesBos(), o, idx, mask, V, sampling, heal_generators([1, 2, 3], "cpu"))
        assert bool((healed < V).all())


def test_the_ensemble_log_likelihood_is_the_sum_of_its_members_by_hand():
    t0, t1 = _transformer(1), _transformer(2)
    o0, o1 = build_ordering("raster_scan", LATENT), build_ordering("raster_scan_reflected", LATENT)
    nets = LTMNetworks(build_first_stage(CFG.first_stage, 2).eval(), [t0, t1], [o0, o1], bos=V)
    idx = _case(2)[0]
    flat = idx.reshape(2, -1)
    expected = torch.zeros(2, 16)
    for model, seq_of_position in ((t0, flat), (t1, flat.flip(1))):  # raster: as is; reflected: read backwards
        seq = torch.cat([torch.full((2, 1), V), seq_of_position], 1)
        with torch.no_grad():
            logp = F.log_softmax(model(seq[:, :-1]).float(), -1).gather(-1, seq[:, 1:, None])[..., 0]
        expected += logp if model is t0 else logp.flip(1)  # back to latent positions
    got = position_log_likelihood(nets, idx)
    assert got.shape == (2, *LATENT)
    torch.testing.assert_close(got.reshape(2, -1), expected, rtol=0, atol=1e-6)


def test_nothing_masked_gives_the_reconstruction_and_a_zero_map():
    models = _models(("raster_scan", "s_curve_reflected"))
    x = torch.rand(2, 1, 16, 16)
    out = heal_batch(models, x, -float("inf"), CFG, [0, 1])
    tokens = encode_indices(models.networks.first_stage, x)
    assert not out.mask.any() and torch.equal(out.healed_tokens, tokens) and torch.equal(out.tokens, tokens)
    with torch.no_grad():
        assert torch.equal(out.healed, models.networks.first_stage.decode_samples(tokens))
    torch.testing.assert_close(out.healed, decode(models.networks.first_stage, encode(models.networks.first_stage, x),
                                                  requantize=False), rtol=0, atol=1e-5)
    assert torch.equal(out.anomaly_map, torch.zeros_like(x))
    _, ll = likelihoods(models, x)
    assert torch.equal(out.log_likelihood, ll)
    torch.testing.assert_close(out.pred_score, -ll.flatten(1).double().sum(1))  # sum of the members' NLL


def test_the_map_is_the_residual_times_the_smoothed_mask_of_resampled_tokens():
    models = _models(("raster_scan",))
    x = torch.rand(2, 1, 16, 16)
    _, ll = likelihoods(models, x)
    threshold = float(ll.flatten().sort().values[8])  # the 8 least likely positions of the batch
    out = heal_batch(models, x, threshold, CFG, [0, 1])
    assert torch.equal(out.mask, resample_mask(ll, threshold)) and int(out.mask.sum()) == 8
    assert torch.equal(out.healed, decode_indices(models.networks.first_stage, out.healed_tokens))
    smooth = upsample_mask(out.mask, (16, 16), CFG.segment.gaussian_sigma)
    torch.testing.assert_close(out.anomaly_map, (x - out.healed).abs() * smooth, rtol=0, atol=0)
    assert torch.equal(out.healed_tokens[~out.mask], out.tokens[~out.mask])
