"""Outputs stay inside their root, never overwrite an input, are written atomically with umask permissions."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm_ood.artifacts.atomic import atomic_output, atomic_write_text
from ldm_ood.artifacts.checkpoint import save_model
from ldm_ood.config import load_config
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case
from ldm_ood.errors import BatchError, ConfigError, InputError, OutputError
from ldm_ood.methods.base import DetectionFiles
from ldm_ood.methods.context import load_context
from ldm_ood.methods.outputs import check_output_folder, write_image_atomic
from ldm_ood.methods.records import read_records
from ldm_ood.methods.runner import run_method
from ldm_ood.runs import RunDir

CFG = load_config(preset="tiny-2d")


@dataclass
class MeanMethod(DetectionFiles):
    """A stand-in method: the mean intensity as score, the image itself as its map."""

    key = "ldm"
    name: str = "mean"
    label: str = "mean"
    batch_size: int = 2
    fieldnames: tuple = ("case_id", "set", "pred_score", "seconds")

    def score_batch(self, cases, x, metas, out_dir: Path):
        for case, xi in zip(cases, x):
            write_image_atomic(out_dir / f"{case.case_id}.nii.gz", xi[0].numpy())
        return [{"pred_score": float(xi.mean())} for xi in x]


def _scan(path: Path) -> Path:
    return write_image(path, np.random.default_rng(0).normal(0, 20, (16, 16)).astype(np.float32))


def test_folder_mode_refuses_to_write_its_outputs_into_the_input_folder(tmp_path):
    folder = tmp_path / "scans"
    scan = _scan(folder / "a.nii.gz")
    before = scan.read_bytes()
    ctx = load_context(tmp_path / "run", CFG, device="cpu")
    with pytest.raises(OutputError, match="holds the input scan .*a.nii.gz: outputs would overwrite inputs"):
        run_method(MeanMethod(), ctx, input_dir=folder, output_dir=folder, progress=False)
    assert scan.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.nii.gz"]


def test_a_case_id_that_is_a_path_is_refused_before_anything_is_written(tmp_path):
    scan = _scan(tmp_path / "data" / "a.nii.gz")
    ctx = load_context(tmp_path / "run", CFG, device="cpu")
    for bad in ("../../x", str(tmp_path / "abs"), ".hidden"):
        cases = [Case(bad, scan, set="id", split="test")]
        manifest = tmp_path / "m.csv"
        manifest.write_text(f"case_id,path,set,split\n{bad},{scan},id,test\n")
        with pytest.raises(InputError):
            run_method(MeanMethod(), ctx, manifest=manifest, progress=False)
        with pytest.raises(InputError, match="case_id .* it names output files"):
            check_output_folder(RunDir(tmp_path / "run").maps_dir("ldm", "id"), tmp_path / "run", cases)
    assert not (tmp_path / "x").exists() and not (tmp_path / "abs.nii.gz").exists()


def test_an_output_folder_outside_the_root_is_refused(tmp_path):
    (tmp_path / "run" / "maps").mkdir(parents=True)
    (tmp_path / "run" / "maps" / "ldm").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(OutputError, match="resolves outside the output root"):
        check_output_folder(tmp_path / "run" / "maps" / "ldm" / "id", tmp_path / "run", [])


def test_atomic_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        write_image_atomic(tmp_path / "m.nii.gz", np.zeros((4, 4), np.float32))
        save_model(tmp_path / "stage", torch.nn.Linear(2, 2), {"stage": "ldm"})  # safetensors writes a file of its own
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "m.nii.gz").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "stage" / "model.safetensors").stat().st_mode & 0o777) == "0o644"


def test_a_full_disk_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "map.nii.gz"
    target.write_bytes(b"previous")

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=f"{target}: could not be written: No space left on device"):
        with atomic_output(target) as tmp:
            full(tmp)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["map.nii.gz"]


def test_scores_and_maps_are_written_for_good_cases(tmp_path):
    scans = [_scan(tmp_path / "data" / f"s{i}.nii.gz") for i in range(3)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,path,set,split\n" + "".join(f"s{i},{p},id,test\n" for i, p in enumerate(scans)))
    ctx = load_context(tmp_path / "run", CFG, device="cpu")
    res = run_method(MeanMethod(), ctx, manifest=manifest, progress=False)
    maps = ctx.run.maps_dir("ldm", "id")
    assert res.scored == 3 and sorted(p.name for p in maps.iterdir()) == [f"s{i}.nii.gz" for i in range(3)]


def test_a_missing_file_fails_as_its_own_case_and_the_others_are_scored(tmp_path):
    scans = [_scan(tmp_path / "data" / f"s{i}.nii.gz") for i in range(2)]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case_id,path,set,split\ns0,{scans[0]},id,test\ngone,{tmp_path}/gone.nii.gz,id,test\n"
                        f"s1,{scans[1]},id,test\n")
    ctx = load_context(tmp_path / "run", CFG, device="cpu")
    with pytest.raises(BatchError, match="gone: .*gone.nii.gz: file not found") as err:
        run_method(MeanMethod(), ctx, manifest=manifest, progress=False)
    assert [cid for cid, _ in err.value.failures.items] == ["gone"]
    assert sorted(r["case_id"] for r in read_records(ctx.run.scores_path("ldm", "id"))) == ["s0", "s1"]


def test_a_manifest_without_test_rows_is_an_error_not_an_empty_success(tmp_path):
    scan = _scan(tmp_path / "data" / "a.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case_id,path,set,split\na,{scan},id,train\nb,{scan},id,val\n")
    ctx = load_context(tmp_path / "run", CFG, device="cpu")
    with pytest.raises(ConfigError, match="no split=test rows to score \\(splits found: train, val\\)"):
        run_method(MeanMethod(), ctx, manifest=manifest, progress=False)


def test_folder_mode_names_a_missing_input_folder_and_an_output_that_is_a_file(tmp_path):
    ctx = load_context(tmp_path / "run", CFG, device="cpu")
    with pytest.raises(InputError, match="nope: the input folder does not exist"):
        run_method(MeanMethod(), ctx, input_dir=tmp_path / "nope", output_dir=tmp_path / "out", progress=False)
    _scan(tmp_path / "in" / "a.nii.gz")
    (tmp_path / "results.txt").write_text("x")
    with pytest.raises(OutputError, match="results.txt: is a file, not a folder"):
        run_method(MeanMethod(), ctx, input_dir=tmp_path / "in", output_dir=tmp_path / "results.txt", progress=False)


def test_a_symlink_loop_in_the_input_folder_fails_as_its_own_case(tmp_path):
    _scan(tmp_path / "in" / "a.nii.gz")
    (tmp_path / "in" / "loop.nii.gz").symlink_to(tmp_path / "in" / "loop.nii.gz")
    ctx = load_context(tmp_path / "run", CFG, device="cpu")
    with pytest.raises(BatchError, match="loop") as err:
        run_method(MeanMethod(), ctx, input_dir=tmp_path / "in", output_dir=tmp_path / "out", progress=False)
    assert [cid for cid, _ in err.value.failures.items] == ["loop"] and (tmp_path / "out" / "a.txt").exists()
