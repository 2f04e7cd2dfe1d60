"""The built-in synthetic head-CT benchmark: ``synth(preset, out, seed)`` (DESIGN.md).

It plays the roles of paper 000's datasets (§3.1) and paper 001's MedNIST sprites (§4.1):

* ``id`` — head CTs with real MNI152 anatomy (:mod:`.anatomy`), splits ``train`` / ``val`` / ``test``
  (CROMIS train/val, KCH test);
* near-OOD — the 14 corruptions of paper 000 Table 1 (:data:`.corruptions.NEAR_OOD_KINDS`), then the
  two that make a scan simpler (``smoothed``, ``fov_emptied``: :data:`.corruptions.SIMPLER_KINDS`),
  applied to every ID-test case, set named by the kind, split ``test``;
* far-OOD — the classes of :data:`.far_ood.FAR_OOD_CLASSES` (``far_`` prefix), split ``test``;
* 2D — axial ``slice_size``² slices of separate subjects for train / val / test (set ``id``), the
  test slices with sprite lesions (set ``sprites``, with ground-truth masks), and the same test slices
  with one haemorrhage-like lesion each (set ``haemorrhage``, with masks: :mod:`.lesions`, paper 001
  Table 3's CT task).

**Intensity encoding.** Every file is CT-like in Hounsfield units so that one preprocessing
(``data.modality = "ct"``: clamp [-15, 100] HU → [0, 1], paper 000 §3.1) serves all sets. ID scans
and CT phantoms hold real HU; data defined on the preprocessed [0, 1] scale (corrupted scans, non-CT
far-OOD classes, already min–max rescaled as the paper does for non-CT images) are stored as
``-15 + 115·x`` HU, which the preprocessing maps back to ``x`` exactly.

Layout of ``out``::

    manifest.csv  manifest_2d.csv  preview.png  README.txt
    id/{train,val,test}/<case>.nii.gz   brain_masks/<case>.nii.gz (uint8, for skull stripping)
    near/<kind>/<case>.nii.gz           far/<class>/<case>.nii.gz
    near_masks/<kind>/<case>.nii.gz     (uint8: the voxels a localised corruption removed, the manifest's mask)
    2d/{train,val}/<case>.nii.gz        2d/test/{id,sprites,sprites_masks,haemorrhage,haemorrhage_masks}/<case>.nii.gz

Everything derives from ``seed`` through per-case generators: the same seed gives byte-identical
files.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import SynthConfig, load_config
from ..data.corruption_regions import REGION_KINDS, corruption_region
from ..data.corruptions import CORRUPTION_KINDS, add_sprites, case_rng, corrupt_array
from ..data.io import write_image
from ..data.manifest import Case, write_manifest
from ..data.transforms import from_unit_range_ct, to_unit_range_ct
from ..viz.preview import Panel, save_preview_grid, slice_panel, volume_panels
from .anatomy import draw_subject, grid_affine, head_ct, load_head_template, template_resolution
from .far_ood import FAR_OOD_CLASSES
from .lesions import add_haemorrhage

SPLITS = ("train", "val", "test")
#: axial slices per 2D subject, and their world z range (mm from the head centre) through the brain
SLICES_PER_SUBJECT = 8
SLICE_Z_RANGE_MM = (-15.0, 45.0)
ProgressFn = Callable[[str, int, int], None]


@dataclass
class SynthResult:
    """What :func:`synth` wrote. ``counts`` / ``counts_2d``: cases per set."""

    out: Path
    manifest: Path
    manifest_2d: Path
    preview: Path
    counts: dict[str, int] = field(default_factory=dict)
    counts_2d: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _rng(seed: int, *keys: int | str) -> np.random.Generator:
    return np.random.default_rng([seed, *(k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys)])


def _tick(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def _write_id(cfg: SynthConfig, out: Path, seed: int, progress: ProgressFn | None):
    """ID cohort: returns (cases, test volumes [(case_id, x in [0,1], brain)], one train example)."""
    shape, affine = tuple(cfg.grid), grid_affine(cfg.grid, cfg.spacing_mm)
    tpl = load_head_template(template_resolution(cfg.spacing_mm))
    cases, test, total, done = [], [], cfg.n_train + cfg.n_val + cfg.n_test, 0
    for split, n in zip(SPLITS, (cfg.n_train, cfg.n_val, cfg.n_test)):
        for i in range(n):
            cid = f"head-{split}-{i:03d}"
            rng = _rng(seed, "id", split, i)
            hu, brain = head_ct(draw_subject(rng), tpl, shape, affine, rng)
            path = write_image(out / "id" / split / f"{cid}.nii.gz", hu, affine)
            write_image(out / "brain_masks" / f"{cid}.nii.gz", brain.astype(np.uint8), affine)
            cases.append(Case(cid, path, set="id", split=split))
            if split == "test":
                test.append((cid, to_unit_range_ct(hu), brain))
            done += 1
            _tick(progress, "id", done, total)
    return cases, test, affine


def _write_near(test, affine: np.ndarray, out: Path, seed: int, progress: ProgressFn | None) -> list[Case]:
    cases, total = [], len(test) * len(CORRUPTION_KINDS)
    for k, kind in enumerate(CORRUPTION_KINDS):
        for n, (cid, x, brain) in enumerate(test):
            y = corrupt_array(x, affine, kind, case_rng(seed, kind, cid), brain_mask=brain)
            path = write_image(out / "near" / kind / f"{cid}.nii.gz", from_unit_range_ct(y), affine)
            mask = None
            if kind in REGION_KINDS:  # the removed voxels: ground truth for the anomaly maps
                region = corruption_region(x, affine, kind, brain_mask=brain).astype(np.uint8)
                mask = write_image(out / "near_masks" / kind / f"{cid}.nii.gz", region, affine)
            cases.append(Case(cid, path, mask=mask, set=kind, split="test"))
            _tick(progress, "near", k * len(test) + n + 1, total)
    return cases


def _write_far(cfg: SynthConfig, affine: np.ndarray, out: Path, seed: int, progress: ProgressFn | None) -> list[Case]:
    cases, total, done = [], len(FAR_OOD_CLASSES) * cfg.n_far_per_class, 0
    for name, fn in FAR_OOD_CLASSES.items():
        for i in range(cfg.n_far_per_class):
            arr, is_ct = fn(_rng(seed, "far", name, i), tuple(cfg.grid), affine)
            cid = f"{name}-{i:03d}"
            path = write_image(out / "far" / name / f"{cid}.nii.gz", arr if is_ct else from_unit_range_ct(arr), affine)
            cases.append(Case(cid, path, set=name, split="test"))
            done += 1
            _tick(progress, "far", done, total)
    return cases


def _slab_affine(size: int, spacing: float, k: int) -> tuple[np.ndarray, float]:
    lo, hi = SLICE_Z_RANGE_MM
    dz = (hi - lo) / max(k - 1, 1)
    a = grid_affine((size, size, 1), spacing)
    a[2, 2], a[2, 3] = dz, lo
    return a, dz


def _write_2d(cfg: SynthConfig, out: Path, seed: int, progress: ProgressFn | None):
    """2D cohort (paper 001 §4.1): axial slices of separate subjects per split, plus sprites."""
    size = cfg.slice_size
    spacing = max(cfg.grid[:2]) * cfg.spacing_mm / size  # same field of view as the 3D grid
    tpl = load_head_template(template_resolution(spacing))
    cases: list[Case] = []
    examples: list[tuple[np.ndarray, np.ndarray | None]] = []
    total = cfg.n_train_2d + cfg.n_val_2d + cfg.n_test_2d
    done = 0
    for split, n in zip(SPLITS, (cfg.n_train_2d, cfg.n_val_2d, cfg.n_test_2d)):
        k = min(SLICES_PER_SUBJECT, n)
        affine3, _ = _slab_affine(size, spacing, k)
        written = 0
        for s in range(math.ceil(n / k)):
            rng = _rng(seed, "2d", split, s)
            subject = draw_subject(rng)
            hu, brain = head_ct(subject, tpl, (size, size, k), affine3, rng)
            for j in range(min(k, n - written)):
                cid = f"slice-{split}-{s:03d}-{j}"
                a2 = affine3.copy()
                a2[2, 3] = affine3[2, 3] + j * affine3[2, 2]
                sub = "2d/test/id" if split == "test" else f"2d/{split}"
                path = write_image(out / sub / f"{cid}.nii.gz", hu[:, :, j], a2)
                cases.append(Case(cid, path, set="id", split=split))
                if split == "test":
                    x = to_unit_range_ct(hu[:, :, j])
                    region = brain[:, :, j] if brain[:, :, j].sum() >= 9 else None
                    y, mask = add_sprites(x, case_rng(seed, "sprites", cid), head=region)
                    spath = write_image(out / "2d/test/sprites" / f"{cid}.nii.gz", from_unit_range_ct(y), a2)
                    mpath = write_image(out / "2d/test/sprites_masks" / f"{cid}.nii.gz", mask.astype(np.uint8), a2)
                    cases.append(Case(cid, spath, mask=mpath, set="sprites", split="test"))
                    if brain[:, :, j].sum() >= 9:
                        cases.append(_haemorrhage_case(out, cid, hu[:, :, j], brain[:, :, j], a2, spacing,
                                                       subject.noise_hu, seed))
                    if len(examples) < 4:
                        examples.append((y, mask))
                elif len(examples) < 2 and split == "train":
                    examples.append((to_unit_range_ct(hu[:, :, j]), None))
                written += 1
                done += 1
                _tick(progress, "2d", done, total)
    return cases, examples


def _haemorrhage_case(out: Path, cid: str, hu: np.ndarray, brain: np.ndarray, affine: np.ndarray, spacing: float,
                      noise_hu: float, seed: int) -> Case:
    """The slice with one haematoma (:func:`.lesions.add_haemorrhage`), set ``haemorrhage`` with its mask."""
    lesioned, lesion = add_haemorrhage(hu, brain, spacing, case_rng(seed, "haemorrhage", cid), noise_hu=noise_hu)
    path = write_image(out / "2d/test/haemorrhage" / f"{cid}.nii.gz", lesioned, affine)
    mask = write_image(out / "2d/test/haemorrhage_masks" / f"{cid}.nii.gz", lesion.mask.astype(np.uint8), affine)
    return Case(cid, path, mask=mask, set="haemorrhage", split="test")


def _counts(cases: list[Case]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cases:
        key = c.set if c.split == "test" else f"{c.set}/{c.split}"
        out[key] = out.get(key, 0) + 1
    return out


def _preview(cases3d: list[Case], examples2d, out: Path) -> Path:
    from ..data.io import read_image

    panels: list[Panel] = []
    seen: set[str] = set()
    for c in cases3d:
        if c.set in seen or (c.set == "id" and c.split != "test"):
            continue
        seen.add(c.set)
        img = read_image(c.path)
        x = to_unit_range_ct(img.array)
        panels += volume_panels(x, f"{c.set}: {c.case_id}", affine=img.affine)
    for n, (x, mask) in enumerate(examples2d):
        panels.append(slice_panel(x, "2d sprites" if mask is not None else "2d id", contour=mask, contour_color="red"))
    return save_preview_grid(panels, out / "preview.png", ncols=12)


_README = """Synthetic head-CT OOD benchmark (ldm-ood synth).
All images are NIfTI in CT Hounsfield units; preprocess with the CT window [-15, 100] HU -> [0, 1].
Near-OOD scans and non-CT far-OOD classes are defined on the [0, 1] scale and stored as -15 + 115*x HU.
manifest.csv: 3D (set id: train/val/test; near-OOD sets named by corruption, smoothed and fov_emptied\nincluded; far-OOD sets far_*).
manifest_2d.csv: axial slices (set id: train/val/test; sets sprites and haemorrhage: test, with masks).
brain_masks/: brain masks of the ID scans (used for skull stripping).
near_masks/<kind>/: the voxels chunk_top, chunk_middle and skull_stripped removed (the manifest's mask column).
"""


def synth(preset: str, out: str | Path, seed: int | None = None, progress: ProgressFn | None = None) -> SynthResult:
    """Write the built-in benchmark of ``preset`` (``tiny`` / ``cpu`` / ``paper``; sizes from
    ``load_config(preset=preset).synth``) to ``out``.

    Args:
        preset: configuration preset whose ``synth`` section gives grid, spacing and counts.
        out: output folder (created; existing files are overwritten).
        seed: overrides ``synth.seed``; the same seed gives byte-identical files.
        progress: optional ``callback(stage, done, total)`` (stages ``id``, ``near``, ``far``, ``2d``).
    """
    t0 = time.perf_counter()
    cfg = load_config(preset=preset).synth
    seed = cfg.seed if seed is None else int(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    id_cases, test, affine = _write_id(cfg, out, seed, progress)
    cases3d = id_cases + _write_near(test, affine, out, seed, progress) + _write_far(cfg, affine, out, seed, progress)
    cases2d, examples2d = _write_2d(cfg, out, seed, progress)
    manifest = write_manifest(out / "manifest.csv", cases3d)
    manifest_2d = write_manifest(out / "manifest_2d.csv", cases2d)
    (out / "README.txt").write_text(_README)
    preview = _preview(cases3d, examples2d, out)
    return SynthResult(out=out, manifest=manifest, manifest_2d=manifest_2d, preview=preview,
                       counts=_counts(cases3d), counts_2d=_counts(cases2d), seconds=time.perf_counter() - t0)
