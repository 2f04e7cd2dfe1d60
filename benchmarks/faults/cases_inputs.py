"""Bad input scans: implausible but readable ones (must be flagged OOD or refused, never scored normal)
and broken files (must be a per-case error naming the file and the problem, the good case still scored).

Each input is scored next to one good scan, in manifest mode (``--data``) or folder mode
(``--input/--output``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from .common import (
    LDM,
    LTM,
    SEG,
    M,
    Sandbox,
    Verdict,
    add,
    base_image,
    expect_error,
    flat,
    good_row,
    judge_flagged,
    judge_per_case,
    nifti,
    prepare,
    score,
)

Maker = Callable[[Sandbox, M, Path], Path]  # writes the bad input into the folder, returns its path


def _neutral(path: Path) -> Path:
    """Rename the bad input to ``probe<suffix>``: its name must not contain the problem's words (the
    judges look for those in the CLI's message, which names the file)."""
    name = path.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    return path.rename(path.with_name("probe" + suffix))


def _png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------- implausible inputs

def _tiny(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "tiny.nii.gz", a[6:9, 6:9, 6:9] if a.ndim == 3 else a[7:9, 7:9], aff)


def _slice(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "oneslice.nii.gz", a[:, :, 8:9], aff)


def _near_blank(sb, m, d):
    a, aff = base_image(sb, m)
    b = np.full(a.shape, -1000.0, np.float32)
    b[(8,) * a.ndim] = 40.0
    return nifti(d / "nearblank.nii.gz", b, aff)


def _complex_nifti(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "complex.nii.gz", (a + 1j * a[::-1]).astype(np.complex64), aff)


def _complex_npy(sb, m, d):
    a, _ = base_image(sb, m)
    np.save(d / "complexnpy.npy", (a + 1j * a[::-1]).astype(np.complex64))
    return d / "complexnpy.npy"


def _bool_npy(sb, m, d):
    a, _ = base_image(sb, m)
    np.save(d / "boolean.npy", a > 20)
    return d / "boolean.npy"


def _bool_nifti(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "binary.nii.gz", (a > 20).astype(np.uint8), aff)


def _all_nan(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "allnan.nii.gz", np.full(a.shape, np.nan, np.float32), aff)


def _constant(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "constant.nii.gz", np.full(a.shape, 40.0, np.float32), aff)


def _huge(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "huge.nii.gz", (a * 1e6).astype(np.float32), aff)


def _four_d(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "fourd.nii.gz", np.stack([a, a * 0.5, a * 0.25], axis=-1), aff)


def _volume_for_2d(sb, m, d):
    a, aff = base_image(sb, m)
    return nifti(d / "volume.nii.gz", np.repeat(a[..., None], 16, axis=-1), aff)


def _png_for_3d(sb, m, d):
    return _png(d / "photo.png", (np.arange(256).reshape(16, 16) % 255))


IMPLAUSIBLE: dict[str, tuple[Maker, str | None, tuple[str, ...]]] = {
    # name: (maker, problem regex for an error, kinds it applies to)
    "3x3x3_volume": (_tiny, None, ("3d",)),
    "2x2_slice": (_tiny, None, ("2d",)),
    "16x16x1_slice": (_slice, None, ("3d",)),
    "near_blank": (_near_blank, None, ("3d", "2d")),
    "complex_nifti": (_complex_nifti, r"complex", ("3d", "2d")),
    "complex_npy": (_complex_npy, r"complex", ("3d", "2d")),
    "bool_npy": (_bool_npy, r"bool", ("3d", "2d")),
    "binary_uint8": (_bool_nifti, None, ("3d",)),
    "all_nan": (_all_nan, r"nan", ("3d", "2d")),
    "constant": (_constant, r"constant", ("3d",)),
    "huge_values": (_huge, None, ("3d",)),
    "4d_volume": (_four_d, r"dimension|4d|shape", ("3d",)),
    "3d_volume_in_2d_run": (_volume_for_2d, r"dimension|3d|shape", ("2d",)),
    "png_in_3d_run": (_png_for_3d, r"dimension|2d|shape", ("3d",)),
}


