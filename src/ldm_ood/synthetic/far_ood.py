"""Far-OOD classes of the built-in benchmark (the role of paper 000's Decathlon sets, §3.1).

Each class is a function ``(rng, shape, affine) -> (array, is_ct)`` that draws one case on the
benchmark grid (RAS ``affine``, mm). Like the paper's Decathlon volumes, every class is defined in
world millimetres and sampled onto the head grid, so larger bodies are cropped and smaller fields of
view are zero-padded. CT classes return Hounsfield units (the CT window is applied by the
preprocessing); the others return [0, 1] after min–max rescaling (paper 000 §3.1, non-CT images).

=====================  ==========================================================================
``far_mr_t1``          real: nilearn's MNI152 T1 MR template, warped like a subject (anatomy.py)
``far_mr_epi``         real: nibabel's test EPI (``example4d.nii.gz``), random volume and pose
``far_mr_brain_crop``  real: nibabel's test T1 (``anatomical.nii``, 66×82×50 mm around the ventricles, 2 mm),
                       random pose (the role of the paper's cropped Hippocampal MR)
``far_mr_phantom``     real: nibabel's Philips PAR/REC scan of a spherical phantom (EPI, 64×64×9 at
                       3.75×3.75×8 mm, oblique), random dynamic and pose
``far_ct_body``        real: pydicom's ``CT_small.dcm`` (an abdominal CT slice from NEMA's CT1_UNC, in HU)
                       extruded along I–S as a body cylinder, random pose
``far_ct_abdomen``     abdomen CT phantom: body + fat, liver, spleen, kidneys, spine, aorta, gas
``far_ct_chest``       chest CT phantom: lungs (−850 HU), heart, ribs, sternum, spine, aorta
``far_shepp_logan``    3D Shepp–Logan phantom with jittered ellipsoids
``far_noise``          smoothed Gaussian-noise texture filling the volume
=====================  ==========================================================================
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from .anatomy import draw_subject, load_head_template, minmax, mr_t1, rotation, template_resolution, world_coords

FarFn = Callable[[np.random.Generator, tuple[int, ...], np.ndarray], tuple[np.ndarray, bool]]


def _spacing(affine: np.ndarray) -> float:
    return float(np.abs(affine[:3, :3]).sum(0).mean())


def _posed_coords(rng: np.random.Generator, shape, affine, max_deg: float = 10.0, scale: float = 0.1) -> np.ndarray:
    """World mm of the grid seen from a randomly rotated (about I–S), scaled and shifted body."""
    p = world_coords(shape, affine).reshape(3, -1)
    r = rotation((0.0, 0.0, rng.uniform(-max_deg, max_deg)))
    s = rng.uniform(1 - scale, 1 + scale, 3)
    q = (r.T @ (p - rng.uniform(-10, 10, 3)[:, None])) / s[:, None]
    return q.reshape(3, *shape)


def _ellipsoid(q: np.ndarray, centre, axes) -> np.ndarray:
    d = (q - np.asarray(centre, dtype=np.float64).reshape(3, *([1] * (q.ndim - 1)))) / np.asarray(axes).reshape(
        3, *([1] * (q.ndim - 1))
    )
    return (d**2).sum(0) <= 1.0


def _cylinder(q: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((q[0] - cx) / ax) ** 2 + ((q[1] - cy) / ay) ** 2 <= 1.0


def _body(q: np.ndarray, rng: np.random.Generator, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """HU of a body cross-section (fat + muscle wall, 40 HU inside, air outside) and the inner mask."""
    fat = rng.uniform(10, 30)
    hu = np.full(q.shape[1:], -1000.0, dtype=np.float32)
    hu[_cylinder(q, 0, 0, a, b)] = -100.0
    hu[_cylinder(q, 0, 0, a - fat, b - fat)] = 50.0
    inner = _cylinder(q, 0, 0, a - fat - 8, b - fat - 8)
    hu[inner] = 40.0
    return hu, inner


def _spine(q: np.ndarray, hu: np.ndarray, y: float, rng: np.random.Generator) -> None:
    """Vertebral bodies (bone, discs every ~30 mm) and the spinal canal, in place."""
    period = rng.uniform(26, 34)
    disc = (np.mod(q[2], period) < 6)
    hu[_cylinder(q, 0, y, 20, 16)] = np.where(disc, 80.0, 450.0)[_cylinder(q, 0, y, 20, 16)]
    hu[_cylinder(q, 0, y - 28, 8, 8)] = 20.0
    hu[_cylinder(q, 0, y - 28, 14, 14) & ~_cylinder(q, 0, y - 28, 9, 9)] = 600.0


def ct_abdomen(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """Abdomen CT phantom in HU."""
    q = _posed_coords(rng, shape, affine)
    j = lambda: rng.uniform(-8, 8)  # noqa: E731 - organ position jitter, mm
    hu, inner = _body(q, rng, rng.uniform(140, 175), rng.uniform(100, 130))
    hu[_ellipsoid(q, (60 + j(), 10 + j(), 30 + j()), (70, 60, 75)) & inner] = rng.uniform(55, 70)  # liver
    hu[_ellipsoid(q, (-70 + j(), -20 + j(), 40 + j()), (35, 45, 50)) & inner] = rng.uniform(45, 55)  # spleen
    for sx in (-1, 1):
        hu[_ellipsoid(q, (sx * 65 + j(), -45 + j(), -40 + j()), (25, 30, 55)) & inner] = 30.0  # kidneys
    _spine(q, hu, -70 + j(), rng)
    hu[_cylinder(q, -20 + j(), -40, 12, 12) & inner] = rng.uniform(40, 180)  # aorta (+/- contrast)
    for _ in range(int(rng.integers(3, 8))):  # bowel gas
        c = (rng.uniform(-60, 40), rng.uniform(-10, 60), rng.uniform(-90, 90))
        hu[_ellipsoid(q, c, rng.uniform(6, 20, 3)) & inner] = -900.0
    hu += rng.normal(0, rng.uniform(5, 12), size=shape).astype(np.float32)
    return hu.astype(np.float32), True


def ct_chest(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """Chest CT phantom in HU."""
    q = _posed_coords(rng, shape, affine)
    j = lambda: rng.uniform(-6, 6)  # noqa: E731
    a, b = rng.uniform(150, 175), rng.uniform(100, 125)
    hu, inner = _body(q, rng, a, b)
    ribs = (np.mod(q[2], rng.uniform(22, 28)) < 9) & _cylinder(q, 0, 0, a - 32, b - 32) & ~_cylinder(q, 0, 0, a - 40, b - 40)
    hu[ribs] = 700.0
    for sx in (-1, 1):
        lung = _ellipsoid(q, (sx * 65 + j(), j(), j()), (rng.uniform(45, 60), rng.uniform(60, 75), 140))
        vessels = ndi.gaussian_filter(rng.normal(size=shape), 1.0) > 1.2
        hu[lung & inner] = np.where(vessels, -300.0, -850.0)[lung & inner]
    hu[_ellipsoid(q, (-25 + j(), 25 + j(), -30 + j()), (50, 45, 55)) & inner] = rng.uniform(35, 50)  # heart
    hu[_cylinder(q, -10 + j(), -40, 13, 13) & inner] = rng.uniform(40, 200)  # aorta
    hu[_cylinder(q, 0, b - 22, 14, 6)] = 500.0  # sternum
    _spine(q, hu, -75 + j(), rng)
    hu += rng.normal(0, rng.uniform(5, 12), size=shape).astype(np.float32)
    return hu.astype(np.float32), True


# 3D Shepp–Logan (Kak & Slaney modified): intensity, semi-axes (a, b, c), centre (x, y, z), angle°
_SHEPP_LOGAN = np.array([
    [1.0, .690, .920, .810, 0, 0, 0, 0],
    [-.8, .6624, .874, .780, 0, -.0184, 0, 0],
    [-.2, .110, .310, .220, .22, 0, 0, -18],
    [-.2, .160, .410, .280, -.22, 0, 0, 18],
    [.1, .210, .250, .410, 0, .35, -.15, 0],
    [.1, .046, .046, .050, 0, .1, .25, 0],
    [.1, .046, .046, .050, 0, -.1, .25, 0],
    [.1, .046, .023, .050, -.08, -.605, 0, 0],
    [.1, .023, .023, .020, 0, -.606, 0, 0],
    [.1, .023, .046, .020, .06, -.605, 0, 0],
])


def shepp_logan(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """3D Shepp–Logan phantom (unit cube = ±95 mm) with jittered sizes, centres and intensities."""
    q = _posed_coords(rng, shape, affine) / 95.0
    vol = np.zeros(shape, dtype=np.float32)
    for inten, a, b, c, x0, y0, z0, phi in _SHEPP_LOGAN:
        r = rotation((0, 0, phi + rng.uniform(-5, 5))).T
        d = (r @ (q.reshape(3, -1) - (np.array([x0, y0, z0]) + rng.uniform(-.02, .02, 3))[:, None]))
        inside = ((d / (np.array([a, b, c]) * rng.uniform(.9, 1.1, 3))[:, None]) ** 2).sum(0) <= 1
        vol.reshape(-1)[inside] += inten * rng.uniform(.8, 1.2)
    vol += rng.normal(0, 0.01, size=shape).astype(np.float32)
    return minmax(vol), False


def noise_texture(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """Gaussian noise smoothed with a random σ (0.5–3 voxels), min–max rescaled."""
    return minmax(ndi.gaussian_filter(rng.normal(size=shape), rng.uniform(0.5, 3.0))), False


@functools.lru_cache(maxsize=4)
def _nibabel_test_image(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(data (X, Y, Z[, T]) float32, affine (4, 4))`` of a file shipped in nibabel's ``tests/data``."""
    import nibabel as nib

    img = nib.load(os.path.join(os.path.dirname(nib.__file__), "tests", "data", name))
    return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64)


