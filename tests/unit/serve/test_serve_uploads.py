"""What the service does with an uploaded file: its name only becomes a safe case id, its size is
bounded (also once decompressed or unpacked), a zip is read as one DICOM series, and every problem is
an UploadError naming the upload (never the server's path) with the HTTP status of its kind: 400
unreadable, 413 too large, 422 not a usable scan or series."""

import gzip
import io
import zipfile

import numpy as np
import pytest

from dicom_series import write_series

from ldm_ood.data.dicom import read_series
from ldm_ood.data.io import write_image
from ldm_ood.errors import UploadError
from ldm_ood.serve.uploads import check_decompressed_size, read_upload, save_upload, upload_case_id


@pytest.mark.parametrize("filename, case_id", [
    ("sub-01.nii.gz", "sub-01"), ("scan.v2.nii", "scan.v2"), ("../../etc/passwd", "passwd"),
    ("C:\\data\\head_1.nii.gz", "head_1"), (".hidden.nii", "scan"), ("a b.nii", "scan"), ("ü.nii", "scan"),
    ("", "scan"), (None, "scan"), ("x" * 128 + ".nii", "x" * 128), ("x" * 129 + ".nii", "scan"), ("/", "scan"),
])
def test_the_upload_name_only_becomes_a_plain_case_id(filename, case_id):
    assert upload_case_id(filename) == case_id


def test_save_upload_bounds_the_size(tmp_path):
    assert save_upload(io.BytesIO(b"x" * 1000), tmp_path / "a", 1000, "a.nii") == 1000
    with pytest.raises(UploadError, match="a.nii: larger than the upload limit of 999 bytes") as err:
        save_upload(io.BytesIO(b"x" * 1000), tmp_path / "b", 999, "a.nii")
    assert err.value.status == 413
    with pytest.raises(UploadError, match="empty upload") as err:
        save_upload(io.BytesIO(b""), tmp_path / "c", 10, "e.nii")
    assert err.value.status == 400


def test_the_decompressed_size_is_bounded_over_every_gzip_member(tmp_path):
    path = tmp_path / "z.gz"
    path.write_bytes(gzip.compress(b"\0" * 3_000_000))  # 3 MB of zeros in ~3 kB
    check_decompressed_size(path, 3_000_000, "z.nii.gz")
    with pytest.raises(UploadError, match="z.nii.gz: decompresses to more than the image limit of 2999999") as err:
        check_decompressed_size(path, 2_999_999, "z.nii.gz")
    assert err.value.status == 413
    path.write_bytes(gzip.compress(b"\1" * 600) + gzip.compress(b"\2" * 600))  # two members, 1200 bytes
    check_decompressed_size(path, 1200, "m")
    with pytest.raises(UploadError, match="decompresses to more"):
        check_decompressed_size(path, 1199, "m")
    path.write_bytes(gzip.compress(b"\0" * 5000)[:20])  # cut short: left to the reader
    check_decompressed_size(path, 100, "cut")


def _upload(tmp_path, array, name="scan.nii"):
    path = tmp_path / "private" / name
    path.parent.mkdir(exist_ok=True)
    write_image(tmp_path / "w.nii.gz", array)
    path.write_bytes((tmp_path / "w.nii.gz").read_bytes())
    return path


@pytest.fixture
def slice2d():
    yy, xx = np.mgrid[:18, :20]
    return np.where(np.hypot(yy - 9, xx - 10) < 7, 40.0, -1000.0).astype(np.float32)


def test_a_good_upload_reads_as_its_image(tmp_path, slice2d):
    image, case_id = read_upload(_upload(tmp_path, slice2d), "head.nii.gz", 2, 1 << 20)
    assert image.array.shape == (18, 20) and np.array_equal(image.array, slice2d) and case_id is None


