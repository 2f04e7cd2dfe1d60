"""Paper 001 residual maps and variants: mask upsampling/smoothing, FPR threshold, one batch."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ldm_ood.config import ConfigError, load_config
from ldm_ood.methods.segment.batch import SegmentModels, case_seeds, segment_batch
from ldm_ood.methods.segment.variants import foreground, fpr_threshold, residual_map, upsample_mask, variant_spec
from ldm_ood.models.diffusion import build_ddpm_scheduler, build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage, decode, encode

pytestmark = pytest.mark.usefixtures("one_thread")


def test_upsampled_smoothed_mask_has_the_image_shape_and_scaled_sigma():
    m = torch.zeros(2, 4, 4, dtype=torch.bool)
    m[0, 1, 2] = True
    out = upsample_mask(m, (16, 16), sigma_latent=1.0)
    assert out.shape == (2, 1, 16, 16) and out.dtype == torch.float32
    assert torch.count_nonzero(out[1]) == 0
    # by hand: nearest upsampling by 4 -> a 4x4 block at rows 4:8, cols 8:12, then σ = 1 latent = 4 pixels
    block = np.zeros((16, 16))
    block[4:8, 8:12] = 1.0
    np.testing.assert_allclose(out[0, 0].numpy(), gaussian_filter(block, 4.0, mode="nearest"), rtol=1e-5, atol=1e-7)
    assert out[0, 0, 5, 9] > out[0, 0, 0, 0] >= 0
    # σ = 0: the plain nearest-neighbour mask; 3D works the same way
    assert torch.equal(upsample_mask(m, (16, 16), 0.0)[0, 0] > 0.5, torch.from_numpy(block > 0.5))
    assert upsample_mask(torch.ones(1, 2, 3, 2, dtype=torch.bool), (8, 12, 8), 1.0).shape == (1, 1, 8, 12, 8)


def test_residual_map_foreground_and_fpr_threshold():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1:3, 1:3] = 1.0
    healed = torch.full_like(x, 0.25)
    mask = torch.zeros_like(x)
    mask[0, 0, 1, 1] = 0.5
    torch.testing.assert_close(residual_map(x, healed, None), (x - 0.25).abs())
    r = residual_map(x, healed, mask)
    assert r[0, 0, 1, 1].item() == pytest.approx(0.375) and torch.count_nonzero(r) == 1
    fg = foreground(x)
    assert fg.sum() == 4 and fg[0, 0, 1, 1]
    vals = np.arange(100, dtype=np.float32)
    assert fpr_threshold(vals, 0.05) == pytest.approx(np.quantile(vals, 0.95))
    assert (vals > fpr_threshold(vals, 0.05)).mean() == pytest.approx(0.05)


def test_variant_specs_follow_paper_tables_1_and_3():
    cfg = load_config(preset="cpu-2d").segment  # kl_num_t None, start 500, ddim 50
    a, b, c, d = (variant_spec(v, cfg) for v in "abcd")
    assert a.kl_t is None and not a.heal_with_mask and not a.mask_residual and len(a.timesteps) == 501
    assert b.kl_t == c.kl_t and len(c.kl_t) == 201 and not b.heal_with_mask and b.mask_residual
    assert c.heal_with_mask and c.sampler == "ddpm" and c.timesteps == a.timesteps
    assert d.sampler == "ddim" and len(d.timesteps) == 50 and len(d.kl_t) == 50 and d.kl_key == "t400-600_n50"
    assert c.kl_key == "t400-600_n201"
    with pytest.raises(ConfigError):
        variant_spec("e", cfg)


@pytest.fixture(scope="module")
def models():
    cfg = load_config(preset="tiny-2d")
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, 2).eval()
    unet = build_unet(cfg.ldm, 2, cfg.first_stage.embedding_dim).eval()
    return cfg, SegmentModels(fs, unet, build_ddpm_scheduler(cfg.ldm), 0.7, latent_multiple(cfg.ldm), 2)


def _small(cfg, **kw):
    return cfg.segment.model_copy(update={"start_t": 6, "ddim_steps": 3, "kl_num_t": 2, "score_num_t": 3, **kw})


def test_segment_batch_variants_shapes_and_mask_use(models):
    cfg, m = models
    x = torch.rand(3, 1, 16, 16)
    ids = ["a1", "a2", "a3"]
    scfg = _small(cfg)
    spec_c = variant_spec("c", scfg)
    thr = torch.full((4, 4), 1e9)  # nothing exceeds: the mask is empty
    out = segment_batch(m, x, spec_c, scfg, thr, case_seeds(ids, 0))
    assert out.healed.shape == x.shape and out.anomaly_map.shape == x.shape and out.score.score.shape == (3,)
    assert out.kl_map.shape == (3, 4, 4) and not out.latent_mask.any()
    assert torch.count_nonzero(out.anomaly_map) == 0  # empty mask -> map is zero everywhere
    # empty mask: healed = decode(z0) exactly as the plain VQ-VAE reconstruction
    torch.testing.assert_close(out.healed, decode(m.first_stage, encode(m.first_stage, x), True))
    # variant a: residual only, no KL map; the image-level score is the same (same generators)
    out_a = segment_batch(m, x, variant_spec("a", scfg), scfg, None, case_seeds(ids, 0))
    assert out_a.kl_map is None and torch.count_nonzero(out_a.anomaly_map) > 0
    torch.testing.assert_close(out_a.score.score, out.score.score)
    assert (out.score.score > 0).all()
    # full mask (threshold -inf): b multiplies the residual by the (all ones) smoothed mask = a's map
    out_b = segment_batch(m, x, variant_spec("b", scfg), scfg, torch.full((4, 4), -1e9), case_seeds(ids, 0))
    torch.testing.assert_close(out_b.anomaly_map, out_a.anomaly_map)
    # d runs DDIM with its own KL set
    spec_d = variant_spec("d", scfg)
    out_d = segment_batch(m, x, spec_d, scfg, torch.zeros(4, 4), case_seeds(ids, 0))
    assert out_d.latent_mask.all() and out_d.anomaly_map.shape == x.shape
    with pytest.raises(ValueError):
        segment_batch(m, x, spec_c, scfg, None, [0, 1, 2])


def test_segment_batch_results_do_not_depend_on_the_batch(models):
    cfg, m = models
    scfg = _small(cfg)
    x = torch.rand(2, 1, 16, 16)
    spec = variant_spec("c", scfg)
    thr = torch.full((4, 4), 0.0)
    both = segment_batch(m, x, spec, scfg, thr, case_seeds(["p", "q"], 3))
    one = segment_batch(m, x[1:], spec, scfg, thr, case_seeds(["q"], 3))
    torch.testing.assert_close(both.anomaly_map[1:], one.anomaly_map, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both.score.score[1:], one.score.score, rtol=1e-4, atol=1e-6)
