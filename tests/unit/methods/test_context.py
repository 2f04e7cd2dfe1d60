"""Shared scoring plumbing: manifest → cases, folder (MOOD) layout, resume, context."""

from __future__ import annotations

import pytest
import torch

from ldm_ood.config import ConfigError, load_config
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.methods import context as common

CFG = load_config(preset="tiny")


def _manifest(tmp_path, rows):
    cases = [Case(cid, tmp_path / f"{cid}.nii.gz", set=s, split=sp) for cid, s, sp in rows]
    for c in cases:
        c.path.write_bytes(b"")
    return write_manifest(tmp_path / "manifest.csv", cases)


ROWS = [("v0", "id", "val"), ("t0", "id", "test"), ("f0", "far", "test"), ("v1", "id", "val"), ("f1", "far", "test")]


def test_validation_and_test_cases_by_split_and_set(tmp_path):
    m = _manifest(tmp_path, ROWS)
    assert [c.case_id for c in common.validation_cases(CFG, m)] == ["v0", "v1"]
    sets = common.test_cases(CFG, m)
    assert {k: [c.case_id for c in v] for k, v in sets.items()} == {"id": ["t0"], "far": ["f0", "f1"]}
    assert list(common.test_cases(CFG, m, ["far"])) == ["far"]
    with pytest.raises(ConfigError, match="nope"):
        common.test_cases(CFG, m, ["nope"])
    with pytest.raises(ConfigError, match="split=val"):
        common.validation_cases(CFG, _manifest(tmp_path, ROWS[1:3]))
    with pytest.raises(ConfigError, match="no manifest"):
        common.manifest_cases(CFG.model_copy(update={"data": CFG.data.model_copy(update={"manifest": None})}), None)


def test_pending_skips_done_ids_in_order():
    cases = [Case(f"c{i}", f"c{i}.nii.gz") for i in range(4)]
    todo, skipped = common.pending(cases, {"c1", "c3", "other"})
    assert [c.case_id for c in todo] == ["c0", "c2"] and skipped == 2


def test_folder_score_is_one_number_and_marks_the_case_done(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for cid in ("a", "b", "c"):
        (inp / f"{cid}.nii.gz").write_bytes(b"")
    out, todo, skipped = common.folder_cases(inp, tmp_path / "out")
    assert out.is_dir() and [c.case_id for c in todo] == ["a", "b", "c"] and skipped == 0
    p = common.write_folder_score(common.folder_score_path(out, "b"), 0.1 + 0.2)
    assert p.read_text() == "0.30000000000000004\n" and common.read_folder_score(p) == 0.1 + 0.2
    common.write_folder_score(out / "c.txt", torch.tensor(-2.5, dtype=torch.float64))
    assert (out / "c.txt").read_text() == "-2.5\n"
    _, todo, skipped = common.folder_cases(inp, out)
    assert [c.case_id for c in todo] == ["a"] and skipped == 2


def test_load_context_config_device_and_preprocessor(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        common.load_context(run, None, device="cpu")
    ctx = common.load_context(run, CFG, device="cpu")  # a given config is used as is
    assert ctx.cfg is CFG and ctx.device == torch.device("cpu") and not ctx.run.config_path.exists()
    assert hasattr(ctx.preprocessor, "load") and hasattr(ctx.preprocessor, "invert")
    ctx.run.save_config(CFG.model_copy(update={"score": CFG.score.model_copy(update={"seed": 7})}))
    again = common.load_context(run, None, preprocessor="given", device="cpu")  # else the run's saved config
    assert again.cfg.score.seed == 7 and again.preprocessor == "given"
