"""Image files that once were silently misread or ended in a traceback (issue 12, input reading).

Each case is reproduced first: a file on disk, read as every command reads it (``read_image``,
and for the affine the preprocessing that used to fail on it). Every one must end in an
:class:`InputError` naming the file and the problem.
"""

import gzip
import io
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from ldm_ood.config import DataConfig
from ldm_ood.data.io import read_image, read_mask, write_image
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.errors import InputError

VOL = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)


def _refused(path, problem, **kwargs):
    """``read_image(path)`` raises an InputError whose message names ``path`` and ``problem``."""
    with pytest.raises(InputError) as err:
        read_image(path, **kwargs)
    assert str(path) in str(err.value), str(err.value)
    assert problem in str(err.value), str(err.value)
    return str(err.value)


def _nifti_bytes(arr, **fields) -> bytes:
    """An uncompressed NIfTI-1 of ``arr`` whose header fields are then set raw (nibabel would fix them)."""
    data = bytearray(nib.Nifti1Image(arr, np.eye(4)).to_bytes())
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(data)))
    for key, value in fields.items():
        hdr[key] = value
    data[: hdr.sizeof_hdr] = hdr.binaryblock
    return bytes(data)


def _png(path, arr, bit_depth, colour_type):
    """A PNG written chunk by chunk (Pillow cannot write 16-bit colour)."""
    rows = b"".join(b"\x00" + arr[r].astype(">u2" if bit_depth == 16 else "u1").tobytes() for r in range(arr.shape[0]))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", arr.shape[1], arr.shape[0], bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- 1. gzip trailer
@pytest.mark.parametrize("cut", [4, 8])
def test_a_nii_gz_whose_gzip_trailer_is_cut_is_refused(tmp_path, cut):
    full = write_image(tmp_path / "full.nii.gz", VOL)
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(full.read_bytes()[:-cut])
    _refused(path, "unreadable or truncated gzip data (EOFError")


def test_a_nii_gz_with_a_wrong_crc_is_refused(tmp_path):
    raw = bytearray(write_image(tmp_path / "full.nii.gz", VOL).read_bytes())
    raw[-8] ^= 0xFF  # first byte of the CRC32 in the trailer
    path = tmp_path / "crc.nii.gz"
    path.write_bytes(bytes(raw))
    _refused(path, "CRC check failed")


def test_an_intact_nii_gz_and_a_misnamed_plain_nii_still_read(tmp_path):
    good = read_image(write_image(tmp_path / "good.nii.gz", VOL))
    np.testing.assert_array_equal(good.array, VOL)
    plain = tmp_path / "plain.nii.gz"
    plain.write_bytes(gzip.decompress((tmp_path / "good.nii.gz").read_bytes()))
    np.testing.assert_array_equal(read_image(plain).array, VOL)


# ---------------------------------------------------------------- 2. singular affine
@pytest.mark.parametrize(
    "name, fields, problem",
    [
        ("zero", {"srow_x": [0] * 4, "srow_y": [0] * 4, "srow_z": [0] * 4}, "|det| of its 3×3 part ≈ 0"),
        ("rank2", {"srow_x": [1, 0, 0, 0], "srow_y": [2, 0, 0, 0], "srow_z": [0, 0, 1, 0]}, "|det| of its 3×3 part ≈ 0"),
        ("nan", {"srow_x": [np.nan, 0, 0, 0]}, "NaN/Inf entries"),
    ],
)
def test_a_singular_affine_is_refused_at_read_time_not_in_monai(tmp_path, name, fields, problem):
    path = tmp_path / f"{name}.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes(VOL, sform_code=1, qform_code=0, **fields)))
    _refused(path, "singular affine")
    _refused(path, problem)
    with pytest.raises(InputError, match="singular affine"):  # was: RuntimeError naming an Orientation object
        Preprocessor(DataConfig(spatial_dims=3, grid=(8, 8, 8))).load(path)


