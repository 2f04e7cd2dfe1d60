"""Paper 000 §2.3 anomaly maps: per-voxel statistics, z-scored MAE maps, written on the input's grid."""

import nibabel as nib
import numpy as np
import torch

from ldm_ood.config import load_config
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.methods.ldm.calibration import fit_calibration
from ldm_ood.methods.ldm.maps import VOXEL_STD_FLOOR, VoxelAccumulator, VoxelStats, anomaly_map, write_anomaly_map
from ldm_ood.methods.ldm.pipeline import score_rows
from ldm_ood.methods.ldm.similarity import ScanMetrics


def test_voxel_accumulator_matches_sample_mean_and_std_with_floor(tmp_path):
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 2, 3, 4, generator=g)
    maps[:, :, 0, 0] = 0.5  # constant voxel -> std floored
    acc = VoxelAccumulator()
    acc.add(maps[:2])
    acc.add(maps[2:])
    st = acc.finish((100, 200))
    torch.testing.assert_close(st.mean, maps.mean(0))
    torch.testing.assert_close(st.std, maps.std(0, unbiased=True).clamp_min(VOXEL_STD_FLOOR))
    assert torch.all(st.std[:, 0, 0] == VOXEL_STD_FLOOR)
    st.save(tmp_path / "v.safetensors")
    back = VoxelStats.load(tmp_path / "v.safetensors")
    assert back.t_values == (100, 200)
    torch.testing.assert_close(back.std, st.std)


def test_anomaly_map_is_mean_of_per_voxel_z_scores():
    mae = torch.tensor([[[[0.3, 0.1]], [[0.5, 0.2]]]])  # (B=1, n_map=2, 1, 2)
    mean = torch.tensor([[[0.1, 0.1]], [[0.1, 0.2]]])
    std = torch.tensor([[[0.1, 0.05]], [[0.2, 0.1]]])
    out = anomaly_map(mae, mean, std)
    expected = torch.tensor([[[((0.3 - 0.1) / 0.1 + (0.5 - 0.1) / 0.2) / 2, ((0.1 - 0.1) / 0.05 + (0.2 - 0.2) / 0.1) / 2]]])
    torch.testing.assert_close(out, expected)


def test_map_written_on_input_native_grid_and_affine(tmp_path):
    cfg = load_config(preset="tiny")
    # an oblique, anisotropic, non-RAS input whose shape differs from the 16^3 grid
    affine = np.array([[0.0, -2.0, 0.0, 30.0], [1.5, 0.0, 0.0, -12.0], [0.0, 0.0, 3.0, 7.0], [0, 0, 0, 1.0]])
    data = np.random.default_rng(0).uniform(-15, 100, size=(20, 13, 9)).astype(np.float32)
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(src))
    pre = Preprocessor(cfg.data)
    x, meta = pre.load(src)
    assert tuple(x.shape) == (1, 16, 16, 16)
    cal = fit_calibration(["v"], {"mse": np.array([[1.0]])}, [100], [100], 0.05)
    voxel = VoxelStats((100,), torch.zeros(1, 16, 16, 16), torch.ones(1, 16, 16, 16))
    mae = x[None].clone()  # so the map on the grid is the preprocessed scan itself
    met = ScanMetrics((100,), {"mse": torch.tensor([[2.0]])}, (100,), mae)
    row, amap = score_rows(cal, voxel, met)
    assert amap.shape == (16, 16, 16) and row["mse@100"] == 2.0
    out = write_anomaly_map(pre, amap, meta, tmp_path / "maps" / "scan.nii.gz")
    img = nib.load(str(out))
    assert img.shape == data.shape
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    # and the values land where the input's voxels were (the map is the inverse of the preprocessing)
    back = np.asarray(img.dataobj)
    expected = pre.invert(x[0].numpy(), meta).array
    np.testing.assert_allclose(back, expected, atol=1e-5)
    assert np.corrcoef(back.ravel(), np.clip((data.ravel() + 15) / 115, 0, 1))[0, 1] > 0.5
