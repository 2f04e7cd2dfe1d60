"""Every scoring method through the one runner (``scoring.runner``): the same contract for LDM, LTM and segmentation.

One tiny 2D run with random networks saved as a trained run would be (first stage, LDM, LTM), loaded
by each method from disk. For each method: a bad file among good ones is reported while the others are
scored (and the call raises ``BatchError`` at the end), a second call resumes (nothing is redone),
folder mode writes ``<case>.txt`` with the score alone and resumes from it, and a clean call returns
the method's ``RunResult``.
"""

import math

import numpy as np
import pytest
import torch

from ldm_ood.artifacts.checkpoint import save_model
from ldm_ood.config import load_config
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.errors import BatchError
from ldm_ood.methods.base import CalibrationResult, RunResult
from ldm_ood.methods.context import read_folder_score
from ldm_ood.methods.ldm.pipeline import calibrate_ldm, score_ldm
from ldm_ood.methods.ltm.pipeline import calibrate_ltm, score_ltm
from ldm_ood.methods.records import read_records
from ldm_ood.methods.segment.pipeline import calibrate_segment, segment
from ldm_ood.models.diffusion import build_unet, latent_multiple
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.models.transformer import build_transformer
from ldm_ood.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


def _slice(rng, shape=(18, 20)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    return (np.where(r < min(shape) * 0.4, 40.0, -1000.0) + rng.normal(0, 3, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    rng = np.random.default_rng(0)
    cfg = load_config(preset="tiny-2d", overrides={
        "score": {"num_inference_steps": 5, "num_t_values": 2, "map_t_values": [250, 500]},
        "segment": {"start_t": 8, "ddim_steps": 3, "kl_num_t": 3, "score_num_t": 4, "batch_size": 2}})
    cases = [Case(f"v{i}", write_image(root / "data" / f"v{i}.nii.gz", _slice(rng)), set="id", split="val")
             for i in range(3)]
    cases += [Case(f"t{i}", write_image(root / "data" / f"t{i}.nii.gz", _slice(rng)), set="id", split="test")
              for i in range(3)]
    bad = root / "data" / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    cases.append(Case("bad", bad, set="id", split="test"))
    cfg.data.manifest = write_manifest(root / "data" / "manifest.csv", cases)
    folder = root / "folder"
    for i in range(2):
        write_image(folder / f"f{i}.nii.gz", _slice(rng))
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")

    run = RunDir(root / "run")
    run.save_config(cfg)
    torch.manual_seed(0)
    dump = cfg.model_dump(mode="json")
    fs = build_first_stage(cfg.first_stage, 2)
    save_model(run.stage_dir("first_stage"), fs, {"stage": "first_stage", "spatial_dims": 2, "config": dump})
    save_model(run.stage_dir("ldm"), build_unet(cfg.ldm, 2, cfg.first_stage.embedding_dim), {
        "stage": "ldm", "spatial_dims": 2, "scale_factor": 0.8, "latent_multiple": latent_multiple(cfg.ldm),
        "latent_spatial_shape": [4, 4], "latent_channels": cfg.first_stage.embedding_dim, "config": dump})
    tokens = cfg.first_stage.num_embeddings + 1
    save_model(run.stage_dir("transformer"), build_transformer(cfg.transformer, tokens, 16), {
        "stage": "transformer", "spatial_dims": 2, "num_tokens": tokens, "seq_len": 16,
        "latent_spatial_shape": [4, 4], "ordering": cfg.transformer.ordering, "ordering_seed": 0, "config": dump})
    return run, folder


METHODS = {
    "ldm": (lambda r: calibrate_ldm(r, progress=False), lambda r, **kw: score_ldm(r, progress=False, **kw),
            lambda run: run.scores_path("ldm", "id")),
    "ltm": (lambda r: calibrate_ltm(r, progress=False), lambda r, **kw: score_ltm(r, progress=False, **kw),
            lambda run: run.scores_path("ltm", "id")),
    "segment": (lambda r: calibrate_segment(r, variants=["c"], device="cpu"),
                lambda r, **kw: segment(r, variant="c", progress=False, **kw),
                lambda run: run.segment_scores_path("c", "id")),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_honours_the_runner_contract(run, tmp_path, method):
    run_dir, folder = run
    calibrate, score, records = METHODS[method]
    cal = calibrate(run_dir.root)
    assert isinstance(cal, CalibrationResult) and cal.method == method and cal.path.is_file()
    assert cal.n == 3 and cal.failed == 0 and all(p.is_file() for p in cal.files.values())
    assert cal.threshold is None if method == "segment" else math.isfinite(cal.threshold)

    # a bad file among good ones: the good ones are scored, the bad one named, the call raises at the end
    with pytest.raises(BatchError, match="bad") as err:
        score(run_dir.root)
    assert [cid for cid, _ in err.value.failures.items] == ["bad"]
    rows = read_records(records(run_dir))
    assert sorted(r["case_id"] for r in rows) == ["t0", "t1", "t2"]
    assert all(math.isfinite(float(r["pred_score"])) and float(r["seconds"]) >= 0 for r in rows)

    # resume: nothing is scored twice (the bad case is tried again and fails again)
    with pytest.raises(BatchError, match="bad"):
        score(run_dir.root)
    assert len(read_records(records(run_dir))) == 3

    # folder mode: <case>.txt holds the score alone, written for the good cases; a rerun resumes from it
    out = tmp_path / f"out_{method}"
    with pytest.raises(BatchError, match="broken"):
        score(run_dir.root, input_dir=folder, output_dir=out)
    scores = {p.stem: read_folder_score(p) for p in out.glob("*.txt")}
    assert set(scores) == {"f0", "f1"} and all(math.isfinite(v) for v in scores.values())
    (folder / "broken.nii.gz").rename(tmp_path / "broken.nii.gz")
    try:
        again = score(run_dir.root, input_dir=folder, output_dir=out)
    finally:
        (tmp_path / "broken.nii.gz").rename(folder / "broken.nii.gz")
    assert isinstance(again, RunResult)
    assert (again.scored, again.skipped, again.failed) == (0, 2, 0)
    assert again.outputs["folder"] == out