def test_the_sform_nibabel_prefers_decides_when_the_qform_is_fine(tmp_path):
    path = tmp_path / "both.nii"
    path.write_bytes(_nifti_bytes(VOL, sform_code=1, qform_code=1, srow_x=[0] * 4))
    _refused(path, "singular affine")
    path.write_bytes(_nifti_bytes(VOL, sform_code=0, qform_code=1, srow_x=[0] * 4))
    assert read_image(path).affine[0, 0] == 1.0


def test_a_2d_image_whose_in_plane_affine_is_singular_is_refused(tmp_path):
    # a (1, 8, 8) slice whose voxel axes j, k map to world y, z: x and y of (i, j) span no plane
    affine = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    path = tmp_path / "sagittal.nii.gz"
    nib.save(nib.Nifti1Image(VOL[:1], affine), str(path))
    _refused(path, "singular affine: |det| of its in-plane 2×2 part", spatial_dims=2)


def test_a_2d_slice_with_a_zero_third_affine_column_is_still_read(tmp_path):
    path = tmp_path / "slice.nii"
    path.write_bytes(_nifti_bytes(VOL[:, :, :1], sform_code=1, qform_code=0, srow_z=[0, 0, 0, 0]))
    assert read_image(path, spatial_dims=2).array.shape == (8, 8)
    _refused(path, "|det| of its 3×3 part ≈ 0", spatial_dims=3)


# ---------------------------------------------------------------- 3. values beyond float32
@pytest.mark.parametrize("suffix", [".nii.gz", ".npy"])
def test_float64_beyond_the_float32_range_is_named_as_such_not_as_inf(tmp_path, suffix):
    big = VOL.astype(np.float64)
    big[1, 2, 3] = -1e300
    path = tmp_path / f"big{suffix}"
    if suffix == ".npy":
        np.save(path, big)
    else:
        nib.save(nib.Nifti1Image(big, np.eye(4)), str(path))
    message = _refused(path, "values beyond the float32 range (max |value| = 1.e+300")
    assert "Inf" not in message


def test_a_scale_slope_that_overflows_float32_is_named_as_such(tmp_path):
    img = nib.Nifti1Image((VOL * 1000).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(1e38, 0)
    path = tmp_path / "slope.nii.gz"
    nib.save(img, str(path))
    _refused(path, "values beyond the float32 range")


def test_nan_and_inf_stored_in_the_file_keep_their_message(tmp_path):
    arr = VOL.astype(np.float64)
    arr[0, 0, :2], arr[1, 1, 1] = np.nan, np.inf
    path = tmp_path / "nan.npy"
    np.save(path, arr)
    _refused(path, "contains 2 NaN and 1 Inf voxel(s)")


# ---------------------------------------------------------------- 4. data types
@pytest.mark.parametrize("suffix", [".nii.gz", ".npy"])
def test_complex_data_is_refused_not_silently_made_real(tmp_path, suffix):
    data = VOL.astype(np.complex64) + 1j
    path = tmp_path / f"complex{suffix}"
    np.save(path, data) if suffix == ".npy" else nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    _refused(path, "complex-valued data (dtype complex64) is not a scan of the trained kind")


def test_boolean_data_is_refused_as_a_scan_but_read_as_a_mask(tmp_path):
    path = tmp_path / "mask.npy"
    np.save(path, VOL > 0.5)
    _refused(path, "boolean data (dtype bool) is a mask, not a scan")
    like = read_image(write_image(tmp_path / "scan.npy", VOL))
    assert read_mask(path, like).sum() == (VOL > 0.5).sum()


@pytest.mark.parametrize("suffix", [".nii.gz", ".npy"])
def test_structured_rgb_data_is_refused(tmp_path, suffix):
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = (VOL * 255).astype(np.uint8)
    path = tmp_path / f"rgb{suffix}"
    np.save(path, rgb) if suffix == ".npy" else nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    _refused(path, "structured data")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.uint16, np.float64])
def test_integer_and_float_dtypes_stay_accepted(tmp_path, dtype):
    data = (VOL * 100).astype(dtype)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    img = read_image(path)
    assert img.array.dtype == np.float32
    np.testing.assert_array_equal(img.array, data.astype(np.float32))


