"""Calibration of the transformer baselines on the healthy validation split, recomputed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_runs import build_tiny_2d_run

from ldm_ood.config import ConfigError
from ldm_ood.config.schema import TokenHealingConfig
from ldm_ood.data.manifest import read_manifest, select
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.methods.segment.variants import foreground, fpr_threshold
from ldm_ood.methods.transformer_heal.batch import case_seeds, heal_batch, likelihoods, load_heal_models
from ldm_ood.methods.transformer_heal.calibration import token_threshold
from ldm_ood.methods.transformer_heal.pipeline import calibrate_ensemble, calibrate_transformer, segment_ensemble

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return build_tiny_2d_run(tmp_path_factory.mktemp("heal"))[0]


def test_threshold_rules_by_hand():
    values = np.array([-3.0, -1.0, -2.0, -4.0, -5.0])
    thr, rule = token_threshold(values, TokenHealingConfig(percentile=25.0), members=1)
    assert thr == pytest.approx(-4.0) and "percentile 25.0" in rule  # sorted -5 -4 -3 -2 -1: 25 % at -4
    thr, _ = token_threshold(values, TokenHealingConfig(percentile=10.0), members=1)
    assert thr == pytest.approx(-4.6)  # linear between -5 and -4
    thr, rule = token_threshold(values, TokenHealingConfig(probability=0.01), members=8)
    assert thr == pytest.approx(8 * np.log(0.01)) and "probability 0.01" in rule


def test_calibration_is_the_percentile_of_validation_likelihoods_and_the_fpr_of_healed_maps(run):
    cfg = run.load_config()
    cfg.token_healing.percentile = 20.0  # the tiny run's random first stage gives every case the same tokens
    result = calibrate_transformer(run.root, config=cfg, progress=False)
    calib = json.loads(run.calibration_json_path("transformer").read_text())
    models = load_heal_models("transformer", run, cfg, torch.device("cpu"))
    pre = Preprocessor(cfg.data)
    val = select(read_manifest(cfg.data.manifest), split="val")
    xs = {c.case_id: pre.load(c.path)[0][None] for c in val}
    lls = {cid: likelihoods(models, x)[1] for cid, x in xs.items()}
    expected = float(np.percentile(torch.cat(list(lls.values())).double().numpy().ravel(), cfg.token_healing.percentile))
    assert calib["token_threshold"] == pytest.approx(expected, rel=1e-6)
    assert calib["val_scores"] == pytest.approx({cid: -float(ll.double().sum()) for cid, ll in lls.items()})
    fg = []
    for cid, x in xs.items():
        out = heal_batch(models, x, calib["token_threshold"], cfg, case_seeds([cid], cfg.token_healing.seed))
        fg.append(out.anomaly_map[foreground(x)].numpy())
    assert calib["residual_threshold"] == pytest.approx(fpr_threshold(np.concatenate(fg), cfg.segment.fpr), abs=1e-7)
    assert calib["residual_threshold"] > 0  # tokens were resampled
    assert result.threshold == pytest.approx(np.quantile(list(calib["val_scores"].values()), 1 - cfg.segment.fpr))
    assert calib["orderings"] == [cfg.transformer.ordering] and calib["heal_ordering"] == cfg.transformer.ordering
    assert result.details["residual_threshold"] == calib["residual_threshold"]


def test_ensemble_probability_threshold_and_a_changed_healing_member_is_refused(run):
    cfg = run.load_config()
    cfg.token_healing.probability = 0.05
    calibrate_ensemble(run.root, config=cfg, progress=False)
    calib = json.loads(run.calibration_json_path("ensemble").read_text())
    assert calib["token_threshold"] == pytest.approx(len(cfg.ensemble.orderings) * np.log(0.05))
    assert calib["orderings"] == list(cfg.ensemble.orderings) and calib["heal_ordering"] == cfg.ensemble.orderings[0]
    cfg.token_healing.heal_member = 1
    with pytest.raises(ConfigError, match="calibrated with orderings .* healed by raster_scan"):
        segment_ensemble(run.root, config=cfg, progress=False)
    cfg.token_healing.heal_member = len(cfg.ensemble.orderings)
    with pytest.raises(ConfigError, match="heal_member=8 but ensemble.orderings has 8 members"):
        calibrate_ensemble(run.root, config=cfg, progress=False)
    cfg.token_healing.heal_member = 0
    cfg.ensemble.orderings = ("raster_scan", "random")
    with pytest.raises(ConfigError, match="ensemble.orderings=.*needs one trained Transformer per ordering"):
        calibrate_ensemble(run.root, config=cfg, progress=False)
