"""``ldm-ood train ensemble`` (training.ensemble): one LTM per ordering, one after another, each resumable;
a kill between members loses nothing finished, and a retrain replaces the ensemble only once it is complete."""

from __future__ import annotations

import json

import pytest
import torch

import ldm_ood.training.ensemble as ensemble_training
from ldm_ood.artifacts.checkpoint import save_model
from ldm_ood.config import load_config
from ldm_ood.config.stages import stage_info
from ldm_ood.models.first_stage import build_first_stage, encode_indices
from ldm_ood.models.loading import load_ensemble, load_first_stage
from ldm_ood.models.transformer import tokens_to_sequence
from ldm_ood.runs import RunDir
from ldm_ood.training.ensemble import fit_ensemble
from ldm_ood.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
ORDERINGS = ("raster_scan", "s_curve_transposed")
FOLDERS = ("0_raster_scan", "1_s_curve_transposed")
FILES = ("model.safetensors", "config.json", "state.pt", "metrics.csv", "DONE", "precision.json")


class Images(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        self.x = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "case_id": f"case{i}"}


def _run(tmp_path):
    cfg = load_config(preset="tiny-2d", overrides={
        "ensemble": {"orderings": list(ORDERINGS), "optim": {"max_epochs": 1, "preview_every": 100}}})
    run = RunDir(tmp_path / "run")
    torch.manual_seed(0)
    save_model(run.stage_dir("first_stage"), build_first_stage(cfg.first_stage, 2),
               {"stage": "first_stage", "spatial_dims": 2, "config": cfg.model_dump(mode="json")})
    return run, cfg


def _member(run, k, name="model.safetensors", root="ensemble"):
    return run.root / root / FOLDERS[k] / "transformer" / name


def test_train_ensemble_writes_every_member_and_its_record(tmp_path):
    run, cfg = _run(tmp_path)
    assert stage_info("ensemble").fit_fn() is fit_ensemble and stage_info("ensemble").needs == ("first_stage",)
    result = fit_ensemble(run, cfg, Images(4, 0), Images(2, 1))
    assert all(_member(run, k, f).is_file() for k in (0, 1) for f in FILES)
    assert run.done_path("ensemble").is_file() and result.epochs == 2 and result.reason == "max_epochs"
    record = json.loads(run.model_config_path("ensemble").read_text())
    assert record["stage"] == "ensemble" and record["members"] == dict(zip(FOLDERS, ORDERINGS))
    members = load_ensemble(run)
    assert [m.ordering.kind for m in members] == list(ORDERINGS)
    idx = encode_indices(load_first_stage(run), Images(2, 1).x)
    for k, m in enumerate(members):  # each member: the ensemble's architecture, its own ordering, its own val loss
        assert m.config.transformer.ordering == ORDERINGS[k] and m.config.transformer.dim == cfg.ensemble.dim
        assert m.config.transformer.optim == cfg.ensemble.optim
        seq = tokens_to_sequence(idx, m.ordering, cfg.first_stage.num_embeddings)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(m.transformer(seq[:, :-1]).transpose(1, 2), seq[:, 1:]).item()
        assert ce == pytest.approx(read_metrics(_member(run, k, "metrics.csv"))[-1]["val_loss"], rel=1e-5)


def _kill_member(monkeypatch, k):
    """The next training is killed when member ``k`` starts (after the members before it finished)."""
    real = ensemble_training.fit

    def fit(task, train, val, optim, member_run, ctx, resume):
        if member_run.root.name == FOLDERS[k]:
            raise KeyboardInterrupt("killed")
        return real(task, train, val, optim, member_run, ctx, resume)

    monkeypatch.setattr(ensemble_training, "fit", fit)


def test_a_kill_between_members_resumes_without_retraining_the_finished_one(tmp_path, monkeypatch):
    run, cfg = _run(tmp_path)
    _kill_member(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        fit_ensemble(run, cfg, Images(4, 0), Images(2, 1))
    assert _member(run, 0, "DONE").is_file() and not _member(run, 1).parent.exists()
    assert not run.done_path("ensemble").exists() and not run.model_config_path("ensemble").exists()
    first = _member(run, 0).stat().st_mtime_ns, _member(run, 0).read_bytes()
    monkeypatch.undo()

    fit_ensemble(run, cfg, Images(4, 0), Images(2, 1), resume=True)
    assert (_member(run, 0).stat().st_mtime_ns, _member(run, 0).read_bytes()) == first  # not retrained
    assert len(read_metrics(_member(run, 0, "metrics.csv"))) == 1 and _member(run, 1, "DONE").is_file()
    assert run.done_path("ensemble").is_file() and len(load_ensemble(run)) == 2
    assert fit_ensemble(run, cfg, Images(4, 0), Images(2, 1), resume=True).reason == "already_done"

    # a retrain of the finished ensemble is staged: killed half-way, the old ensemble stays whole and usable
    _kill_member(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        fit_ensemble(run, cfg, Images(4, 0), Images(2, 1))
    assert _member(run, 0, "DONE", root="ensemble.staging").is_file() and len(load_ensemble(run)) == 2
    assert _member(run, 0).stat().st_mtime_ns == first[0]
    monkeypatch.undo()
    fit_ensemble(run, cfg, Images(4, 0), Images(2, 1), resume=True)
    assert not run.staging_dir("ensemble").exists() and _member(run, 0).stat().st_mtime_ns != first[0]
    assert len(load_ensemble(run)) == 2
