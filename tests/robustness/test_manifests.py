"""Manifests that once went silently wrong or ended in a traceback (issue: the fault campaign).

Each case is reproduced first: a manifest on disk, read as every command reads it.
"""

import gzip

import numpy as np
import pytest

from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import plain_name, read_manifest
from ldm_ood.errors import InputError


@pytest.fixture
def scan(tmp_path):
    return write_image(tmp_path / "scan.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))


def _manifest(tmp_path, text: str, encoding: str = "utf-8"):
    path = tmp_path / "manifest.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("case_id", ["../../x/scan", "/abs/scan", "a/b", "..", ".hidden", "a\\b", "x\ty"])
def test_a_case_id_that_would_name_a_path_outside_the_output_folder_is_refused_with_its_line(tmp_path, scan, case_id):
    m = _manifest(tmp_path, f"case_id,path,set,split\nok,scan.nii.gz,id,test\n\"{case_id}\",scan.nii.gz,id,test\n")
    with pytest.raises(InputError, match=r"line 3: case_id .* (path separator|starts with a dot|control character)"):
        read_manifest(m)


@pytest.mark.parametrize("set_name", ["../sets", "/tmp/x", "."])
def test_a_set_name_with_a_path_is_refused(tmp_path, scan, set_name):
    m = _manifest(tmp_path, f"case_id,path,set,split\nc,scan.nii.gz,{set_name},test\n")
    with pytest.raises(InputError, match=r"line 2: set "):
        read_manifest(m)


def test_plain_names_are_accepted():
    for name in ("c0", "sub-01_ses-1", "scan 12", "noise_0.1", "far_mr_t1", "ID+2"):
        assert plain_name(name) is None, name


def test_a_utf8_bom_keeps_the_case_id_column(tmp_path, scan):
    m = _manifest(tmp_path, "case_id,path,set,split\nc7,scan.nii.gz,id,val\n", encoding="utf-8-sig")
    (case,) = read_manifest(m)
    assert (case.case_id, case.set, case.split) == ("c7", "id", "val")


def test_split_is_case_insensitive_and_an_unknown_split_names_the_line(tmp_path, scan):
    m = _manifest(tmp_path, "case_id,path,set,split\na,scan.nii.gz,id,Test\nb,scan.nii.gz,id,VAL\n")
    assert [c.split for c in read_manifest(m)] == ["test", "val"]
    bad = _manifest(tmp_path, "case_id,path,set,split\na,scan.nii.gz,id,testing\n")
    with pytest.raises(InputError, match=r"line 2: split 'testing' is not one of train, val, test"):
        read_manifest(bad)


def test_a_short_row_is_an_error_not_a_silent_move_to_set_test(tmp_path, scan):
    m = _manifest(tmp_path, "case_id,path,set,split\na,scan.nii.gz,id,val\nb,scan.nii.gz\n")
    with pytest.raises(InputError, match=r"line 3: 2 of 4 columns"):
        read_manifest(m)


def test_latin1_text_and_an_image_passed_as_manifest_are_clear_errors(tmp_path, scan):
    latin = _manifest(tmp_path, "case_id,path,set,split\ncafé,scan.nii.gz,id,test\n", encoding="latin-1")
    with pytest.raises(InputError, match="not a UTF-8 text manifest"):
        read_manifest(latin)
    image = tmp_path / "image.nii.gz"
    image.write_bytes(gzip.compress(bytes(range(256)) * 4))
    with pytest.raises(InputError, match="not a UTF-8 text manifest"):
        read_manifest(image)
