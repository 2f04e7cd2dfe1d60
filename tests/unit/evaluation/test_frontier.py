"""The frontier's selection on hand-made AUROC/CI tables, its AUROC of a hand-made store, its resume guard."""

import json

import pytest

from ldm_ood.errors import OutputError
from ldm_ood.evaluation.frontier import FrontierSetting, _read_store, parse_setting, select_cheapest, setting_auroc

REF = {"name": "paper", "unet_evaluations": 2654,
       "sets": {"near": {"auroc": 0.80, "low": 0.70, "high": 0.90}, "far": {"auroc": 0.95, "low": 0.90, "high": 1.00}}}


def _row(name, evals, near, far):
    return {"name": name, "unet_evaluations": evals, "sets": {"near": {"auroc": near}, "far": {"auroc": far}}}


def test_the_cheapest_setting_inside_every_ci_at_least_50x_cheaper_is_chosen():
    rows = [REF,
            _row("too_costly", 60, 0.80, 0.95),       # 44x cheaper: not a candidate
            _row("inside_44", 44, 0.72, 0.91),        # 60x, inside both CIs
            _row("inside_30", 30, 0.89, 0.99),        # 88x, inside both: the cheapest inside
            _row("outside_7", 7, 0.65, 0.99)]         # cheapest, but near below its CI
    sel = select_cheapest(rows, "paper", 50)
    assert sel["selected"] == "inside_30" and sel["within_ci"] and sel["candidates"] == 3
    assert sel["ratio"] == pytest.approx(2654 / 30) and sel["max_distance_outside_ci"] == 0.0


def test_without_a_setting_inside_every_ci_the_closest_is_reported():
    rows = [REF, _row("a", 40, 0.65, 0.99),   # 0.05 below near's CI
            _row("b", 20, 0.68, 0.85),         # 0.02 below near, 0.05 below far: worst 0.05, cheaper than a
            _row("c", 10, 0.69, 0.88)]         # worst 0.02 (far): the closest
    sel = select_cheapest(rows, "paper", 50)
    assert sel["selected"] == "c" and not sel["within_ci"]
    assert sel["max_distance_outside_ci"] == pytest.approx(0.02)


def test_no_candidate_cheap_enough():
    sel = select_cheapest([REF, _row("x", 100, 0.8, 0.95)], "paper", 50)
    assert sel["selected"] is None and sel["candidates"] == 0
    with pytest.raises(ValueError, match="reference"):
        select_cheapest([_row("x", 100, 0.8, 0.95)], "paper", 50)


def _store(id_mse, sets):
    val = {f"v{i}": {"mse": [0.1 * i, 0.2 * i]} for i in range(1, 5)}  # calibration: per-t mean/std of these
    values = {"val": val, "id": {f"i{k}": {"mse": [m, m]} for k, m in enumerate(id_mse)}}
    values.update({s: {f"{s}{k}": {"mse": [m, m]} for k, m in enumerate(ms)} for s, ms in sets.items()})
    return {"setting": {}, "t_values": [10, 30], "values": values, "seconds": {}}


def test_setting_auroc_of_a_hand_made_store():
    # the score grows with the MSE at every t: higher MSE = more OOD
    store = _store([0.1, 0.2, 0.3], {"far_x": [0.5, 0.6], "near_same": [0.1, 0.2, 0.3], "mixed": [0.15, 0.25]})
    res = setting_auroc(store, n_boot=200)
    assert res["far_x"]["auroc"] == 1.0 and res["far_x"]["low"] == 1.0 and res["far_x"]["n_id"] == 3
    assert res["near_same"]["auroc"] == 0.5
    assert res["mixed"]["auroc"] == pytest.approx(3 / 6)  # pairs (ood > id): 0.15>0.1, 0.25>0.1, 0.25>0.2 of 6
    assert list(res)[0] == "far_x"  # far sets first (evaluation.summary.order_sets)


def test_settings_parse_and_name():
    s = parse_setting("dpmpp_2m:10:25")
    assert s == FrontierSetting("dpmpp_2m", 10, 25) and s.name == "dpmpp_2m10_t25"
    assert parse_setting("plms:100:50:reference").name == "plms100_t50_shared_history"
    assert parse_setting("one_step:1:5").name == "one_step_t5"
    with pytest.raises(ValueError, match="sampler:steps:starts"):
        parse_setting("plms:100")


def test_a_store_of_another_setting_is_refused(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"setting": {"sampler": "ddim"}, "t_values": [1], "values": {}, "seconds": {}}))
    with pytest.raises(OutputError, match="another setting"):
        _read_store(path, FrontierSetting("plms", 10, 5), [1])
    path.write_text("{torn")
    with pytest.raises(OutputError, match="unreadable"):
        _read_store(path, FrontierSetting("plms", 10, 5), [1])


def test_the_frontier_figure_plots_every_setting_twice_on_a_log_axis():
    from ldm_ood.report.figures import frontier_figure

    rows = [{"name": "paper", "sampler": "plms", "unet_evaluations": 2654, "mean_auroc": 0.9, "worst_auroc": 0.8},
            {"name": "d", "sampler": "ddim", "unet_evaluations": 44, "mean_auroc": 0.88, "worst_auroc": 0.7},
            {"name": "o", "sampler": "one_step", "unet_evaluations": 7, "mean_auroc": 0.6, "worst_auroc": None}]
    fig = frontier_figure(rows, "paper", "d", 50)
    left, right = [ax for ax in fig.axes if ax.get_visible()]
    assert left.get_xscale() == right.get_xscale() == "log"
    n_points = lambda ax: sum(len(c.get_offsets()) for c in ax.collections)  # noqa: E731
    assert n_points(left) == 3 + 2 and n_points(right) == 2 + 2  # the settings, then the two rings
    assert left.lines[0].get_xdata()[0] == pytest.approx(2654 / 50)


def test_the_report_draws_a_frontier_json_found_beside_the_benchmarks(tmp_path):
    from ldm_ood.report.html import _benchmark_section

    rows = [{"name": "plms100_t50", "sampler": "plms", "unet_evaluations": 2654, "mean_auroc": 0.9, "worst_auroc": 0.8},
            {"name": "ddim10_t10", "sampler": "ddim", "unet_evaluations": 44, "mean_auroc": 0.88, "worst_auroc": 0.7}]
    (tmp_path / "frontier.json").write_text(json.dumps({
        "settings": rows, "reference": "plms100_t50", "min_ratio": 50,
        "selection": {"selected": "ddim10_t10", "within_ci": True}, "shared_history": None}))
    page = _benchmark_section(tmp_path)
    assert "Scoring cost frontier" in page and page.count("data:image/png;base64,") == 1
    assert "ddim10_t10" in page and page.count("not measured") == 3  # the three JSON tables absent