def _posed_volume(rng: np.random.Generator, vol: np.ndarray, vol_affine: np.ndarray, shape, affine,
                  cval: float = 0.0) -> np.ndarray:
    """``vol`` (X, Y, Z; its RAS ``vol_affine``) resampled onto the grid, its centre at the grid's world
    origin seen through a random pose (:func:`_posed_coords`); linear interpolation, ``cval`` outside."""
    centre = vol_affine[:3, :3] @ ((np.array(vol.shape) - 1) / 2) + vol_affine[:3, 3]
    q = _posed_coords(rng, shape, affine).reshape(3, -1) + centre[:, None]
    inv = np.linalg.inv(vol_affine)
    vox = inv[:3, :3] @ q + inv[:3, 3:4]
    return ndi.map_coordinates(vol, vox, order=1, mode="constant", cval=cval).reshape(shape)


def mr_epi(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """One volume of nibabel's test EPI (128×96×24, oblique 2×2×2.2 mm), randomly posed on the grid."""
    data, epi_affine = _nibabel_test_image("example4d.nii.gz")
    vol = data[..., int(rng.integers(data.shape[-1]))]
    return minmax(_posed_volume(rng, vol, epi_affine, shape, affine)), False


def mr_brain_crop(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """nibabel's test T1 (``anatomical.nii``: 33×41×25 at 2 mm, a crop around the lateral ventricles),
    randomly posed: a real MR with a small field of view, zero-padded on the head grid."""
    vol, vol_affine = _nibabel_test_image("anatomical.nii")
    return minmax(_posed_volume(rng, vol, vol_affine, shape, affine)), False


def mr_phantom(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """One dynamic of nibabel's PAR/REC phantom scan (``phantom_EPI_asc_CLEAR_2_1``: a spherical MR
    phantom, 64×64×9 at 3.75×3.75×8 mm, oblique), randomly posed."""
    data, vol_affine = _nibabel_test_image("phantom_EPI_asc_CLEAR_2_1.PAR")
    vol = data[..., int(rng.integers(data.shape[-1]))]
    return minmax(_posed_volume(rng, vol, vol_affine, shape, affine)), False


#: ``CT_small.dcm`` was downsized from CT1_UNC's 512² to 128² without updating PixelSpacing (pydicom's
#: test-file README): its true pixel is this many times the stored spacing (a 338 mm body field of view)
CT_SMALL_DOWNSIZE = 4


@functools.lru_cache(maxsize=1)
def _ct_slice() -> tuple[np.ndarray, np.ndarray]:
    """``(hu (rows, cols) float32, in-plane affine (3, 3): (col, row, 1) -> RAS mm (x, y, 1), centred)``
    of pydicom's ``CT_small.dcm``."""
    import pydicom

    path = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    row_dir, col_dir = (np.asarray(ds.ImageOrientationPatient, dtype=np.float64).reshape(2, 3)[:, :2]
                        * np.array([-1.0, -1.0]))  # LPS -> RAS, in-plane (x, y)
    d_row, d_col = (float(v) * CT_SMALL_DOWNSIZE for v in ds.PixelSpacing)
    m = np.eye(3)
    m[:2, 0], m[:2, 1] = row_dir * d_col, col_dir * d_row  # column index moves along the row direction
    m[:2, 2] = -m[:2, :2] @ ((np.array(hu.shape[::-1]) - 1) / 2)
    return hu, m


def ct_body(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """pydicom's real abdominal CT slice (HU) extruded along I–S, randomly posed; air (−1000 HU) outside."""
    hu, m = _ct_slice()
    q = _posed_coords(rng, shape, affine).reshape(3, -1)
    col, row = (np.linalg.inv(m) @ np.vstack([q[:2], np.ones(q.shape[1])]))[:2]
    out = ndi.map_coordinates(hu, np.vstack([row, col]), order=1, mode="constant", cval=-1000.0)
    return out.reshape(shape).astype(np.float32), True


def mr_t1_case(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """nilearn MNI152 T1 MR, warped with a random subject's pose and deformation."""
    tpl = load_head_template(template_resolution(_spacing(affine)))
    return mr_t1(draw_subject(rng), tpl, shape, affine, rng), False


FAR_OOD_CLASSES: dict[str, FarFn] = {
    "far_mr_t1": mr_t1_case,
    "far_mr_epi": mr_epi,
    "far_mr_brain_crop": mr_brain_crop,
    "far_mr_phantom": mr_phantom,
    "far_ct_body": ct_body,
    "far_ct_abdomen": ct_abdomen,
    "far_ct_chest": ct_chest,
    "far_shepp_logan": shepp_logan,
    "far_noise": noise_texture,
}

#: the classes drawn from real scans shipped inside installed packages (nilearn, nibabel, pydicom)
REAL_FAR_OOD_CLASSES: tuple[str, ...] = ("far_mr_t1", "far_mr_epi", "far_mr_brain_crop", "far_mr_phantom", "far_ct_body")
