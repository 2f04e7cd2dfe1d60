"""Every preset has the ``ae`` and ``vae`` sections; the 2D presets' networks fit their grids."""

import pytest
import torch

from ldm_ood.config import PRESETS, load_config
from ldm_ood.methods.autoencoder.model import build_autoencoder, reconstruct


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.endswith("-2d")])
def test_the_2d_presets_build_both_baselines_at_their_grid(preset):
    cfg = load_config(preset=preset)
    x = torch.rand(1, 1, *cfg.data.grid)
    for kind in ("ae", "vae"):
        sec = getattr(cfg, kind)
        assert 0 < sec.top_k_fraction <= 1 and sec.median_size >= 1
        assert reconstruct(build_autoencoder(kind, sec, cfg.data.grid).eval(), x).shape == x.shape


def test_paper_2d_is_baur_et_al_2021():
    cfg = load_config(preset="paper-2d")
    ae, vae = cfg.ae, cfg.vae
    assert ae.channels == (32, 64, 128, 128) and ae.strides == (2, 2, 2, 2) and ae.kernel_size == 5
    assert vae.channels == (32, 64, 128, 128, 16) and vae.strides == (2, 2, 2, 2, 1) and vae.latent_size == 128
    for s in (ae, vae):
        assert (s.norm, s.reconstruction_loss, s.adam_betas, s.median_size, s.top_k_fraction) == (
            "batch", "l1", (0.5, 0.999), 5, 0.01)
        assert (s.optim.lr, s.optim.batch_size, s.optim.patience) == (1e-4, 8, 5)
    assert vae.kl_weight == 1.0


@pytest.mark.parametrize("preset", [p for p in PRESETS if not p.endswith("-2d")])
def test_the_3d_presets_have_the_sections_too(preset):
    cfg = load_config(preset=preset)
    assert cfg.ae.channels and cfg.vae.latent_size >= 1