def _implausible(m: M, name: str, folder: bool) -> Callable[[Sandbox], Verdict]:
    maker, problem, _ = IMPLAUSIBLE[name]

    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        d = flat(sb)
        if folder:
            shutil.copy(sb.data / m.good_path, d / Path(m.good_path).name)
        bad = _neutral(maker(sb, m, d))
        bad_id = bad.name.split(".")[0]
        if folder:
            call = score(sb, m, "--input", d, "--output", sb.out)
        else:
            rows = [good_row(m), [bad_id, f"in/{bad.name}", "", m.set_name, "test"]]
            call = score(sb, m, "--data", sb.write_manifest(rows))
        return judge_flagged(sb, call, m, bad_id, bad.name, folder=folder, problem=problem)
    return fn


#: which implausible inputs run for which method, in manifest mode and in folder mode
IMPLAUSIBLE_PLAN = (
    (LDM, ("3x3x3_volume", "16x16x1_slice", "near_blank", "complex_nifti", "complex_npy", "bool_npy", "all_nan",
           "constant", "huge_values", "4d_volume", "png_in_3d_run"),
     ("3x3x3_volume", "near_blank", "complex_npy", "4d_volume")),
    (LTM, ("3x3x3_volume", "near_blank", "complex_npy"), ()),
    (SEG, ("2x2_slice", "near_blank", "complex_npy", "bool_npy", "all_nan", "3d_volume_in_2d_run"), ()),
)
for _m, _manifest_set, _folder_set in IMPLAUSIBLE_PLAN:
    for _name in _manifest_set:
        add(f"implausible/{_m.name}/manifest/{_name}",
            "flagged OOD (flag 1 / qc reason) or a per-case error naming the file; never a normal score",
            _implausible(_m, _name, False), "implausible")
    for _name in _folder_set:
        add(f"implausible/{_m.name}/folder/{_name}",
            "folder mode: score above the threshold / qc, or a per-case error naming the file",
            _implausible(_m, _name, True), "implausible")


# ----------------------------------------------------------------------------- broken files

def _good_copy(sb, m, d, name):
    dst = d / name
    shutil.copy(sb.data / m.good_path, dst)
    return dst


def _truncated(sb, m, d):
    p = _good_copy(sb, m, d, "truncated.nii.gz")
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * 0.6)])
    return p


def _cut_crc(sb, m, d):
    p = _good_copy(sb, m, d, "cutcrc.nii.gz")
    p.write_bytes(p.read_bytes()[:-8])  # drop the gzip trailer (CRC32 + ISIZE)
    return p


def _bad_crc(sb, m, d):
    p = _good_copy(sb, m, d, "badcrc.nii.gz")
    data = bytearray(p.read_bytes())
    data[-8] ^= 0xFF  # flip a byte of the stored CRC32
    p.write_bytes(bytes(data))
    return p


def _not_gzip(sb, m, d):
    p = d / "notgzip.nii.gz"
    p.write_bytes(np.random.default_rng(0).bytes(4000))
    return p


def _zero(sb, m, d):
    p = d / "zerobytes.nii.gz"
    p.write_bytes(b"")
    return p


def _singular(sb, m, d):
    a, aff = base_image(sb, m)
    bad = aff.copy()
    bad[:3, :3] = 0.0
    return nifti(d / "singular.nii.gz", a, bad)


def _some_nan(sb, m, d):
    a, aff = base_image(sb, m)
    a = a.copy()
    a.flat[[3, 50, 100, 150, 200]] = np.nan
    return nifti(d / "somenan.nii.gz", a, aff)


def _inf(sb, m, d):
    a, aff = base_image(sb, m)
    a = a.copy()
    a.flat[[7, 70, 170]] = np.inf
    return nifti(d / "inf.nii.gz", a, aff)


def _f64_overflow(sb, m, d):
    a, aff = base_image(sb, m)
    a = a.astype(np.float64)
    a.flat[[10, 90]] = 1e300
    return nifti(d / "float64big.nii.gz", a, aff)


def _pickle_npy(sb, m, d):
    p = d / "pickled.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return p


def _short_nii(sb, m, d):
    import nibabel as nib

    a, aff = base_image(sb, m)
    p = d / "shortdata.nii"
    nib.save(nib.Nifti1Image(a, aff), str(p))
    p.write_bytes(p.read_bytes()[:-2000])
    return p


def _dir_path(sb, m, d):
    p = d / "afolder.nii.gz"
    p.mkdir()
    return p


def _unsupported(sb, m, d):
    p = d / "scan.mha"
    p.write_bytes(b"ObjectType = Image\nNDims = 3\n")
    return p


