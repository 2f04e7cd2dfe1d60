"""Head-CT-like volumes with real anatomy, from the MNI152 template bundled with nilearn (offline).

The in-distribution cohort of the built-in benchmark (DESIGN.md, "Built-in synthetic benchmark")
plays the role of paper 000's CROMIS/KCH head CTs. Per subject:

* **anatomy**: grey / white matter probability maps and the brain mask of the MNI152 2009 template
  (``nilearn.datasets.load_mni152_{gm,wm}_template``, ``load_mni152_brain_mask``); CSF is the part
  of the brain mask that is neither GM nor WM (sulci, ventricles);
* **skull and scalp**: shells at distances from the (smoothed) brain hull — a CSF gap of 1–3 mm,
  bone 4.5–8.5 mm thick with a smooth ±25 % spatial modulation, scalp 5–9 mm; below the skull base
  (template z < -50 mm) bone turns into soft tissue (neck); air outside;
* **CT intensities** (HU): WM ~25, GM ~38, CSF ~5, scalp ~30, bone 700–1400, air −1000, each jittered
  per subject, then a smooth bias (≤ 4 HU) and Gaussian noise (σ 1–2.5 HU);
* **population variability**: random rigid + scaling (rotations ±8°, global scale ×0.88·U(0.92, 1.08)
  with ±3 % per axis, translation ±4 mm), a smooth elastic displacement (2–5 mm), ventricle
  enlargement (a radial warp about the lateral ventricles) and cortical atrophy (GM → CSF near the
  brain surface).

All maps are sampled once, by trilinear interpolation, straight onto the requested output grid
(``shape``, ``affine`` in RAS mm), so generation costs O(output voxels) and any grid size works.
The paper's CT window ([-15, 100] HU → [0, 1]) is applied later by the preprocessing.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

HU = {"wm": 25.0, "gm": 38.0, "csf": 5.0, "scalp": 30.0, "air": -1000.0}
#: lateral-ventricle centre in MNI space (mm), the centre of the ventricle-enlargement warp
VENTRICLE_CENTRE = np.array([0.0, -12.0, 14.0])
NECK_Z_MM = -50.0
#: the MNI152 brain is larger than an average brain: base scale for adult head breadth ~152 mm, so heads
#: fit the paper grid (176×208×176 mm; rarely a few voxels are cut at the extremes, as in the paper)
BASE_SCALE = 0.88
#: the grid centre sits this far (mm) above the hull's centre: the skull top fits, the neck is cut
GRID_CENTRE_OFFSET = np.array([0.0, 0.0, 10.0])


@dataclass(frozen=True)
class HeadTemplate:
    """Template maps on the MNI grid: ``maps`` (6, X, Y, Z) float32 = gm, wm, brain, t1,
    ``d_out`` (mm outside the smoothed brain hull), ``d_in`` (mm inside the brain)."""

    maps: np.ndarray
    affine: np.ndarray
    centre: np.ndarray  # world mm of the head centre (centre of the hull's bounding box)

    GM, WM, BRAIN, T1, D_OUT, D_IN = range(6)


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2×2×2 block mean (odd trailing voxels dropped)."""
    x, y, z = (n // 2 * 2 for n in a.shape)
    return a[:x, :y, :z].reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean(axis=(1, 3, 5))


@functools.lru_cache(maxsize=2)
def load_head_template(resolution: int = 2) -> HeadTemplate:
    """Load (once per process) the MNI152 maps at ``resolution`` mm (1, or 2 by 2×2×2 block means of
    the 1 mm maps) from nilearn's package data (no network)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets

        gm_img = datasets.load_mni152_gm_template(resolution=1)
        wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
        brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)
        t1 = datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
    gm = gm_img.get_fdata(dtype=np.float32)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    if resolution == 2:
        gm, wm, brain, t1 = (_downsample2(a).astype(np.float32) for a in (gm, wm, brain, t1))
        affine = affine @ np.array([[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]])
    elif resolution != 1:
        raise ValueError(f"template resolution must be 1 or 2 mm, got {resolution}")
    gm, wm = np.clip(gm, 0, 1) * brain, np.clip(wm, 0, 1) * brain
    total = np.maximum(gm + wm, 1.0)  # GM + WM never exceed the brain
    gm, wm = gm / total, wm / total
    res = float(resolution)
    hull = ndi.binary_fill_holes(ndi.gaussian_filter(brain, 4.0 / res) > 0.25)
    d_out = ndi.distance_transform_edt(~hull, sampling=res).astype(np.float32)
    d_in = ndi.distance_transform_edt(brain > 0.5, sampling=res).astype(np.float32)
    idx = np.argwhere(hull)
    lo, hi = affine[:3, :3] @ idx.min(0) + affine[:3, 3], affine[:3, :3] @ idx.max(0) + affine[:3, 3]
    maps = np.stack([gm, wm, np.clip(brain, 0, 1), np.clip(t1, 0, None), d_out, d_in]).astype(np.float32)
    return HeadTemplate(maps=maps, affine=affine, centre=np.round((lo + hi) / 2))


def template_resolution(spacing_mm: float) -> int:
    """1 mm template for fine output grids, 2 mm otherwise (4× fewer voxels to load)."""
    return 1 if spacing_mm < 2.0 else 2


def grid_affine(shape: tuple[int, ...], spacing: tuple[float, ...] | float, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS voxel-to-world affine of a grid of ``shape`` whose middle voxel sits at ``centre`` (mm)."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    a = np.diag([*sp, 1.0])
    a[:3, 3] = np.asarray(centre, dtype=np.float64) - sp * (np.asarray(shape[:3], dtype=np.float64) - 1) / 2
    return a


@dataclass(frozen=True)
class SubjectParams:
    """Per-subject random parameters (drawn by :func:`draw_subject`)."""

    angles_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    elastic_mm: float
    ventricle: float  # strength of the radial enlargement warp, 0 = template
    atrophy: float  # fraction of cortical GM turned into CSF
    csf_gap_mm: float
    skull_mm: float
    scalp_mm: float
    hu_wm: float
    hu_gm: float
    hu_csf: float
    hu_scalp: float
    hu_bone: float
    noise_hu: float
    bias_hu: float


def draw_subject(rng: np.random.Generator) -> SubjectParams:
    """Draw one subject's anatomy, pose and acquisition parameters."""
    u = rng.uniform
    g = BASE_SCALE * u(0.92, 1.08)
    return SubjectParams(
        angles_deg=tuple(u(-8, 8, 3)), scale=tuple(g * u(0.97, 1.03, 3)), shift_mm=tuple(u(-4, 4, 3)),
        elastic_mm=u(2, 5), ventricle=u(0.0, 0.35), atrophy=u(0.0, 0.4),
        csf_gap_mm=u(1, 3), skull_mm=u(4.5, 8.5), scalp_mm=u(5, 9),
        hu_wm=HU["wm"] + u(-3, 3), hu_gm=HU["gm"] + u(-3, 3), hu_csf=HU["csf"] + u(-3, 3),
        hu_scalp=HU["scalp"] + u(-5, 10), hu_bone=u(700, 1400), noise_hu=u(1.0, 2.5), bias_hu=u(0, 4),
    )


def rotation(angles_deg) -> np.ndarray:
    """3×3 rotation R = Rz · Ry · Rx for angles (x, y, z) in degrees."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@functools.lru_cache(maxsize=64)
def _spline_matrix(n_ctrl: int, size: int) -> np.ndarray:
    """``(size, n_ctrl)`` matrix of 1D cubic-spline upsampling (``ndi.zoom`` of each unit vector)."""
    eye = np.eye(n_ctrl)
    return np.stack(
        [ndi.zoom(e, size / n_ctrl, order=3, mode="nearest", grid_mode=True)[:size] for e in eye], axis=1
    )


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: int = 5, channels: int = 1) -> np.ndarray:
    """``(channels, *shape)`` smooth random field: N(0, 1) control points cubic-spline upsampled.

    Spline zooming is separable, so it is applied as one small matrix per axis (exactly
    ``ndi.zoom(ctrl, order=3)``, at a fraction of the cost).
    """
    ctrl = rng.normal(size=(channels, *([n_ctrl] * len(shape))))
    mats = [_spline_matrix(n_ctrl, s) for s in shape]
    letters = "ijk"[: len(shape)]
    spec = ",".join(f"{o}{c}" for o, c in zip(letters, "abc")) + f",n{'abc'[: len(shape)]}->n{letters}"
    return np.einsum(spec, *mats, ctrl, optimize=True).astype(np.float32)


def world_coords(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """``(3, *shape)`` world mm of every voxel of a grid."""
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape(3, *shape)


def template_coords(
    params: SubjectParams, tpl: HeadTemplate, shape: tuple[int, ...], affine: np.ndarray,
    rng: np.random.Generator, centre: np.ndarray | None = None,
) -> np.ndarray:
    """``(3, *shape)`` template-world mm sampled by each output voxel (the subject's inverse warp).

    q = c_t + S⁻¹ Rᵀ (p − c_o − shift) + elastic(p) (c_t: hull centre + :data:`GRID_CENTRE_OFFSET`), then the radial ventricle warp about
    :data:`VENTRICLE_CENTRE` pulls q towards it (seen from the output: larger ventricles).
    """
    p = world_coords(shape, affine).reshape(3, -1)
    c_o = np.zeros(3) if centre is None else np.asarray(centre, dtype=np.float64)
    r = rotation(params.angles_deg)
    q = (r.T @ (p - c_o[:, None] - np.asarray(params.shift_mm)[:, None])) / np.asarray(params.scale)[:, None]
    q += (tpl.centre + GRID_CENTRE_OFFSET)[:, None]
    q += params.elastic_mm * smooth_field(rng, shape, channels=3).reshape(3, -1)
    d = q - VENTRICLE_CENTRE[:, None]
    q -= params.ventricle * d * np.exp(-(d**2).sum(0) / (2 * 25.0**2))
    return q.reshape(3, *shape)


def sample_maps(tpl: HeadTemplate, q: np.ndarray, channels: list[int]) -> list[np.ndarray]:
    """Trilinear samples of template ``channels`` at template-world points ``q`` (3, *shape)."""
    inv = np.linalg.inv(tpl.affine)
    vox = (inv[:3, :3] @ q.reshape(3, -1) + inv[:3, 3:4])
    return [
        ndi.map_coordinates(tpl.maps[c], vox, order=1, mode="nearest").reshape(q.shape[1:]).astype(np.float32)
        for c in channels
    ]


def _ramp(d: np.ndarray, edge: np.ndarray | float, width: float) -> np.ndarray:
    """0 well below ``edge``, 1 well above: linear partial-volume ramp of ``width`` mm."""
    return np.clip((d - edge) / width + 0.5, 0.0, 1.0)


def head_ct(
    params: SubjectParams, tpl: HeadTemplate, shape: tuple[int, ...], affine: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One subject's head CT on the grid (``shape``, RAS ``affine``).

    Returns ``(hu (X, Y, Z) float32 in HU, brain_mask (X, Y, Z) bool)``.
    """
    q = template_coords(params, tpl, shape, affine, rng)
    gm, wm, brain, d_out, d_in = sample_maps(tpl, q, [tpl.GM, tpl.WM, tpl.BRAIN, tpl.D_OUT, tpl.D_IN])
    pv = float(np.abs(affine[:3, :3]).sum(0).mean())  # voxel size: partial-volume width
    cortex = np.clip(1.0 - d_in / 6.0, 0.0, 1.0)
    gm = gm * (1.0 - params.atrophy * cortex)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    brain_hu = wm * params.hu_wm + gm * params.hu_gm + csf * params.hu_csf
    thick = params.skull_mm * np.clip(1.0 + 0.25 * smooth_field(rng, shape, 4)[0], 0.5, None)
    skull_in = params.csf_gap_mm
    skull_out = skull_in + thick
    scalp_out = skull_out + params.scalp_mm
    f_csf = 1.0 - _ramp(d_out, skull_in, pv)
    f_bone = _ramp(d_out, skull_in, pv) - _ramp(d_out, skull_out, pv)
    # a sharp skin edge (ramp pv / 4): a partial-volume skin voxel is mostly air (< -15 HU) and would
    # leave the thin scalp full of holes after the CT window
    f_scalp = _ramp(d_out, skull_out, pv) - _ramp(d_out, scalp_out, pv / 4)
    f_air = _ramp(d_out, scalp_out, pv / 4)
    neck = np.clip((NECK_Z_MM - q[2]) / 10.0, 0.0, 1.0)  # below the skull base: soft tissue
    f_scalp, f_bone = f_scalp + f_bone * neck, f_bone * (1.0 - neck)
    out_hu = f_csf * params.hu_csf + f_bone * params.hu_bone + f_scalp * params.hu_scalp + f_air * HU["air"]
    hu = brain * brain_hu + (1.0 - brain) * out_hu
    hu += params.bias_hu * smooth_field(rng, shape, 4)[0] * (1.0 - f_air)
    hu += rng.normal(0.0, params.noise_hu, size=shape).astype(np.float32)
    return hu.astype(np.float32), brain > 0.5


def mr_t1(
    params: SubjectParams, tpl: HeadTemplate, shape: tuple[int, ...], affine: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The MNI152 T1 MR template warped like a subject, min–max rescaled to [0, 1] (non-CT, §3.1)."""
    q = template_coords(params, tpl, shape, affine, rng)
    (t1,) = sample_maps(tpl, q, [tpl.T1])
    t1 = t1 + rng.normal(0.0, 0.01 * float(t1.max()), size=shape).astype(np.float32) * (t1 > 0)
    return minmax(t1)


def minmax(x: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] by the array's minimum and maximum (paper 000 §3.1, non-CT images)."""
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