# ---------------------------------------------------------------- 6. other odd files
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".png", ".npy"])
def test_a_zero_byte_file_is_an_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    _refused(path, "empty file (0 bytes)")


@pytest.mark.parametrize("name", ["notes.nii", "notes.nii.gz"])
def test_a_nii_that_is_text_is_not_a_nifti_file(tmp_path, name):
    path = tmp_path / name
    text = b"this is a text file, not an image\n" * 20
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    _refused(path, "not a NIfTI file")


def test_an_npy_of_python_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    _refused(path, "holds Python objects (object dtype)")


def test_an_npz_or_a_pickle_named_npy_is_refused(tmp_path):
    npz = tmp_path / "archive.npy"
    with npz.open("wb") as fh:
        np.savez(fh, a=VOL, b=VOL)
    _refused(npz, "an .npz archive")
    pickled = tmp_path / "pickle.npy"
    pickled.write_bytes(b"\x80\x04K\x01.")
    _refused(pickled, "not an NPY file")


def test_a_4d_nifti_with_one_volume_is_3d_and_a_time_series_says_so(tmp_path):
    single = write_image(tmp_path / "single.nii.gz", VOL[..., None])
    assert read_image(single, spatial_dims=3).array.shape == (8, 8, 8)
    series = write_image(tmp_path / "series.nii.gz", np.stack([VOL, VOL + 1, VOL + 2], axis=-1))
    _refused(series, "3 volumes along the 4th and later axes: a time series")


def test_16_bit_grey_and_palette_pngs_are_read_as_grey(tmp_path):
    grey16 = (VOL[0] * 60000).astype(np.uint16)
    PILImage.fromarray(grey16).save(tmp_path / "grey16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey16.png").array, grey16.T.astype(np.float32))
    PILImage.fromarray((VOL[0] * 255).astype(np.uint8)).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").array.shape == (8, 8)


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (4, 2), (6, 4)])
def test_a_16_bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path, colour_type, channels):
    arr = (np.random.default_rng(1).random((6, 5, channels)) * 65535).astype(np.uint16)
    path = _png(tmp_path / "colour16.png", arr, 16, colour_type)
    _refused(path, f"16-bit colour or grey+alpha PNG (colour type {colour_type})")


def test_an_animated_png_is_refused(tmp_path):
    frames = [PILImage.fromarray((VOL[i] * 255).astype(np.uint8)) for i in range(3)]
    path = tmp_path / "animated.png"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    _refused(path, "animated PNG with 3 frames")


def test_a_png_cut_short_is_refused_even_when_its_pixels_decode(tmp_path):
    whole = tmp_path / "whole.png"
    PILImage.fromarray((VOL[0] * 255).astype(np.uint8)).save(whole)
    path = tmp_path / "cut.png"
    path.write_bytes(whole.read_bytes()[:-20])  # IEND and the last IDAT CRC gone
    _refused(path, "unreadable or truncated")


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"dim": [3, 30000, 30000, 30000, 1, 1, 1, 1]}, "the header declares (30000, 30000, 30000) voxels of float32"),
        ({"dim": [3, -8, 8, 8, 1, 1, 1, 1]}, "negative size in dim"),
    ],
)
def test_a_nifti_header_asking_for_more_voxels_than_the_file_holds_is_refused_before_allocating(
        tmp_path, fields, problem):
    path = tmp_path / "header.nii"
    path.write_bytes(_nifti_bytes(VOL, **fields))
    _refused(path, problem)


def test_a_nifti_cut_inside_its_header_or_its_voxels_is_truncated(tmp_path):
    raw = _nifti_bytes(VOL)
    (tmp_path / "header.nii").write_bytes(raw[:200])
    _refused(tmp_path / "header.nii", "shorter than a NIfTI header")
    (tmp_path / "voxels.nii.gz").write_bytes(gzip.compress(raw[:-100]))
    _refused(tmp_path / "voxels.nii.gz", "(2048 bytes) but the file holds 1948 bytes of voxel data")
