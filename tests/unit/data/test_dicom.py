"""DICOM series (``data.dicom``) built from pydicom's own test slices: geometry against hand computations,
HU rescale, slice sorting, discovery by SeriesInstanceUID, and every refused series naming its UID and folder."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch
from dicom_series import AXIAL, pydicom_file, stored, template, write_series

from ldm_ood.config import DataConfig
from ldm_ood.data.dicom import SPACING_TOLERANCE, find_series, read_series, series_case_id
from ldm_ood.data.io import Image, read_image, write_image
from ldm_ood.data.manifest import plain_name, read_manifest
from ldm_ood.data.scans import read_scan
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.errors import InputError, OutputError
from ldm_ood.methods.outputs import check_output_folder

COS30, SIN30 = math.cos(math.radians(30)), 0.5
#: row direction X rotated 30° about the patient's z axis, column direction Y = -z (a tilted coronal plane)
OBLIQUE = (COS30, SIN30, 0.0, 0.0, 0.0, -1.0)


def test_the_affine_and_spacing_of_an_oblique_series_are_the_hand_computed_ones(tmp_path):
    rows, cols = 128, 100  # not square, so a row/column swap cannot pass
    base = stored(template())[:, :cols]
    uid, files = write_series(tmp_path / "s", 5, orientation=OBLIQUE, pixel_spacing=(0.5, 0.75), step=2.5,
                              origin=(10.0, -20.0, 30.0), pixels=lambda k: base + 10 * k)
    img = read_series(tmp_path / "s")
    # LPS columns: Δc·X = 0.75·(cos30, sin30, 0); Δr·Y = 0.5·(0, 0, -1); step·(X × Y) = 2.5·(-sin30, cos30, 0);
    # origin (10, -20, 30). RAS = diag(-1, -1, 1, 1) · LPS.
    expected = np.array([
        [-0.75 * COS30, 0.0, 2.5 * SIN30, -10.0],
        [-0.75 * SIN30, 0.0, -2.5 * COS30, 20.0],
        [0.0, -0.5, 0.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    np.testing.assert_allclose(img.affine, expected, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), [0.75, 0.5, 2.5])  # voxel sizes
    assert img.array.shape == (cols, rows, 5) and img.array.dtype == np.float32 and img.path == tmp_path / "s"
    # the definition, voxel by voxel: (i, j) of slice k lies at IPP_k + i·Δc·X + j·Δr·Y (LPS), holds
    # the stored value of row j, column i, rescaled to HU (CT_small: slope 1, intercept -1024)
    x, y = np.array(OBLIQUE[:3]), np.array(OBLIQUE[3:])
    for i, j, k in [(0, 0, 0), (99, 127, 4), (17, 64, 2)]:
        ipp = np.array([10.0, -20.0, 30.0]) + k * 2.5 * np.cross(x, y)
        lps = ipp + i * 0.75 * x + j * 0.5 * y
        np.testing.assert_allclose(img.affine @ [i, j, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)
        assert img.array[i, j, k] == base[j, i] + 10 * k - 1024


@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")  # nibabel.nicom's import notice
def test_the_in_plane_geometry_agrees_with_nibabels_dicom_reader(tmp_path):
    """nibabel's ``nicom`` (an independent implementation) indexes a slice ``[row, column]``; ours is
    ``[column, row]`` in RAS: the same voxels and, columns swapped and LPS flipped, the same in-plane affine."""
    from nibabel.nicom import dicomwrappers as nicom
    _, (path,) = write_series(tmp_path / "s", 1, "MR_small.dcm", orientation=OBLIQUE, pixel_spacing=(0.5, 0.75))
    theirs = nicom.wrapper_from_file(str(path))
    ours = read_series(tmp_path / "s")
    np.testing.assert_array_equal(ours.array[..., 0].T, theirs.get_data())
    np.testing.assert_allclose((np.diag([-1.0, -1, 1, 1]) @ ours.affine)[:, [1, 0, 3]], theirs.affine[:, [0, 1, 3]],
                               atol=1e-9)


def test_an_axial_ct_series_in_the_pydicom_headers_own_geometry(tmp_path):
    ds = template()  # CT_small: PixelSpacing 0.661468, IPP (-158.135803, -179.035797, -75.699997), axial
    uid, _ = write_series(tmp_path / "ct", 4, origin=[float(v) for v in ds.ImagePositionPatient], step=5.0)
    img = read_series(tmp_path / "ct")
    s = 0.661468
    expected = np.array([[-s, 0, 0, 158.135803], [0, -s, 0, 179.035797], [0, 0, 5.0, -75.699997], [0, 0, 0, 1]])
    np.testing.assert_allclose(img.affine, expected, atol=1e-9)


def test_rescale_slope_and_intercept_give_hounsfield_units_slice_by_slice(tmp_path):
    def rescale(k, ds):
        ds.RescaleSlope, ds.RescaleIntercept = 1 + k, -1024 + 7 * k

    write_series(tmp_path / "ct", 3, edit=rescale)
    img = read_series(tmp_path / "ct")
    raw = stored(template()).T.astype(np.float64)
    for k in range(3):
        np.testing.assert_array_equal(img.array[..., k], ((raw + 10 * k) * (1 + k) + (-1024 + 7 * k)).astype(np.float32))
    mr = template("MR_small.dcm")  # no RescaleSlope / Intercept: stored values as they are
    assert "RescaleSlope" not in mr
    write_series(tmp_path / "mr", 3, "MR_small.dcm")
    np.testing.assert_array_equal(read_series(tmp_path / "mr").array[..., 2], stored(mr).T + 20)


@pytest.mark.parametrize("step", [4.0, -4.0], ids=["ascending", "descending"])
def test_shuffled_files_are_sorted_along_the_slice_normal(tmp_path, step):
    """File names and InstanceNumbers are shuffled (write_series); only positions decide the order."""
    uid, files = write_series(tmp_path / "s", 7, step=step, origin=(0.0, 0.0, 0.0), seed=3)
    assert [f.name for f in files] != sorted(f.name for f in files)
    img = read_series(tmp_path / "s")
    order = list(range(7)) if step > 0 else list(range(6, -1, -1))  # slice k was written with pixels + 10 k
    raw = stored(template()).T - 1024
    for z, k in enumerate(order):
        np.testing.assert_array_equal(img.array[..., z], raw + 10 * k)
    assert img.affine[2, 2] == pytest.approx(4.0) and img.affine[2, 3] == pytest.approx(min(0.0, 6 * step))


def test_a_series_is_preprocessed_exactly_as_its_nifti_conversion(tmp_path):
    write_series(tmp_path / "s", 6, orientation=OBLIQUE, pixel_spacing=(0.5, 0.75), step=2.5)
    img = read_series(tmp_path / "s")
    nifti = write_image(tmp_path / "s.nii.gz", img.array, img.affine)
    pre = Preprocessor(DataConfig(grid=(16, 16, 16), spacing=(4.0, 4.0, 4.0)))
    (x_series, meta), (x_nifti, _) = pre.load(find_series(tmp_path / "s")[0]), pre.load(nifti)
    # NIfTI stores its affine as float32 (srow): the resampling grids differ by ~1e-5 mm, the intensities by
    # ~1e-6; with the series' affine rounded to float32 as well, the two inputs are identical
    np.testing.assert_allclose(x_series.numpy(), x_nifti.numpy(), rtol=0, atol=1e-5)
    x_rounded, _ = pre.apply(Image(img.array, img.affine.astype(np.float32).astype(np.float64), img.path))
    assert torch.equal(x_rounded, x_nifti)
    np.testing.assert_allclose(np.linalg.norm(meta.grid_affine[:3, :3], axis=0), [4.0, 4.0, 4.0])  # the spacing
    assert 0.05 < float(x_series.mean()) < 0.95
    back = pre.invert(torch.ones(16, 16, 16), meta)
    assert back.array.shape == img.array.shape and np.array_equal(back.affine, img.affine)


def test_a_single_slice_reads_as_a_2d_image_when_axial_and_is_refused_when_not(tmp_path):
    write_series(tmp_path / "ax", 1, "MR_small.dcm")
    img = read_series(tmp_path / "ax", spatial_dims=2)
    assert img.array.shape == (64, 64)
    assert read_series(tmp_path / "ax").array.shape == (64, 64, 1)
    ds = template("MR_small.dcm")
    assert read_series(tmp_path / "ax").affine[2, 2] == pytest.approx(float(ds.SliceThickness))
    uid, _ = write_series(tmp_path / "cor", 1, "MR_small.dcm", orientation=(1, 0, 0, 0, 0, -1))
    with pytest.raises(InputError, match="a single coronal slice: a 2D model reads axial slices") as err:
        read_series(tmp_path / "cor", spatial_dims=2)
    assert uid in str(err.value) and str(tmp_path / "cor") in str(err.value)


def _drop_pixels(k, ds):
    del ds.PixelData


def _tilt(k, ds):
    if k == 2:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _spacing(k, ds):
    if k == 4:
        ds.PixelSpacing = [0.7, 0.7]


def _same_position(k, ds):
    if k == 3:
        ds.ImagePositionPatient = [-80.0, -90.0, -20.0]  # slice 2's position


def _no_position(k, ds):
    if k == 1:
        del ds.ImagePositionPatient


def _off_line(k, ds):
    if k == 2:
        ds.ImagePositionPatient = [-78.0, -90.0, -20.0]  # 2 mm sideways, right height


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"skip": (3,)}, r"irregular slice spacing: slices are 5 mm apart, but 10 mm between .* \(1 slice\(s\) missing\?\)"),
        ({"skip": (2, 3)}, r"but 15 mm between .* \(2 slice\(s\) missing\?\)"),
        ({"edit": _tilt}, r"mixed orientations \(ImageOrientationPatient\): \[1, 0, 0, 0, 1, 0\] in .* but \[1, 0, 0, 0, 0, -1\]"),
        ({"pixels": lambda k: stored(template())[: 128 if k != 5 else 100]}, r"mixed slice shapes \(Rows×Columns\): .*100×128"),
        ({"edit": _spacing}, r"mixed pixel spacings"),
        ({"edit": _drop_pixels}, r"no pixel data in 8 of 8 file\(s\)"),
        ({"edit": _same_position}, r"1 pair\(s\) of slices share a position"),
        ({"edit": _no_position}, r"ImagePositionPatient is missing"),
        ({"edit": _off_line}, r"slice positions are not on one line: .* lies 2 mm off"),
    ],
    ids=["missing-slice", "two-missing", "mixed-orientation", "mixed-shape", "mixed-spacing", "no-pixel-data",
         "same-position", "no-position", "off-line"],
)
def test_a_bad_series_is_refused_naming_its_uid_its_folder_and_the_problem(tmp_path, kwargs, problem):
    folder = tmp_path / "bad"
    uid, _ = write_series(folder, 8, step=5.0, origin=(-80.0, -90.0, -30.0), **kwargs)
    (series,) = find_series(tmp_path)
    with pytest.raises(InputError, match=problem) as err:
        read_series(series)
    assert str(err.value).startswith(f"{folder}: DICOM series {uid}: "), str(err.value)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("rtplan.dcm", r"no pixel data in 1 of 1 file\(s\) \(e.g. rtplan.dcm, modality RTPLAN\)"),
        ("MR_truncated.dcm", r"MR_truncated.dcm: unreadable pixel data \(ValueError: The number of bytes"),
        ("rtdose.dcm", r"rtdose.dcm: a multi-frame file \(15 frames\)"),
        ("SC_rgb_small_odd.dcm", r"colour data \(3 samples per pixel, RGB\)"),
    ],
)
def test_pydicoms_own_unusable_files_are_refused_with_the_reason(tmp_path, name, problem):
    shutil.copy(pydicom_file(name), tmp_path / name)
    with pytest.raises(InputError, match=problem) as err:
        read_series(tmp_path)
    assert str(err.value).startswith(f"{tmp_path}: DICOM series ")


def test_gaps_within_the_tolerance_are_accepted_and_beyond_it_refused(tmp_path):
    jitter = SPACING_TOLERANCE * 5.0 * 0.5  # half the tolerance of a 5 mm step

    def wobble(amount):
        def edit(k, ds):
            if k == 3:
                ds.ImagePositionPatient = [-80.0, -90.0, -30.0 + 15.0 + amount]
        return edit

    write_series(tmp_path / "ok", 6, edit=wobble(jitter))
    assert read_series(tmp_path / "ok").affine[2, 2] == pytest.approx(5.0)
    write_series(tmp_path / "off", 6, edit=wobble(3 * jitter))
    with pytest.raises(InputError, match="irregular slice spacing"):
        read_series(tmp_path / "off")


def test_a_truncated_slice_is_refused_naming_the_file(tmp_path):
    uid, files = write_series(tmp_path / "s", 4)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 5000])
    with pytest.raises(InputError, match=f"DICOM series {uid}: {files[2].name}: unreadable"):
        read_series(tmp_path / "s")


def test_find_series_groups_a_tree_by_series_uid(tmp_path):
    a_uid, a_files = write_series(tmp_path / "patient1" / "ct", 3)
    b_uid, _ = write_series(tmp_path / "patient1" / "mr", 2, "MR_small.dcm")
    # one series split over two folders, and two series mixed in one folder
    c_uid, c_lo = write_series(tmp_path / "patient2" / "part1", 4)
    for f in c_lo[2:]:
        (tmp_path / "patient2" / "part2").mkdir(exist_ok=True)
        shutil.move(f, tmp_path / "patient2" / "part2" / f.name)
    d_uid, d_files = write_series(tmp_path / "mixed", 2, seed=1)
    e_uid, e_files = write_series(tmp_path / "mixed_e", 2, "MR_small.dcm", seed=2)
    for f in e_files:
        shutil.move(f, tmp_path / "mixed" / f"E{f.name}")
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "patient1" / "ct" / "noext_marker_file")  # no suffix
    (tmp_path / "notes.txt").write_text("not an input")
    write_image(tmp_path / "scan.nii.gz", np.ones((4, 4, 4), np.float32))
    write_series(tmp_path / ".hidden", 2)
    (tmp_path / "patient1" / "DICOMDIR").write_bytes(pydicom_file("dicomdirtests/DICOMDIR").read_bytes())
    (tmp_path / "broken.dcm").write_text("this is not DICOM")

    found = find_series(tmp_path)
    by_uid = {s.uid: s for s in found if not s.problem}
    ct_small_uid = str(template().SeriesInstanceUID)
    assert set(by_uid) == {a_uid, b_uid, c_uid, d_uid, e_uid, ct_small_uid}
    assert by_uid[a_uid].folder == tmp_path / "patient1" / "ct" and len(by_uid[a_uid].files) == 3
    assert by_uid[c_uid].folder == tmp_path / "patient2" and len(by_uid[c_uid].files) == 4
    assert by_uid[d_uid].folder == by_uid[e_uid].folder == tmp_path / "mixed"
    assert by_uid[a_uid].case_id == a_uid and all(plain_name(s.case_id) is None for s in found)
    (bad,) = [s for s in found if s.problem]
    assert bad.files == (tmp_path / "broken.dcm",) and "not a DICOM file" in bad.problem
    assert bad.case_id.startswith("broken.dcm")
    with pytest.raises(InputError, match="broken.dcm: not a DICOM file"):
        read_series(bad)
    np.testing.assert_array_equal(read_series(by_uid[c_uid]).array[..., 3], stored(template()).T - 1024 + 30)
    assert read_series(by_uid[e_uid]).array.shape == (64, 64, 2)


def test_links_are_followed_once_and_fifos_never_opened(tmp_path):
    root = tmp_path / "root"
    uid, _ = write_series(tmp_path / "elsewhere" / "s", 3)
    root.mkdir()
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a series outside, linked in
    (root / "loop").symlink_to(root, target_is_directory=True)  # a link back up: walked once, not forever
    os.mkfifo(root / "pipe")  # not named like DICOM: ignored without opening (reading it would block)
    os.mkfifo(root / "pipe.dcm")  # named like DICOM: reported, still without opening it
    found = find_series(root)
    (series,) = [s for s in found if not s.problem]
    assert series.uid == uid and len(series.files) == 3
    (fifo,) = [s for s in found if s.problem]
    assert fifo.files == (root / "pipe.dcm",) and "not a regular file" in fifo.problem


def test_read_series_of_a_folder_needs_exactly_one_series(tmp_path):
    uid1, _ = write_series(tmp_path / "two" / "a", 2)
    uid2, _ = write_series(tmp_path / "two" / "b", 2)
    with pytest.raises(InputError, match="holds 2 DICOM series") as err:
        read_series(tmp_path / "two")
    assert uid1 in str(err.value) and uid2 in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no DICOM files"):
        read_series(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        read_series(tmp_path / "nowhere")
    assert read_scan(tmp_path / "two" / "a").array.shape == (128, 128, 2)  # a series folder as a scan source
    (tmp_path / "x.nii.gz").mkdir()
    with pytest.raises(InputError, match="is a directory"):  # a folder named like an image is not a series
        read_scan(tmp_path / "x.nii.gz")


def test_case_ids_are_plain_names_derived_from_the_uid():
    assert series_case_id("1.2.840.113619.2.55.3.604688119") == "1.2.840.113619.2.55.3.604688119"
    odd = ["1.2.3/../etc", ".1.2", "1.2 3", "x" * 70, "1.2.3\\4"]
    ids = [series_case_id(u) for u in odd]
    assert all(plain_name(i) is None for i in ids) and len(set(ids)) == len(ids)
    assert ids[0].startswith("1.2.3_.._etc-") and len(ids[0]) == len("1.2.3_.._etc") + 9
    assert series_case_id("1.2.3/../etc") == ids[0]  # the same UID always gives the same id


def test_a_folder_lists_image_files_and_dicom_series_as_cases(tmp_path):
    write_image(tmp_path / "in" / "head.nii.gz", np.ones((4, 4, 4), np.float32))
    uid, _ = write_series(tmp_path / "in" / "sub" / "series", 3)
    cases = read_manifest(tmp_path / "in")
    assert [c.case_id for c in cases] == ["head", uid] and all(c.set == "in" for c in cases)
    dicom = cases[1]
    assert dicom.path == tmp_path / "in" / "sub" / "series" and dicom.source is dicom.series
    assert cases[0].source == tmp_path / "in" / "head.nii.gz"
    assert read_scan(dicom.source).array.shape == (128, 128, 3)
    write_image(tmp_path / "in" / f"{uid}.nii.gz", np.ones((4, 4, 4), np.float32))
    with pytest.raises(InputError, match=f"{uid}.nii.gz and DICOM series {uid} .* give the same case id"):
        read_manifest(tmp_path / "in")


def test_an_output_folder_holding_a_series_files_is_refused(tmp_path):
    uid, _ = write_series(tmp_path / "in" / "s", 2)
    cases = read_manifest(tmp_path / "in")
    with pytest.raises(OutputError, match=f"holds the DICOM series {uid}"):
        check_output_folder(tmp_path / "in" / "s", tmp_path, cases)
    check_output_folder(tmp_path / "out", tmp_path, cases)  # elsewhere: fine


def test_a_folder_with_nothing_to_read_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no image files .* and no DICOM series"):
        read_manifest(tmp_path)


def test_read_image_is_unchanged_for_files(tmp_path):
    path = write_image(tmp_path / "a.nii.gz", np.arange(27, dtype=np.float32).reshape(3, 3, 3))
    assert np.array_equal(read_scan(path).array, read_image(path).array)


def test_pydicom_test_slices_are_what_the_tests_assume():
    ct, mr = template(), template("MR_small.dcm")
    assert (ct.Rows, ct.Columns, ct.Modality, float(ct.RescaleIntercept)) == (128, 128, "CT", -1024.0)
    assert [float(v) for v in ct.ImageOrientationPatient] == list(AXIAL)
    assert (mr.Rows, mr.Columns, mr.Modality) == (64, 64, "MR")
