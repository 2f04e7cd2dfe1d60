
import numpy as np
import pytest

from ldm_ood.data.io import case_id_of, read_image, read_mask, write_image
from ldm_ood.data.manifest import Case, read_manifest, select, set_names, write_manifest
from ldm_ood.errors import BatchError, BatchFailures, InputError
from ldm_ood.methods.records import RecordWriter, read_records

AFFINE = np.array([[-2.0, 0, 0, 10], [0, 0, 1.5, -20], [0, 3.0, 0, 5], [0, 0, 0, 1]])


def _vol(shape=(6, 5, 4)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_nifti_round_trip_keeps_affine_and_values(tmp_path):
    p = write_image(tmp_path / "a.nii.gz", _vol(), AFFINE)
    img = read_image(p, spatial_dims=3)
    np.testing.assert_array_equal(img.array, _vol())
    np.testing.assert_allclose(img.affine, AFFINE)
    assert case_id_of(p) == "a"


def test_png_and_npy_round_trip(tmp_path):
    a = np.linspace(0, 1, 12 * 8, dtype=np.float32).reshape(12, 8)
    png = read_image(write_image(tmp_path / "s.png", a), spatial_dims=2)
    assert png.array.shape == (12, 8)
    np.testing.assert_allclose(png.array / 255.0, a, atol=1 / 255)
    npy = read_image(write_image(tmp_path / "s.npy", a))
    np.testing.assert_array_equal(npy.array, a)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: d / "missing.nii.gz", "file not found"),
        (lambda d: _write_bytes(d / "trunc.nii.gz", _truncated_nifti(d)), "unreadable or truncated"),
        (lambda d: _write_bytes(d / "junk.png", b"not a png"), "unreadable or truncated"),
        (lambda d: write_image(d / "nan.nii.gz", np.where(_vol() > 3, np.nan, _vol())), "NaN"),
        (lambda d: write_image(d / "inf.npy", np.where(_vol() > 3, np.inf, _vol())), "Inf"),
        (lambda d: write_image(d / "const.nii.gz", np.ones((4, 4, 4))), "constant image"),
        (lambda d: write_image(d / "empty.npy", np.zeros((0, 4, 4))), "empty image"),
        (lambda d: write_image(d / "1d.npy", np.arange(5.0)), "wrong dimensionality"),
        (lambda d: _write_bytes(d / "a.txt", b"x"), "unsupported file type"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        read_image(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_wrong_dimensionality_when_2d_required(tmp_path):
    p = write_image(tmp_path / "v.nii.gz", _vol())
    with pytest.raises(InputError, match="expected 2D"):
        read_image(p, spatial_dims=2)


def test_mask_shape_mismatch(tmp_path):
    img = read_image(write_image(tmp_path / "i.nii.gz", _vol()))
    m = write_image(tmp_path / "m.nii.gz", np.zeros((6, 5, 3)))
    with pytest.raises(InputError, match=r"mask shape \(6, 5, 3\) differs from image shape \(6, 5, 4\)"):
        read_mask(m, img)
    ok = write_image(tmp_path / "m2.nii.gz", (_vol() > 50).astype(np.float32))
    assert read_mask(ok, img).sum() == (_vol() > 50).sum()


def _truncated_nifti(d):
    p = write_image(d / "full.nii.gz", np.random.default_rng(0).random((20, 20, 20)))
    return p.read_bytes()[:200]


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def test_manifest_round_trip_and_selection(tmp_path):
    paths = [write_image(tmp_path / f"c{i}.nii.gz", _vol() + i) for i in range(3)]
    cases = [
        Case("c0", paths[0], split="train", set="id"),
        Case("c1", paths[1], mask=paths[0], split="val", set="id"),
        Case("c2", paths[2], split="test", set="noise_0.1"),
    ]
    m = write_manifest(tmp_path / "manifest.csv", cases)
    assert "c0.nii.gz" in m.read_text()  # relative paths
    back = read_manifest(m)
    assert [c.case_id for c in back] == ["c0", "c1", "c2"]
    assert back[1].mask == paths[0].resolve() or back[1].mask.resolve() == paths[0].resolve()
    assert [c.case_id for c in select(back, split="val")] == ["c1"]
    assert set_names(back, split=None) == ["id", "noise_0.1"]


def test_manifest_missing_file_names_line(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("case_id,path\nok,a.nii.gz\n")
    with pytest.raises(InputError, match=r"line 2: .*a\.nii\.gz does not exist"):
        read_manifest(m)
    m.write_text("id,file\n")
    with pytest.raises(InputError, match="'path' column"):
        read_manifest(m)


def test_folder_as_input(tmp_path):
    d = tmp_path / "scans"
    for i in range(2):
        write_image(d / f"s{i}.nii.gz", _vol())
    (d / "notes.txt").write_text("ignored")
    cases = read_manifest(d)
    assert [c.case_id for c in cases] == ["s0", "s1"] and {c.set for c in cases} == {"scans"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        read_manifest(tmp_path / "empty")


def test_batch_failures_keep_going_then_raise(tmp_path):
    failures, done = BatchFailures(), []
    for i, path in enumerate([tmp_path / "a.nii.gz", write_image(tmp_path / "b.nii.gz", _vol())]):
        with failures.guard(f"case{i}", path):
            read_image(path)
            done.append(i)
    assert done == [1] and len(failures) == 1
    with pytest.raises(BatchError, match=r"1 item\(s\) failed:\n  case0: .*a\.nii\.gz: file not found"):
        failures.raise_if_any("score")


def test_record_writer_resumes_and_drops_truncated_line(tmp_path):
    w = RecordWriter(tmp_path / "s.csv", ["case_id", "pred_score"])
    w.write({"case_id": "a", "pred_score": 0.1})
    w.write({"case_id": "b", "pred_score": 2.0})
    with (tmp_path / "s.csv").open("a") as fh:
        fh.write("c")  # a killed process left half a row
    assert RecordWriter(tmp_path / "s.csv", ["case_id", "pred_score"]).done_ids() == {"a", "b"}
    assert [float(r["pred_score"]) for r in read_records(tmp_path / "s.csv")] == [0.1, 2.0]
    with pytest.raises(ValueError, match="differ"):
        RecordWriter(tmp_path / "s.csv", ["case_id", "other"])
