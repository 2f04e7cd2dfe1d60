"""Far-OOD classes of the built-in benchmark (the role of paper 000's Decathlon sets, §3.1).

Each class is a function ``(rng, shape, affine) -> (array, is_ct)`` that draws one case on the
benchmark grid (RAS ``affine``, mm). Like the paper's Decathlon volumes, every class is defined in
world millimetres and sampled onto the head grid, so larger bodies are cropped and smaller fields of
view are zero-padded. CT classes return Hounsfield units (the CT window is applied by the
preprocessing); the others return [0, 1] after min–max rescaling (paper 000 §3.1, non-CT images).

=====================  ==========================================================================
``far_mr_t1``          real: nilearn's MNI152 T1 MR template, warped like a subject (anatomy.py)
``far_mr_epi``         real: nibabel's test EPI (``example4d.nii.gz``), random volume and pose
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


@functools.lru_cache(maxsize=1)
def _epi() -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    path = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "example4d.nii.gz")
    img = nib.load(path)
    return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64)


def mr_epi(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """One volume of nibabel's test EPI (128×96×24, oblique 2×2×2.2 mm), randomly posed on the grid."""
    data, epi_affine = _epi()
    vol = data[..., int(rng.integers(data.shape[-1]))]
    centre = epi_affine[:3, :3] @ ((np.array(vol.shape) - 1) / 2) + epi_affine[:3, 3]
    q = _posed_coords(rng, shape, affine).reshape(3, -1) + centre[:, None]
    inv = np.linalg.inv(epi_affine)
    vox = inv[:3, :3] @ q + inv[:3, 3:4]
    out = ndi.map_coordinates(vol, vox, order=1, mode="constant", cval=0.0).reshape(shape)
    return minmax(out), False


def mr_t1_case(rng: np.random.Generator, shape, affine) -> tuple[np.ndarray, bool]:
    """nilearn MNI152 T1 MR, warped with a random subject's pose and deformation."""
    tpl = load_head_template(template_resolution(_spacing(affine)))
    return mr_t1(draw_subject(rng), tpl, shape, affine, rng), False


FAR_OOD_CLASSES: dict[str, FarFn] = {
    "far_mr_t1": mr_t1_case,
    "far_mr_epi": mr_epi,
    "far_ct_abdomen": ct_abdomen,
    "far_ct_chest": ct_chest,
    "far_shepp_logan": shepp_logan,
    "far_noise": noise_texture,
}
