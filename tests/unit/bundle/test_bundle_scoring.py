"""Scoring with ``--model``: the same outputs as ``--run`` on the same scans, nothing written into the
bundle (made read-only), and every command that would write into it refused."""

import os
import stat

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from ldm_ood.bundle import open_bundle
from ldm_ood.cli import app
from ldm_ood.errors import BundleError, OutputError
from ldm_ood.methods.context import read_folder_score
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
from ldm_ood.methods.segment.pipeline import segment
from ldm_ood.training.api import train

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def _snapshot(root):
    """``{relative path: (mode, size, mtime_ns, bytes)}`` of every file and folder below ``root``."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            data = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else b""
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def _set_writable(root, writable):
    for folder, dirs, names in os.walk(root):
        for name in names + dirs + [""]:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            os.chmod(path, mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def read_only_bundle(exported):
    """The bundle folder and its files without write permission; restored afterwards."""
    _set_writable(exported.bundle, False)
    try:
        yield exported.bundle
    finally:
        _set_writable(exported.bundle, True)


def _voxels(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def _text(output):
    """The CLI's message as one line: rich's wrapping and panel borders removed."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("command", [("score", "--method", "ldm"),
                                     ("segment", "--method", "segment", "--variant", "c")])
def test_a_read_only_bundle_scores_a_folder_as_its_run_does_and_is_left_untouched(exported, read_only_bundle, tmp_path,
                                                                                  command):
    before = _snapshot(read_only_bundle)
    _invoke(*command, "--model", read_only_bundle, "--input", exported.scans, "--output", tmp_path / "bundle")
    _invoke(*command, "--run", exported.run.root, "--input", exported.scans, "--output", tmp_path / "run")
    assert _snapshot(read_only_bundle) == before  # not a byte, file, folder, lock or permission changed
    from_bundle, from_run = sorted((tmp_path / "bundle").iterdir()), sorted((tmp_path / "run").iterdir())
    assert [p.name for p in from_bundle] == [p.name for p in from_run]
    assert {p.stem for p in from_bundle if p.suffix == ".txt"} == {"f0", "f1"}
    images = 0
    for a, b in zip(from_bundle, from_run):
        if a.suffix == ".txt":
            assert read_folder_score(a) == read_folder_score(b)  # the same float, to the last bit
        else:
            (va, aa), (vb, ab) = _voxels(a), _voxels(b)
            assert va.dtype == vb.dtype and np.array_equal(va, vb) and np.array_equal(aa, ab)
            images += 1
    assert images == (2 if command[0] == "score" else 6)  # map, or healed + map + mask, per scan
    open_bundle(read_only_bundle)  # still verifies


def test_model_needs_folder_mode_and_excludes_run(exported, tmp_path):
    no_folder = runner.invoke(app, ["score", "--model", str(exported.bundle)])
    assert no_folder.exit_code == 2
    assert "--model scores a folder: give --input DIR --output OUT" in _text(no_folder.output)
    both = runner.invoke(app, ["score", "--model", str(exported.bundle), "--run", str(exported.run.root),
                               "--input", str(exported.scans), "--output", str(tmp_path / "o")])
    assert both.exit_code == 2 and "give exactly one of --run" in _text(both.output)
    neither = runner.invoke(app, ["segment", "--input", str(exported.scans), "--output", str(tmp_path / "o")])
    assert neither.exit_code == 2 and "give exactly one of --run" in _text(neither.output)
    ltm = runner.invoke(app, ["score", "--method", "ltm", "--model", str(exported.bundle),
                              "--input", str(exported.scans), "--output", str(tmp_path / "o")])
    assert ltm.exit_code == 1 and "has no calibrated ltm (it runs ldm, segment)" in _text(ltm.output)


def test_writing_into_a_bundle_is_refused(exported, tmp_path):
    root = exported.bundle
    before = _snapshot(root)
    with pytest.raises(BundleError, match="read-only: `score ldm` would write into it"):
        score_ldm(root, progress=False)  # manifest mode writes score files into the run directory
    with pytest.raises(BundleError, match="`calibrate ldm`"):
        calibrate_ldm(root, progress=False)
    with pytest.raises(BundleError, match="`train ldm`"):
        train(root, "ldm")
    with pytest.raises(BundleError, match=r"variant d was not calibrated .*\(calibrated: c\)"):
        segment(root, variant="d", input_dir=exported.scans, output_dir=tmp_path / "d", progress=False, device="cpu")
    with pytest.raises(OutputError, match="inside the model bundle"):
        score_ldm(root, input_dir=exported.scans, output_dir=root / "out", progress=False)
    assert _snapshot(root) == before
