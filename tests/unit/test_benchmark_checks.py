"""``demo`` / ``benchmark`` fail (exit 1) when a method they ran has no usable result: the decision."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ldm_ood.benchmark import (
    BenchmarkPlan, check_results, default_plan, expected_results, result_problems, segmentation_baselines,
)
from ldm_ood.errors import IncompleteResultsError
from ldm_ood.evaluation.summary import DetectionResult, ScoreWarning, SegmentationResult, Summary

DETECTION = {"l2": ["ldm", "ltm"]}
SEGMENTATION = {"seg2d": ["c"]}


def _det(method: str, set_name: str, auroc: float | None = 0.8) -> DetectionResult:
    return DetectionResult("l2", method, set_name, "near", 4, 3, auroc, None, None, 0.7, 0.2)


def _seg(set_name: str, best_dice: float | None = 0.6, image_auroc: float | None = 0.9, n_masks: int = 3) -> SegmentationResult:
    return SegmentationResult("seg2d", "c", set_name, 3, n_masks, "pooled", best_dice, 0.5, 0.4, 0.5, 0.7, image_auroc, 0.8)


def _good() -> Summary:
    return Summary(runs={"l2": "runs/l2", "seg2d": "runs/seg2d"},
                   detection=[_det(m, s) for m in ("ldm", "ltm") for s in ("far_mr", "noise_0.1")],
                   segmentation=[_seg("id", None, 0.5, n_masks=0), _seg("sprites")])


def test_all_finite_is_no_error():
    assert result_problems(_good(), DETECTION, SEGMENTATION) == []
    check_results(_good(), DETECTION, SEGMENTATION)  # no raise


def test_method_with_no_finite_scores_raises():
    s = _good()
    s.detection = [d for d in s.detection if d.method != "ldm"]  # LDM: every score NaN -> no result
    s.warnings = [ScoreWarning("l2", "ldm", "id", 0, 12, 12, "l2/ldm: no finite score for set 'id': 12 of 12 non-finite")]
    assert result_problems(s, DETECTION, SEGMENTATION) == [
        "l2/ldm: no finite score for set 'id': 12 of 12 non-finite",
        "l2/ldm: no LDM result on any OOD set",
    ]
    with pytest.raises(IncompleteResultsError, match=r"demo: 2 result\(s\) missing or not finite; see the report r.html") as err:
        check_results(s, DETECTION, SEGMENTATION, what="demo", report="r.html")
    assert "  l2/ldm: no LDM result on any OOD set" in str(err.value)


def test_a_warning_alone_or_a_nan_metric_raises():
    s = _good()
    s.warnings = [ScoreWarning("l2", "ltm", "far_mr", 0, 1, 3, "l2/ltm: 1 of 3 scans of set 'far_mr' left out")]
    assert result_problems(s) == ["l2/ltm: 1 of 3 scans of set 'far_mr' left out"]
    s = _good()
    s.detection[0].auroc = None
    assert result_problems(s, DETECTION) == ["l2/ldm: AUROC on set 'far_mr' is not finite"]


def test_segmentation_metrics_must_be_finite():
    s = _good()
    s.segmentation[1] = _seg("sprites", best_dice=None, image_auroc=None)
    assert result_problems(s, DETECTION, SEGMENTATION) == ["seg2d/(c)/sprites: ⌈DICE⌉, image AUROC not finite"]
    s.segmentation = []
    assert result_problems(s, DETECTION, SEGMENTATION) == ["seg2d/(c): no segmentation results"]


def test_expected_results_follow_the_plan():
    assert expected_results(BenchmarkPlan("demo", [2], baselines=[])) == ({"l2": ["ldm", "ltm"]}, {"seg2d": ["a", "b", "c", "d"]})
    # paper 001's comparison systems run beside the variants: every registered segmentation baseline
    assert expected_results(BenchmarkPlan("demo", [2]))[1]["seg2d"] == ["a", "b", "c", "d", *segmentation_baselines()]
    assert "fanogan" in segmentation_baselines() and "segment" not in segmentation_baselines()
    assert expected_results(BenchmarkPlan("cpu", [3, 4], ltm=False, segmentation=False)) == ({"l3": ["ldm"], "l4": ["ldm"]}, {})
    # paper 001 Table 3: a second 2D run at f = 8 segments with variants c and d
    assert expected_results(BenchmarkPlan("cpu", [2], baselines=[], table3_levels=[3]))[1] == {
        "seg2d": ["a", "b", "c", "d"], "seg2d_f8": ["c", "d"]}
    assert default_plan("cpu").table3_levels == [3] and default_plan("demo").table3_levels == []


def test_cli_demo_exits_1_on_incomplete_results(monkeypatch, tmp_path):
    import ldm_ood.benchmark as benchmark
    from ldm_ood.cli import app

    def fake_demo(out):
        check_results(Summary(runs={"l2": "x"}), {"l2": ["ldm"]}, what="demo", report="x/index.html")

    monkeypatch.setattr(benchmark, "run_demo", fake_demo)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "error: demo: 1 result(s) missing or not finite" in text and "l2/ldm: no LDM result" in text


def test_benchmark_parts_select_the_papers_runs(monkeypatch):
    import ldm_ood.benchmark as bench

    plans = []
    monkeypatch.setattr(bench, "run_plan", lambda plan, out: plans.append(plan))
    bench.run_benchmark("cpu", "x", part="segmentation")
    bench.run_benchmark("cpu", "x", part="detection")
    bench.run_benchmark("cpu", "x")
    seg, det, both = plans
    assert (seg.levels, seg.ltm, seg.segmentation, seg.table3_levels) == ([], False, True, [3])
    assert (det.levels, det.segmentation, det.seeds) == ([2, 3], False, {2: [1]})
    assert (both.levels, both.segmentation) == ([2, 3], True)
    assert seg.seeds == {}  # no detection run, no replicate
    with pytest.raises(ValueError, match="part must be one of"):
        bench.run_benchmark("cpu", "x", part="everything")


def test_quick_runs_the_quick_preset_once_per_level(monkeypatch):
    import ldm_ood.benchmark as bench

    plans = []
    monkeypatch.setattr(bench, "run_plan", lambda plan, out: plans.append(plan))
    bench.run_benchmark("cpu", "x", quick=True)
    (quick,) = plans
    assert (quick.preset, quick.levels, quick.seeds, quick.table3_levels) == ("cpu-quick", [2], {}, [3])
    assert expected_results(quick)[0] == {"l2": ["ldm", "ltm"]}
    with pytest.raises(ValueError, match="no quick variant"):
        bench.run_benchmark("paper", "x", quick=True)


def test_the_cpu_plan_trains_each_level_then_the_seed_replicate():
    from ldm_ood.benchmark import detection_runs, seed_overrides

    plan = default_plan("cpu")
    assert detection_runs(plan) == [("l2", 2, None), ("l3", 3, None), ("l2_seed1", 2, 1)]
    assert expected_results(plan)[0] == {"l2": ["ldm", "ltm"], "l3": ["ldm", "ltm"], "l2_seed1": ["ldm", "ltm"]}
    assert default_plan("cpu", [3]).seeds == {}  # the replicate follows its level
    assert default_plan("demo").seeds == {} and detection_runs(default_plan("demo")) == [("l2", 2, None)]
    from ldm_ood.benchmark import _run_config

    cfg = _run_config(plan, "cpu", "m.csv", seed_overrides(1), 2)  # the replicate's config: a valid cpu config
    assert [c.optim.seed for c in (cfg.first_stage, cfg.ldm, cfg.transformer)] == [1, 1, 1] and cfg.score.seed == 1
    assert cfg.first_stage.levels == 2 and _run_config(plan, "cpu", "m.csv", {}, 3).first_stage.optim.seed == 0


def test_cli_benchmark_quick_reaches_run_benchmark(monkeypatch, tmp_path):
    import ldm_ood.benchmark as bench
    from ldm_ood.cli import app

    calls = []
    monkeypatch.setattr(bench, "run_benchmark", lambda preset, out, levels=None, part="all", quick=False:
                        calls.append((preset, levels, part, quick)))
    assert CliRunner().invoke(app, ["benchmark", "--out", str(tmp_path), "--quick"]).exit_code == 0
    assert CliRunner().invoke(app, ["benchmark", "--out", str(tmp_path), "--level", "4"]).exit_code == 0
    assert calls == [("cpu", None, "all", True), ("cpu", [4], "all", False)]
