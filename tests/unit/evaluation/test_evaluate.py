"""`evaluate` on a fabricated run directory: expected AUCs, DeLong, segmentation, notes, JSON."""

from __future__ import annotations

import json
import shutil

import pytest
from fake_run import EXPECTED, make_tiny_run
from rich.console import Console

from ldm_ood.evaluation.evaluate import evaluate
from ldm_ood.evaluation.inputs import read_threshold
from ldm_ood.evaluation.summary import Summary, order_sets
from ldm_ood.evaluation.tables import detail_grid, print_summary, segmentation_grid, table1_grid, to_markdown


@pytest.fixture()
def tiny(tmp_path):
    return make_tiny_run(tmp_path)


def test_detection_aucs_match_hand_counts(tiny):
    run, manifest = tiny
    s = evaluate({"l3": run}, manifest=manifest, n_boot=200, print_tables=False)
    for key, value in EXPECTED.items():
        if key[0] in ("ldm", "ltm", "ldm_mse") and len(key) == 2:
            assert s.detection_for("l3", key[0], key[1]).auroc == pytest.approx(value), key
    d = s.detection_for("l3", "ldm", "chunk_top")
    assert d.auprc == pytest.approx(EXPECTED[("ldm", "chunk_top", "auprc")])
    assert (d.n_id, d.n_ood, d.kind) == (4, 3, "near")
    assert s.detection_for("l3", "ldm", "far_mr").kind == "far"
    assert d.auroc_low <= d.auroc <= d.auroc_high
    # FPR@95TPR of ldm chunk_top: all 3 OOD needs threshold .15 -> ID .2 .3 .4 above -> 3/4
    assert d.fpr95 == pytest.approx(0.75)
    assert s.detection_for("l3", "ldm_lpips", "far_mr").auroc == pytest.approx(1.0)
    assert s.ood_sets() == ["far_mr", "chunk_top"]


def test_delong_rows_and_summary_json(tiny):
    run, manifest = tiny
    s = evaluate(run, manifest=manifest, n_boot=100, print_tables=False)
    dl = s.delong_for("run", "far_mr")
    assert (dl.auc_ldm, dl.auc_ltm) == (pytest.approx(1.0), pytest.approx(4 / 12))
    assert dl.n_cases == 7 and 0 <= dl.p_value <= 1
    data = json.loads((run / "summary.json").read_text())  # default: first run's summary_path
    assert {"runs", "detection", "delong", "segmentation", "notes"} <= data.keys()
    back = Summary.from_dict(data)
    assert back.detection_for("run", "ltm", "chunk_top").auroc == pytest.approx(1.0)


def test_segmentation_metrics(tiny):
    run, manifest = tiny
    s = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    (row,) = [r for r in s.segmentation if r.set == "sprites"]
    assert row.image_auroc == pytest.approx(EXPECTED[("seg", "image_auroc")])
    assert row.best_dice == pytest.approx(1.0)
    assert row.threshold == 0.5
    assert row.dice_at_threshold == pytest.approx(120 / 121)  # 60 lesion voxels, 1 false positive
    assert row.pixel_auprc == pytest.approx(1.0)
    assert (row.n_masks, row.n_cases, row.pooling) == (3, 3, "pooled")


def test_missing_parts_are_notes_not_crashes(tiny, tmp_path):
    run, manifest = tiny
    shutil.rmtree(run / "scores" / "ltm")
    (run / "calibration" / "segment.json").unlink()
    (run / "scores" / "ldm" / "far_lonely.csv").write_text("case_id,set,pred_score\n")  # empty set
    out = tmp_path / "elsewhere" / "summary.json"
    s = evaluate({"l3": run, "l4": tmp_path / "missing"}, manifest=manifest, out=out, n_boot=50, print_tables=False)
    assert out.exists()
    assert s.delong == []
    assert any("no LTM scores" in n for n in s.notes)
    assert any("residual_threshold" in n for n in s.notes)
    assert any("l4" in n and "not found" in n for n in s.notes)
    (row,) = [r for r in s.segmentation if r.set == "sprites"]
    assert row.dice_at_threshold is None and row.best_dice == pytest.approx(1.0)


def test_one_class_set_gives_na(tiny):
    run, manifest = tiny
    (run / "scores" / "ldm" / "id.csv").write_text("case_id,set,pred_score\n")  # no ID scores left
    s = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    assert s.detection_for("l3", "ldm", "far_mr") is None
    assert s.detection_for("l3", "ltm", "far_mr").auroc == pytest.approx(4 / 12)


def test_tables_render(tiny):
    run, manifest = tiny
    s = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    g = table1_grid(s)
    assert g.rows[0][0] == "Far-OOD" and g.rows[1][0] == "Near-OOD"
    assert [c.text for c in g.rows[0][1]][:3] == ["mr", "33.3", "100.0"]  # set, LTM, LDM
    md = to_markdown(g)
    assert "l3 LTM" in md and "| mr |" in md
    assert "sprites" in to_markdown(segmentation_grid(s))
    assert len(detail_grid(s).rows) == len(s.detection)
    console = Console(record=True, width=160)
    print_summary(s, console)
    text = console.export_text()
    assert "Table 1" in text and "⌈DICE⌉" in text


def test_order_sets_and_threshold_reader(tmp_path):
    names = ["scale_0.1", "far_b", "id", "noise_0.1", "flip_lr", "far_a", "chunk_top", "bg_0.3"]
    assert order_sets(names) == ["far_a", "far_b", "noise_0.1", "bg_0.3", "flip_lr", "chunk_top", "scale_0.1"]
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"c": {"residual_threshold": 0.2}, "residual_threshold": {"d": 0.3}}))
    assert read_threshold(p, "residual_threshold", "c") == 0.2
    assert read_threshold(p, "residual_threshold", "d") == 0.3
    assert read_threshold(p, "residual_threshold", "a") is None
    assert read_threshold(tmp_path / "none.json", "threshold") is None


def test_the_one_sided_column_is_evaluated_where_present_and_silent_where_absent(tiny):
    import csv

    run, manifest = tiny
    plain = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    assert "ldm_one_sided" not in plain.methods() and not [n for n in plain.notes if "signed_score" in n]
    for path in (run / "scores" / "ldm").glob("*.csv"):  # a two-sided run's files: signed_score beside pred_score
        rows = list(csv.DictReader(path.open()))
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, [*rows[0].keys(), "signed_score"])
            w.writeheader()
            w.writerows({**r, "signed_score": -float(r["pred_score"])} for r in rows)
    s = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    for set_name in ("far_mr", "chunk_top"):  # a negated score ranks every pair the other way: 1 - AUROC
        assert s.detection_for("l3", "ldm_one_sided", set_name).auroc == pytest.approx(1 - EXPECTED[("ldm", set_name)])
