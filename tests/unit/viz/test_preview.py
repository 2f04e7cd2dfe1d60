"""Preview helpers: display orientation from the affine, overlays and contours."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from ldm_ood.viz.preview import (
    Panel,
    display_slice,
    display_views,
    render_panel,
    save_preview_grid,
    to_ras,
    triplanar,
    unit_intensity,
    volume_panels,
)


def test_triplanar_orientation_independent_of_axis_order():
    v = np.random.default_rng(0).random((4, 5, 6))
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    sag, cor, ax = triplanar(v, ras)
    # sagittal: superior (last z) on top, anterior (last y) on the left
    assert sag.shape == (6, 5) and sag[0, 0] == v[2, 4, 5]
    assert cor[0, 0] == v[3, 2, 5]  # coronal: patient right (last x) on the left
    assert ax[0, 0] == v[3, 4, 3]  # axial: anterior on top, right on the left
    # the same volume stored L-S-P permuted: identical panels
    perm = np.transpose(v, (2, 0, 1))[:, ::-1, ::-1]  # axes: z, -x, -y
    aff = np.array([[0, -1.0, 0, 3], [0, 0, -1.0, 4], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(to_ras(perm, aff), v)
    for p, q in zip(triplanar(perm, aff), (sag, cor, ax)):
        np.testing.assert_array_equal(p, q)


def test_render_overlay_and_contour_pixels():
    img = np.zeros((4, 4))
    ov = np.full((4, 4), np.nan)
    ov[0, 0] = 1.0
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    rgb = render_panel(Panel(img, overlay=ov, overlay_min=0.0, overlay_max=1.0, alpha=1.0, contour=mask,
                             overlay_cmap="gray", contour_color="red"), cell=4)
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_allclose(rgb[0, 0], [1, 1, 1])  # overlay drawn with alpha 1
    np.testing.assert_allclose(rgb[3, 3], [0, 0, 0])  # transparent overlay (NaN): image shows
    np.testing.assert_allclose(rgb[1, 1], [1, 0, 0])  # mask boundary in red


def test_save_grid_writes_png(tmp_path):
    v = np.random.default_rng(0).random((8, 8, 8))
    panels = volume_panels(v, "a", overlay=v, contour=v > 0.5) + [Panel(np.eye(5), "b")]
    path = save_preview_grid(panels, tmp_path / "p.png", ncols=2, cell=32)
    with PILImage.open(path) as im:
        assert im.size[0] >= 64 and im.size[1] >= 2 * 32


def test_display_views_and_unit_intensity():
    v = np.random.default_rng(0).random((4, 5, 6))
    assert [a.shape for a in display_views(v)] == [(6, 5), (6, 4), (5, 4)]
    np.testing.assert_array_equal(display_views(v[..., 0])[0], display_slice(v[..., 0].astype(np.float32)))
    np.testing.assert_allclose(unit_intensity(np.array([-1000.0, -15.0, 42.5, 100.0, 900.0])), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(unit_intensity(np.array([2.0, 4.0, 6.0]), modality="other"), [0, 0.5, 1])


def test_row_preview_lays_out_one_row_per_tensor_and_clips_to_unit_range(tmp_path, monkeypatch):
    import torch

    from ldm_ood.viz import preview

    seen = {}
    real = preview.save_preview_grid
    monkeypatch.setattr(preview, "save_preview_grid",
                        lambda panels, path, ncols, cell: seen.update(panels=panels, ncols=ncols) or real(panels, path, ncols, cell))
    x = torch.zeros(2, 1, 6, 6, 6)
    x[0, 0, 3, 3, 3] = 2.0  # clipped to 1
    path = preview.save_row_preview([("input", x), ("error", -x)], tmp_path / "e.png", cell=24)
    assert path.exists() and seen["ncols"] == 6 and len(seen["panels"]) == 12  # 2 cases x 3 planes per row
    titles = [p.title for p in seen["panels"]]
    assert titles[0] == "input" and titles[6] == "error" and not any(titles[1:6])
    assert all(p.image.max() <= 1.0 and p.image.min() >= 0.0 for p in seen["panels"])
    assert seen["panels"][2].image.max() == 1.0  # the axial plane through the centre holds the bright voxel
    two_d = preview.save_row_preview([("slices", np.full((3, 1, 4, 5), 0.5))], tmp_path / "s.png")
    assert two_d.exists() and seen["ncols"] == 3
    with pytest.raises(ValueError, match="row 'b' has 3 panels, the first row 6"):
        preview.save_row_preview([("a", x), ("b", x[:1])], tmp_path / "bad.png")
