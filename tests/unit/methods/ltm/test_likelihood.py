"""LTM scoring (paper 000 §3.2): scores and maps against hand computations, calibration, pipeline."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from ldm_ood.config import ConfigError, load_config
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.errors import BatchError
from ldm_ood.methods.ltm.likelihood import (
    LTMCalibration,
    LTMNetworks,
    check_ensemble,
    encode_tokens,
    score_image,
    score_tokens,
    token_nll,
    upsample_map,
)
from ldm_ood.methods.ldm.calibration import floored_std
from ldm_ood.methods.ltm.pipeline import calibrate_ltm, score_ltm
from ldm_ood.methods.records import read_records
from ldm_ood.models.first_stage import build_first_stage, encode_indices
from ldm_ood.models.transformer import build_ordering, build_transformer, sequence_log_likelihood, tokens_to_sequence
from ldm_ood.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets
CFG = load_config(preset="tiny")  # 16^3 grid, 2 levels -> 4^3 = 64 tokens, codebook 16
V = CFG.first_stage.num_embeddings
LATENT = (4, 4, 4)


def _networks(kinds=("raster_scan",), seed=0) -> LTMNetworks:
    torch.manual_seed(seed)
    fs = build_first_stage(CFG.first_stage, spatial_dims=3).eval()
    models = [build_transformer(CFG.transformer, V + 1, 64).eval() for _ in kinds]
    return LTMNetworks(fs, models, [build_ordering(k, LATENT) for k in kinds], bos=V)


def test_token_nll_map_puts_each_tokens_nll_at_its_latent_position():
    net = _networks(("s_curve",))
    idx = torch.randint(0, V, (2, *LATENT))
    o = net.orderings[0]
    ll = sequence_log_likelihood(net.transformers[0], tokens_to_sequence(idx, o, V))  # (2, 64) sequence order
    m = token_nll(net.transformers[0], o, idx, V)
    assert m.shape == (2, *LATENT)
    for k in (0, 17, 63):
        pos = np.unravel_index(int(o.sequence[k]), LATENT)
        assert m[(0, *pos)].item() == pytest.approx(-ll[0, k].item(), abs=1e-6)
    assert m.sum().item() == pytest.approx(-ll.sum().item(), rel=1e-5)


def test_score_is_sum_nll_and_ensemble_is_member_mean():
    net = _networks(("raster_scan", "hilbert_curve"))
    idx = torch.randint(0, V, (1, *LATENT))
    maps = [token_nll(m, o, idx, V) for m, o in zip(net.transformers, net.orderings)]
    (s,) = score_tokens(net, idx)
    members = [float(m.sum()) for m in maps]
    assert s.member_nll == pytest.approx(members, rel=1e-6)
    assert s.nll == pytest.approx((members[0] + members[1]) / 2, rel=1e-6)
    assert s.nll_per_token == pytest.approx(s.nll / 64, rel=1e-9)
    torch.testing.assert_close(s.token_nll, (maps[0][0] + maps[1][0]) / 2)
    assert s.nll > 0  # NLL of tokens under a softmax is positive


def test_encode_tokens_matches_first_stage_indices_and_bf16_keeps_fp32_search():
    net = _networks()
    x = torch.rand(2, 1, 16, 16, 16)
    assert torch.equal(encode_tokens(net.first_stage, x), encode_indices(net.first_stage, x))
    assert encode_tokens(net.first_stage, x, bf16=True).shape == (2, *LATENT)
    (s,) = score_image(net, x[:1])
    assert s.token_nll.shape == LATENT
    with pytest.raises(ValueError, match="latent grid"):
        score_image(net, torch.rand(1, 1, 8, 8, 8))


def test_upsample_map_nearest_blocks_and_linear():
    lat = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    up = upsample_map(lat, (4, 4))
    np.testing.assert_array_equal(up, [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    lin = upsample_map(lat, (4, 4), interpolation="linear")
    assert lin[0, 0] == 1.0 and lin[0, 1] == pytest.approx(1.25)  # half-pixel centres, clamped edges
    assert upsample_map(torch.arange(8.0).reshape(2, 2, 2), (4, 4, 4))[3, 3, 3] == 7.0
    with pytest.raises(ValueError):
        upsample_map(lat, (4, 4), interpolation="cubic")


def test_calibration_statistics_by_hand(tmp_path):
    c = LTMCalibration.fit([1.0, 2.0, 3.0, 4.0, 5.0], list("abcde"), fpr=0.2, orderings=["raster_scan"])
    assert c.mean == 3.0 and c.std == pytest.approx(math.sqrt(2.5))
    assert c.threshold == pytest.approx(4.2)  # 0.8 quantile: 4 + 0.2 * (5 - 4)
    assert c.percentile(3.0) == 60.0 and c.percentile(0.0) == 0.0 and c.percentile(9.0) == 100.0
    assert c.flag(4.5) and not c.flag(4.2)
    c.save(tmp_path / "ltm.json")
    assert LTMCalibration.load(tmp_path / "ltm.json") == c


def test_two_sided_calibration_by_hand(tmp_path):
    """Two-sided: |NLL − mean| / std; an abnormally likely scan (low NLL) is flagged like an unlikely one."""
    nll = [1.0, 2.0, 3.0, 4.0, 5.0]
    c = LTMCalibration.fit(nll, list("abcde"), fpr=0.2, orderings=["raster_scan"], tails="two_sided")
    sd = math.sqrt(2.5)
    assert c.mean == 3.0 and c.std == pytest.approx(sd) and c.tails == "two_sided"
    assert c.values == pytest.approx([2 / sd, 1 / sd, 0.0, 1 / sd, 2 / sd])
    assert c.threshold == pytest.approx(2 / sd)  # 0.8 quantile of (0, 1, 1, 2, 2) / sd
    low, high = c.image_score(3.0 - 3 * sd), c.image_score(3.0 + 3 * sd)
    assert low == pytest.approx(3.0) == high and c.flag(low) and c.percentile(low) == 100.0
    assert c.image_score(np.array([3.0, 3.0 + sd])) == pytest.approx([0.0, 1.0])
    assert not c.flag(c.image_score(3.5))
    # the one-sided score (the paper's) never flags the too-likely scan
    one = LTMCalibration.fit(nll, list("abcde"), fpr=0.2, orderings=["raster_scan"], tails="one_sided")
    assert one.image_score(3.0 - 3 * sd) == 3.0 - 3 * sd and not one.flag(one.image_score(3.0 - 3 * sd))
    # a file written before score.tails existed scores one-sided
    legacy = {k: v for k, v in one.__dict__.items() if k != "tails"}
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    old = LTMCalibration.load(tmp_path / "old.json")
    assert old.tails is None and old.image_score(7.0) == 7.0 and old.values == nll
    # the operating point a two-sided calibration gives folder mode flags both directions
    from ldm_ood.methods.operating_point import read_operating_point

    point = read_operating_point(json.loads(json.dumps(c.__dict__)), "ltm")
    assert point.threshold == pytest.approx(c.threshold) and point.flag(low) and point.flag(high)


def test_ensemble_needs_one_model_per_ordering():
    cfg = load_config(preset="tiny", overrides={"transformer": {"ensemble_orderings": ["raster_scan", "s_curve"]}})
    with pytest.raises(ConfigError, match="one trained Transformer per ordering"):
        check_ensemble(cfg, _networks(("raster_scan",)))
    check_ensemble(cfg, _networks(("s_curve", "raster_scan")))
    check_ensemble(CFG, _networks(("raster_scan",)))
    with pytest.raises(ValueError, match="one ordering per transformer"):
        LTMNetworks(_networks().first_stage, [], [], bos=V)


# --------------------------------------------------------------------------- pipeline


def _affine():
    a = np.diag([2.0, 1.5, 3.0, 1.0])
    a[:3, 3] = [-10.0, 5.0, 2.0]
    return a


def _write_cohort(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for i, (split, set_name) in enumerate([("val", "id")] * 3 + [("test", "id")] * 2 + [("test", "far_x")] * 2):
        p = tmp_path / "data" / f"c{i}.nii.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_image(p, rng.uniform(-20, 120, size=(18, 14, 16)).astype(np.float32), _affine())
        cases.append(Case(f"c{i}", p, set=set_name, split=split))
    return write_manifest(tmp_path / "manifest.csv", cases), cases


def test_calibrate_and_score_write_records_and_maps_on_input_grid(tmp_path):
    manifest, cases = _write_cohort(tmp_path)
    run = RunDir(tmp_path / "run")
    net, pre = _networks(), Preprocessor(CFG.data)
    summary = calibrate_ltm(run.root, manifest, config=CFG, networks=net, preprocessor=pre, device="cpu")
    calib = json.loads(run.ltm_calibration_path.read_text())
    assert summary.n == 3 and calib["case_ids"] == ["c0", "c1", "c2"]
    # the statistics are of the sum NLL of each case scored directly; values are their two-sided scores (the default)
    nll = [score_image(net, pre.load(c.path)[0][None], bf16=CFG.score.precision == "bf16")[0].nll for c in cases[:3]]
    assert calib["tails"] == "two_sided" == CFG.score.tails
    assert calib["mean"] == pytest.approx(np.mean(nll), rel=1e-6) and calib["std"] == pytest.approx(np.std(nll, ddof=1), rel=1e-5)
    sd = float(floored_std(np.std(nll, ddof=1), np.mean(nll)))  # this random net gives equal NLLs: the floor
    assert calib["values"] == pytest.approx(np.abs(np.array(nll) - np.mean(nll)) / sd, rel=1e-4, abs=1e-4)

    res = score_ltm(run.root, manifest, config=CFG, networks=net, preprocessor=pre, device="cpu")
    assert res.scored == 4 and res.skipped == 0
    rows = read_records(run.scores_path("ltm", "far_x"))
    assert [r["case_id"] for r in rows] == ["c5", "c6"]
    r = rows[0]
    c = LTMCalibration.load(run.ltm_calibration_path)
    assert float(r["percentile"]) == pytest.approx(c.percentile(float(r["pred_score"])))
    assert r["flag"] == str(int(float(r["pred_score"]) > c.threshold))
    assert float(r["pred_score"]) == pytest.approx(abs(float(r["nll"]) * 64 - c.mean) / floored_std(c.std, c.mean), rel=1e-6)
    img = nib.load(r["map_path"])
    assert img.shape == (18, 14, 16)
    np.testing.assert_allclose(img.affine, _affine(), atol=1e-5)
    assert np.isfinite(img.get_fdata()).all() and img.get_fdata().max() > 0

    again = score_ltm(run.root, manifest, config=CFG, networks=net, preprocessor=pre, device="cpu")
    assert again.scored == 0 and again.skipped == 4  # resume skips finished rows


def test_bad_file_fails_alone_and_folder_mode(tmp_path):
    manifest, cases = _write_cohort(tmp_path)
    cases[4].path.write_bytes(b"not a nifti")
    run = RunDir(tmp_path / "run")
    kw = dict(config=CFG, networks=_networks(), preprocessor=Preprocessor(CFG.data), device="cpu")
    with pytest.raises(BatchError, match="c4"):
        score_ltm(run.root, manifest, sets=["id"], **kw)
    assert [r["case_id"] for r in read_records(run.scores_path("ltm", "id"))] == ["c3"]
    assert read_records(run.scores_path("ltm", "id"))[0]["percentile"] == ""  # not calibrated

    cases[4].path.unlink()
    out = tmp_path / "out"
    res = score_ltm(run.root, input_dir=tmp_path / "data", output_dir=out, **kw)
    assert res.scored == 6
    # MOOD layout, as the LDM's folder mode: the score alone, equal to the sum NLL of the scan
    x, _ = Preprocessor(CFG.data).load(cases[0].path)
    expected = score_image(kw["networks"], x[None], bf16=CFG.score.precision == "bf16")[0].nll
    txt = (out / "c0.txt").read_text()
    assert txt == f"{float(txt)!r}\n" and float(txt) == pytest.approx(expected, rel=1e-6)
    assert res.skipped == 0 and score_ltm(run.root, input_dir=tmp_path / "data", output_dir=out, **kw).skipped == 6
    assert nib.load(out / "c0.nii.gz").shape == (18, 14, 16)