BROKEN: dict[str, tuple[Maker, str]] = {
    "truncated_gz": (_truncated, r"truncat|unreadable|corrupt|incomplete|end of"),
    "gzip_cut_crc_trailer": (_cut_crc, r"crc|trailer|truncat|corrupt|incomplete|end of"),
    "gzip_wrong_crc": (_bad_crc, r"crc|checksum|corrupt"),
    "not_gzip": (_not_gzip, r"gzip|unreadable|not a|corrupt"),
    "zero_bytes": (_zero, r"empty|0 bytes|zero|unreadable|truncat"),
    "singular_affine": (_singular, r"affine|singular"),
    "some_nan_voxels": (_some_nan, r"nan"),
    "inf_voxels": (_inf, r"inf"),
    "float64_beyond_float32": (_f64_overflow, r"float32|range|too large|overflow"),
    "npy_object_pickle": (_pickle_npy, r"pickle|object"),
    "nii_data_cut": (_short_nii, r"truncat|unreadable|short|incomplete|end of"),
    "path_is_directory": (_dir_path, r"director"),
    "unsupported_suffix": (_unsupported, r"unsupported|suffix|type"),
}


def _broken(m: M, name: str, folder: bool) -> Callable[[Sandbox], Verdict]:
    maker, problem = BROKEN[name]

    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, m)
        d = flat(sb)
        bad = _neutral(maker(sb, m, d))
        bad_id = bad.name.split(".")[0]
        if folder:
            _good_copy(sb, m, d, Path(m.good_path).name)
            call = score(sb, m, "--input", d, "--output", sb.out)
        else:
            rows = [good_row(m), [bad_id, f"in/{bad.name}", "", m.set_name, "test"]]
            call = score(sb, m, "--data", sb.write_manifest(rows))
        return judge_per_case(sb, call, m, bad_id, bad.name, problem, good_ids=[m.good_id], folder=folder)
    return fn


BROKEN_PLAN = (
    (LDM, ("truncated_gz", "gzip_cut_crc_trailer", "gzip_wrong_crc", "not_gzip", "zero_bytes", "nii_data_cut",
           "singular_affine", "some_nan_voxels", "inf_voxels", "float64_beyond_float32", "npy_object_pickle",
           "path_is_directory"),
     ("gzip_cut_crc_trailer", "singular_affine", "npy_object_pickle", "path_is_directory")),
    (LTM, ("truncated_gz", "gzip_cut_crc_trailer"), ()),
    (SEG, ("gzip_cut_crc_trailer",), ()),
)
for _m, _names, _folder_set in BROKEN_PLAN:
    for _name in _names:
        add(f"broken/{_m.name}/manifest/{_name}",
            "non-zero exit, error names the file and the problem; the good case is still scored",
            _broken(_m, _name, False), "broken")
    for _name in _folder_set:
        add(f"broken/{_m.name}/folder/{_name}",
            "folder mode: non-zero exit naming the file and the problem; the good case is still scored",
            _broken(_m, _name, True), "broken")


# ----------------------------------------------------------------------------- masks (segmentation)

def _mask_case(kind: str) -> Callable[[Sandbox], Verdict]:
    """A sprite slice whose ground-truth mask has the wrong shape / is missing: ``segment`` (which may
    ignore masks) and then ``evaluate`` (which reads them) on the same manifest."""
    def fn(sb: Sandbox) -> Verdict:
        prepare(sb, SEG)
        d = flat(sb)
        img = "2d/test/sprites/slice-test-000-0.nii.gz"
        if kind == "shape":
            mask = nifti(d / "m1.nii.gz", np.zeros((8, 8), np.uint8))
            rel, problem = f"in/{mask.name}", r"shape"
        else:
            rel, problem = "in/m2.nii.gz", r"not exist|missing|not found"
        rows = [good_row(SEG), ["lesion", img, rel, "sprites", "test"]]
        manifest = sb.write_manifest(rows)
        call = score(sb, SEG, "--data", manifest)
        if call.rc != 0:
            return judge_per_case(sb, call, SEG, "lesion", Path(rel).name, problem, good_ids=[SEG.good_id])
        ev = sb.cli("evaluate", "--run", "run", "--data", manifest)
        return expect_error(ev, [Path(rel).name], problem).add(None, "(segment rc 0, checked by evaluate)")
    return fn


add("broken/segment/manifest/mask_shape_mismatch", "segment or evaluate: error naming the mask and the shapes",
    _mask_case("shape"), "broken")
add("broken/segment/manifest/mask_missing", "error naming the missing mask, per case (the good case scored)",
    _mask_case("missing"), "broken")