@pytest.mark.parametrize("make, status, problem", [
    (lambda s: s[:, :, None].repeat(4, axis=2), 422, r"wrong dimensionality: got shape \(18, 20, 4\), expected 2D"),
    (lambda s: np.where(s > 0, np.nan, s).astype(np.float32), 422, r"contains \d+ NaN and 0 Inf voxel"),
    (lambda s: np.zeros_like(s), 422, "constant image"),
])
def test_a_readable_nifti_that_is_not_a_usable_scan_is_422(tmp_path, slice2d, make, status, problem):
    path = _upload(tmp_path, make(slice2d))
    with pytest.raises(UploadError, match=f"^up.nii.gz: {problem}") as err:
        read_upload(path, "up.nii.gz", 2, 1 << 20)
    assert err.value.status == status


def test_unreadable_bytes_are_400_naming_the_upload_only(tmp_path, slice2d):
    good = _upload(tmp_path, slice2d).read_bytes()
    cases = {
        "cut.nii.gz": (good[: len(good) // 2], 400, "unreadable or truncated gzip data"),
        "text.nii": (b"hello, this is not an image\n" * 20, 400, "not a NIfTI file"),
        "tiny.nii": (b"abc", 400, "shorter than a NIfTI header"),
        "series.zip": (b"PK\x03\x04" + bytes(100), 400, "not a readable zip archive"),
    }
    for name, (data, status, problem) in cases.items():
        path = tmp_path / "private" / "scan.nii"
        path.write_bytes(data)
        with pytest.raises(UploadError, match=problem) as err:
            read_upload(path, name, 2, 1 << 20)
        assert err.value.status == status and str(err.value).startswith(f"{name}: ")
        assert str(tmp_path) not in str(err.value)
    path.write_bytes(good)
    with pytest.raises(UploadError, match="image limit of 100 bytes") as err:
        read_upload(path, "big.nii", 2, 100)
    assert err.value.status == 413


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_zip_of_one_dicom_series_reads_as_the_series(tmp_path):
    uid, files = write_series(tmp_path / "series", 3)
    members = {f"study/{f.name}": f.read_bytes() for f in files}
    members.update({"__MACOSX/study/._IM0000.dcm": b"resource fork", "study/.DS_Store": b"x",
                    "../../escape/notes.txt": b"not dicom, not named .dcm: ignored"})
    path = tmp_path / "up" / "scan.nii"
    path.parent.mkdir()
    _zip(path, members)
    image, case_id = read_upload(path, "series.zip", 3, 1 << 24)
    expected = read_series(tmp_path / "series", 3)
    assert case_id == uid and np.array_equal(image.array, expected.array) and np.allclose(image.affine, expected.affine)
    unpacked = sorted(p.name for p in (path.parent / "series").iterdir())
    assert len(unpacked) == 4 and unpacked[-1].endswith("-notes.txt")  # inside the folder, under a made name
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("kind, status, problem", [
    ("two series", 422, "holds 2 DICOM series"),
    ("gap", 422, "slice"),
    ("no dicom", 422, "holds no DICOM files"),
    ("too large", 413, "unpacks to more than the image limit"),
])
def test_a_zip_that_is_not_one_readable_series_is_refused(tmp_path, kind, status, problem):
    members = {}
    if kind == "two series":
        for k in range(2):
            members.update({f"s{k}/{f.name}": f.read_bytes() for f in write_series(tmp_path / f"s{k}", 2, seed=k)[1]})
    elif kind == "gap":
        members = {f.name: f.read_bytes() for f in write_series(tmp_path / "g", 5, skip=(2,))[1]}
    elif kind == "no dicom":
        members = {"report.txt": b"a report"}
    else:
        members = {"big.dcm": bytes(1 << 20)}
    path = tmp_path / "up" / "scan.nii"
    path.parent.mkdir()
    _zip(path, members)
    with pytest.raises(UploadError, match=problem) as err:
        read_upload(path, "series.zip", 3, 1 << 19)
    assert err.value.status == status and str(err.value).startswith("series.zip: ")
    assert str(tmp_path) not in str(err.value)
