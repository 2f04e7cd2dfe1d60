"""Paper 000 §2.2 scoring: calibration statistics, z-scores, final score, operating point, similarity."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from ldm_ood.config import load_config
from ldm_ood.methods.ldm.calibration import (
    METRIC_STD_REL_FLOOR,
    OODCalibration,
    combine,
    fit_calibration,
    floored_std,
    operating_threshold,
    percentile_of,
)
from ldm_ood.methods.ldm.reconstruct import decode_chains, reconstruct
from ldm_ood.methods.ldm.similarity import lpips_similarity, measure, mse
from ldm_ood.models.diffusion import build_inference_scheduler, build_unet
from ldm_ood.models.first_stage import build_first_stage

VAL = {
    "mse": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]),
    "lpips": np.array([[0.1, 0.2], [0.2, 0.2], [0.3, 0.5]]),
}

pytestmark = pytest.mark.usefixtures("one_thread")  # small nets and images


def test_fit_calibration_and_score_match_hand_computation(tmp_path):
    cal = fit_calibration(["a", "b", "c"], VAL, t_values=[100, 300], map_t_values=[100], fpr=0.5)
    # per-t mean and sample std (ddof = 1)
    assert cal.mean["mse"] == pytest.approx([3.0, 5.0])
    assert cal.std["mse"] == pytest.approx([2.0, np.sqrt(((2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2) / 2)])
    assert cal.mean["lpips"] == pytest.approx([0.2, 0.3])
    assert cal.std["lpips"] == pytest.approx([0.1, np.sqrt((0.01 + 0.01 + 0.04) / 2)])
    # a new scan: z = (d - mu) / sigma, higher distance -> higher score
    new = {"mse": np.array([[7.0, 5.0]]), "lpips": np.array([[0.4, 0.3]])}
    s = cal.score(new)
    z_mse = [(7 - 3) / 2.0, 0.0]
    z_lp = [(0.4 - 0.2) / 0.1, 0.0]
    assert s["z_mse"][0] == pytest.approx(z_mse)
    assert s["score_mse"][0] == pytest.approx(np.mean(z_mse))
    assert s["score_lpips"][0] == pytest.approx(np.mean(z_lp))
    assert s["pred_score"][0] == pytest.approx(np.mean(z_mse + z_lp))
    # validation score distribution, threshold at the (1 - fpr) quantile, percentile, flag
    val_scores = [np.mean([(VAL["mse"][i] - cal.mean["mse"]) / cal.std["mse"], (VAL["lpips"][i] - cal.mean["lpips"]) / cal.std["lpips"]]) for i in range(3)]
    assert cal.val_scores == pytest.approx(val_scores)
    assert cal.threshold == pytest.approx(np.median(val_scores))
    assert s["pred_score"][0] == pytest.approx(1.0) and sorted(val_scores)[1] < 1.0 < sorted(val_scores)[2]
    assert s["percentile"][0] == pytest.approx(100 * 2 / 3) and bool(s["flag"][0])  # above the median
    low = cal.score({"mse": VAL["mse"][:1], "lpips": VAL["lpips"][:1]})
    assert low["percentile"][0] == pytest.approx(100 * 1 / 3) and not bool(low["flag"][0])
    # round trip
    cal.save(tmp_path / "ood.json")
    back = OODCalibration.load(tmp_path / "ood.json")
    assert back.score(new)["pred_score"] == pytest.approx(s["pred_score"])


def test_lower_distance_than_validation_gives_negative_score():
    cal = fit_calibration(["a", "b", "c"], VAL, [100, 300], [], fpr=0.05)
    s = cal.score({"mse": np.array([[0.0, 0.0]]), "lpips": np.array([[0.0, 0.0]])})
    assert s["pred_score"][0] < 0 and s["percentile"][0] == 0.0


def test_std_floor_for_constant_metric_and_single_scan():
    cal = fit_calibration(["a", "b"], {"mse": np.array([[2.0], [2.0]])}, [10], [], fpr=0.05)
    assert cal.std["mse"] == [pytest.approx(2.0 * METRIC_STD_REL_FLOOR)]
    one = fit_calibration(["a"], {"mse": np.array([[4.0]])}, [10], [], fpr=0.05)
    assert np.isfinite(one.std["mse"][0]) and one.std["mse"][0] > 0
    assert floored_std(np.array([np.nan, 5.0]), np.array([0.0, 1.0]))[1] == 5.0


def test_combine_percentile_threshold_definitions():
    z = {"mse": np.array([[1.0, 3.0]]), "lpips": np.array([[-1.0, 1.0]])}
    c = combine(z)
    assert c["pred_score"][0] == 1.0 and c["score_mse"][0] == 2.0 and c["score_lpips"][0] == 0.0
    ref = list(range(1, 101))  # 1..100
    assert percentile_of(np.array([50.0, 0.0, 100.0]), ref).tolist() == [50.0, 0.0, 100.0]
    assert operating_threshold(ref, 0.05) == pytest.approx(np.quantile(ref, 0.95))
    assert np.mean(np.array(ref) > operating_threshold(ref, 0.05)) == pytest.approx(0.05)


def test_check_compatible_names_the_difference():
    cal = fit_calibration(["a", "b"], {"mse": np.ones((2, 2))}, [100, 300], [100], 0.05, {"sampler": "plms"})
    cal.check_compatible([100, 300], [100], {"sampler": "plms"})
    with pytest.raises(ValueError, match="t-values"):
        cal.check_compatible([100, 200], [100], {"sampler": "plms"})
    with pytest.raises(ValueError, match="sampler"):
        cal.check_compatible([100, 300], [100], {"sampler": "ddim"})
    # a calibration without the key z-scored the paper's absolute error maps
    with pytest.raises(ValueError, match="map_error 'missing' != calibrated 'absolute'"):
        cal.check_compatible([100, 300], [100], {"sampler": "plms", "map_error": "missing"})
    cal.check_compatible([100, 300], [100], {"sampler": "plms", "map_error": "absolute"})


class _PlaneProbe(torch.nn.Module):
    """Fake LPIPS: the value of a slice pair is 1, 10 or 100 according to the slice shape (plane)."""

    def __init__(self, shapes):
        super().__init__()
        self.codes = {shapes[0]: 1.0, shapes[1]: 10.0, shapes[2]: 100.0}
        self.seen = set()

    def features(self, a):
        hw = tuple(a.shape[-2:])
        self.seen.add(hw)
        return [torch.full((a.shape[0], 1, 1, 1), self.codes[hw])]

    def distance(self, fa, fb):
        return fa[0].flatten(1)[:, 0]


def test_lpips_volume_averages_all_slices_of_all_three_planes():
    X, Y, Z = 4, 6, 8
    probe = _PlaneProbe([(Y, Z), (X, Z), (X, Y)])
    fn = lpips_similarity(probe, spatial_dims=3, batch_slices=5)
    v = fn(torch.rand(2, 3, 1, X, Y, Z), torch.rand(2, 1, X, Y, Z))  # 3 reconstructions of each of 2 volumes
    assert probe.seen == {(Y, Z), (X, Z), (X, Y)}
    expected = (X * 1.0 + Y * 10.0 + Z * 100.0) / (X + Y + Z)  # mean over every slice
    torch.testing.assert_close(v, torch.full((2, 3), expected))


def test_measure_values_equal_metrics_of_decoded_reconstructions():
    cfg = load_config(preset="tiny")
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, 3).eval()
    unet = build_unet(cfg.ldm, 3, 4).eval()
    sch = build_inference_scheduler(cfg.ldm, "plms", 10)
    x = torch.rand(2, 1, 16, 16, 16)
    rec = reconstruct(fs, unet, sch, x, starts=(100, 300, 500), seeds=[0, 1], multiple=4)
    calls = []

    def fake(recons, ref):  # (B', N', C, *S), (B', C, *S) -> max |difference| of each reconstruction
        calls.append(tuple(recons.shape[:2]))
        return (recons - ref[:, None]).abs().flatten(2).amax(2)

    sim = {"mse": mse, "fake": fake}
    met = measure(fs, rec, x, sim, t_values=(100, 500), map_t_values=(300, 500), decode_batch=4)
    imgs = torch.cat([im for _, im in decode_chains(fs, rec.latents.flatten(0, 1), True, False)]).clamp(0, 1)
    imgs = imgs.view(2, 3, 1, 16, 16, 16)
    for b in range(2):
        for k, i in enumerate((0, 2)):
            assert met.values["mse"][b, k] == pytest.approx(float(((imgs[b, i] - x[b]) ** 2).mean()), rel=1e-5)
            assert met.values["fake"][b, k] == pytest.approx(float((imgs[b, i] - x[b]).abs().max()), rel=1e-6)
        for k, i in enumerate((1, 2)):
            torch.testing.assert_close(met.mae_maps[b, k], (x[b, 0] - imgs[b, i, 0]).abs())
    # the metric ran only on the 2 score chains of each of 2 scans, both chains of a scan in one call
    assert calls == [(1, 2), (1, 2)]
    held = []
    met1 = measure(fs, rec, x, {"fake": lambda r, ref: (held.append(r.shape[1]), fake(r, ref))[1]},
                   t_values=(100, 500), map_t_values=(300, 500), decode_batch=1, measure_batch=1)
    assert held == [1, 1, 1, 1]  # measure_batch=1: one reconstruction per call, same values
    torch.testing.assert_close(met1.values["fake"], met.values["fake"])
    assert met.values["mse"].shape == (2, 2) and met.mae_maps.shape == (2, 2, 16, 16, 16)
    # score.map_error = missing: the tissue each reconstruction puts back, max(x̂ − x, 0); same values
    miss = measure(fs, rec, x, sim, t_values=(100, 500), map_t_values=(300, 500), decode_batch=4, map_error="missing")
    torch.testing.assert_close(miss.values["mse"], met.values["mse"])
    for b in range(2):
        for k, i in enumerate((1, 2)):
            torch.testing.assert_close(miss.mae_maps[b, k], (imgs[b, i, 0] - x[b, 0]).clamp_min(0))
    with pytest.raises(ValueError, match="unknown map error"):
        measure(fs, rec, x, sim, t_values=(100,), map_t_values=(300,), map_error="signed")


def test_a_calibration_written_before_the_execution_rename_reads_with_the_new_key(tmp_path):
    cal = fit_calibration(["a", "b", "c"], {"mse": np.array([[1.0], [2.0], [3.0]])}, [100], [100], 0.05,
                          {"execution": "batched"})
    data = {**asdict(cal), "settings": {"mode": "batched"}}  # the key of older versions
    (tmp_path / "ood.json").write_text(json.dumps(data))
    old = OODCalibration.load(tmp_path / "ood.json")
    assert old.settings == {"execution": "batched"} and old.threshold == cal.threshold


def test_two_sided_score_matches_hand_computation_on_known_z_scores(tmp_path):
    """Two-sided: per metric |mean z| (distance from the validation mean, 0), averaged over the metrics;
    one-sided: the mean of all z-scores."""
    one = fit_calibration(["a", "b", "c"], VAL, t_values=[100, 300], map_t_values=[100], fpr=0.5)
    two = fit_calibration(["a", "b", "c"], VAL, t_values=[100, 300], map_t_values=[100], fpr=0.5,
                          settings={"tails": "two_sided"})
    assert (one.tails, two.tails) == ("one_sided", "two_sided")
    assert two.mean == one.mean and two.std == one.std  # the tails change the score, not the statistics
    mu, sd = one.mean, one.std

    def raw(z_mse, z_lpips):  # raw metric values with the given z-scores
        return {"mse": np.array([np.add(mu["mse"], np.multiply(z_mse, sd["mse"]))]),
                "lpips": np.array([np.add(mu["lpips"], np.multiply(z_lpips, sd["lpips"]))])}

    # too good in both metrics: z_mse = (-2, -1), z_lpips = (-1, 0)
    s1, s2 = one.score(raw([-2, -1], [-1, 0])), two.score(raw([-2, -1], [-1, 0]))
    assert s1["z_mse"][0] == pytest.approx([-2.0, -1.0]) and s1["z_lpips"][0] == pytest.approx([-1.0, 0.0])
    assert s1["score_mse"][0] == pytest.approx(-1.5) and s1["score_lpips"][0] == pytest.approx(-0.5)
    assert s1["pred_score"][0] == pytest.approx(-1.0) == s1["signed_score"][0]
    assert s2["score_mse"][0] == pytest.approx(1.5) and s2["score_lpips"][0] == pytest.approx(0.5)
    assert s2["pred_score"][0] == pytest.approx((1.5 + 0.5) / 2) and s2["signed_score"][0] == pytest.approx(-1.0)
    # opposite deviations do not cancel: z_mse = (2, 2), z_lpips = (-3, -1)
    c1, c2 = one.score(raw([2, 2], [-3, -1])), two.score(raw([2, 2], [-3, -1]))
    assert c1["pred_score"][0] == pytest.approx(0.0) and c2["pred_score"][0] == pytest.approx((2 + 2) / 2)
    # validation scores and threshold of the two-sided score: (|s_mse| + |s_lpips|) / 2 per scan, their median
    val = one.score(VAL)
    hand = (np.abs(val["score_mse"]) + np.abs(val["score_lpips"])) / 2
    assert two.val_scores == pytest.approx(hand) and two.threshold == pytest.approx(np.median(hand))
    assert one.val_scores == pytest.approx(val["pred_score"])
    # the too-good scan: never flagged one-sided, flagged two-sided; percentile against the validation scores
    assert not bool(s1["flag"][0]) and s1["percentile"][0] == 0.0
    assert bool(s2["flag"][0]) and s2["percentile"][0] == pytest.approx(100 * np.mean(hand <= 1.0))
    # an equally bad scan scores the same two-sided
    assert two.score(raw([2, 1], [1, 0]))["pred_score"][0] == pytest.approx(1.0)
    # the tails are part of the calibration's settings: saved, and checked against the scorer's
    two.save(tmp_path / "ood.json")
    assert OODCalibration.load(tmp_path / "ood.json").tails == "two_sided"
    with pytest.raises(ValueError, match="tails 'one_sided' != calibrated 'two_sided'"):
        two.check_compatible([100, 300], [100], {"tails": "one_sided"})
    one.check_compatible([100, 300], [100], {"tails": "one_sided"})
    with pytest.raises(ValueError, match="unknown score tails"):
        fit_calibration(["a", "b", "c"], VAL, t_values=[100, 300], map_t_values=[100], fpr=0.5,
                        settings={"tails": "both"})


def test_operating_point_of_a_two_sided_calibration_flags_both_directions():
    from ldm_ood.methods.operating_point import read_operating_point

    two = fit_calibration(["a", "b", "c"], VAL, t_values=[100, 300], map_t_values=[100], fpr=0.5,
                          settings={"tails": "two_sided"})
    point = read_operating_point(json.loads(two.to_json()), "ldm")
    assert point.val_scores == pytest.approx(tuple(two.val_scores)) and point.threshold == pytest.approx(two.threshold)
    worse = {"mse": VAL["mse"].max(0, keepdims=True) * 2, "lpips": VAL["lpips"].max(0, keepdims=True) * 2}
    better = {"mse": VAL["mse"].min(0, keepdims=True) / 2, "lpips": VAL["lpips"].min(0, keepdims=True) / 2}
    for values, sign in ((worse, 1), (better, -1)):
        s = two.score(values)
        assert np.sign(s["signed_score"][0]) == sign
        assert point.flag(float(s["pred_score"][0])) is True and bool(s["flag"][0])
    # the validation scan closest to the validation mean is not flagged
    assert point.flag(min(two.val_scores)) is False


def test_smoothed_input_scores_negative_one_sided_but_high_two_sided():
    """A tiny autoencoder-free reconstruction model: the reconstruction is a fixed 3-voxel box blur, which
    loses high frequencies. Textured (ID-like) images lose detail; a smoothed copy of one loses almost
    none, so its reconstruction error is abnormally low: a negative one-sided z, a high two-sided score."""
    from scipy import ndimage as ndi

    from ldm_ood.data.corruptions import corrupt_array

    rng = np.random.default_rng(0)

    def reconstruction_mse(x: np.ndarray) -> np.ndarray:
        rec = ndi.uniform_filter(x, 3, mode="nearest")
        # the "per-t" errors: the same model at three strengths (more of the blur at larger t)
        return np.array([np.mean((x - (1 - w) * x - w * rec) ** 2) for w in (0.3, 0.6, 1.0)])

    def textured() -> np.ndarray:
        return np.clip(0.5 + 0.15 * ndi.gaussian_filter(rng.normal(size=(12, 12, 12)), 0.7), 0, 1).astype(np.float32)

    val = np.stack([reconstruction_mse(textured()) for _ in range(10)])
    one = fit_calibration([str(i) for i in range(10)], {"mse": val}, [1, 2, 3], [1], fpr=0.1)
    two = fit_calibration([str(i) for i in range(10)], {"mse": val}, [1, 2, 3], [1], fpr=0.1,
                          settings={"tails": "two_sided"})
    test = textured()
    smooth = corrupt_array(test, np.eye(4), "smoothed", rng)
    values = {"mse": np.stack([reconstruction_mse(test), reconstruction_mse(smooth)])}
    s1, s2 = one.score(values), two.score(values)
    assert s1["pred_score"][1] < -2.0 and s1["pred_score"][1] < s1["pred_score"][0]  # "more normal" than ID
    assert not bool(s1["flag"][1])  # the one-sided score cannot flag it
    assert s2["pred_score"][1] == pytest.approx(-s1["pred_score"][1]) and s2["pred_score"][1] > max(two.val_scores)
    assert s2["signed_score"][1] == pytest.approx(s1["pred_score"][1])
    assert bool(s2["flag"][1]) and s2["percentile"][1] == 100.0
