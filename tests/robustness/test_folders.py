"""Folder-mode inputs that were silently skipped (issue 12): every entry named like an image is a case.

A dangling link, a link loop, a directory or a FIFO named ``*.nii.gz`` used to vanish from the case
list; now each is a case that fails on its own, through the runner's own loading step, with an
:class:`InputError` naming the path, so the run reports it and ends non-zero. Hidden files and
names without an image suffix stay ignored; links to image files are read through.
"""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from ldm_ood.config import DataConfig
from ldm_ood.data.io import read_image, write_image
from ldm_ood.data.manifest import read_manifest
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.errors import BatchError, BatchFailures, InputError
from ldm_ood.methods.runner import load_batches

VOL = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "scans"
    write_image(d / "good.nii.gz", VOL)
    return d


def _load_like_the_runner(cases):
    """``(loaded case ids, failures)`` of the runner's loading step over ``cases``."""
    ctx = SimpleNamespace(preprocessor=Preprocessor(DataConfig(spatial_dims=3, grid=(8, 8, 8))))
    failures = BatchFailures()
    loaded = [item.case.case_id for _, group in load_batches(cases, ctx, 2, failures) for item in group]
    return loaded, failures


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: os.symlink(d / "gone.nii.gz", d / "bad.nii.gz"), "dangling symbolic link"),
        (lambda d: os.symlink(d / "bad.nii.gz", d / "bad.nii.gz"), "symbolic link loop"),
        (lambda d: (os.symlink(d / "b2.nii", d / "bad.nii.gz"), os.symlink(d / "bad.nii.gz", d / "b2.nii")),
         "symbolic link loop"),
        (lambda d: (d / "bad.nii.gz").mkdir(), "is a directory"),
        (lambda d: os.mkfifo(d / "bad.nii.gz"), "not a regular file"),
    ],
    ids=["dangling", "self-loop", "two-link-loop", "directory", "fifo"],
)
def test_a_broken_entry_named_like_an_image_fails_as_its_own_case(folder, make, problem):
    make(folder)
    cases = read_manifest(folder)
    assert "bad" in [c.case_id for c in cases]
    loaded, failures = _load_like_the_runner(cases)
    assert "good" in loaded and "bad" not in loaded
    (message,) = [msg for case_id, msg in failures.items if case_id == "bad"]
    assert str(folder / "bad.nii.gz") in message and problem in message, message
    with pytest.raises(BatchError, match=problem):  # the command ends non-zero, naming it
        failures.raise_if_any("score")
    with pytest.raises(InputError, match=problem):
        read_image(folder / "bad.nii.gz")


def test_links_to_image_files_inside_and_outside_the_folder_are_read_through(folder, tmp_path):
    outside = write_image(tmp_path / "elsewhere" / "far.nii.gz", VOL + 1)
    os.symlink(outside, folder / "linked_out.nii.gz")
    os.symlink(folder / "good.nii.gz", folder / "linked_in.nii.gz")
    cases = read_manifest(folder)
    assert [c.case_id for c in cases] == ["good", "linked_in", "linked_out"]
    loaded, failures = _load_like_the_runner(cases)
    assert loaded == ["good", "linked_in", "linked_out"] and not failures


def test_hidden_files_and_other_names_stay_ignored(folder):
    (folder / "notes.txt").write_text("not an input")
    (folder / "scan.nii.bak").write_bytes(b"old copy")
    (folder / ".hidden.nii.gz").write_bytes(b"editor temp file")
    (folder / "._good.nii.gz").write_bytes(b"macOS metadata")
    os.symlink(folder / "missing", folder / "readme")
    assert [c.case_id for c in read_manifest(folder)] == ["good"]


def test_a_folder_with_only_hidden_images_holds_no_image_files(tmp_path):
    d = tmp_path / "hidden_only"
    write_image(d / ".x.nii.gz", VOL)
    with pytest.raises(InputError, match=r"no image files .*hidden files are ignored"):
        read_manifest(d)


def test_two_files_giving_one_case_id_are_refused_up_front(folder):
    write_image(folder / "good.nii", VOL)
    with pytest.raises(InputError, match=r"good\.nii and good\.nii\.gz give the same case id 'good'"):
        read_manifest(folder)


def test_a_file_name_that_cannot_name_outputs_is_refused_up_front(folder):
    write_image(folder / "bad\nname.nii.gz", VOL)
    with pytest.raises(InputError, match="contains a control character") as err:
        read_manifest(folder)
    assert "bad\nname.nii.gz" in str(err.value)
