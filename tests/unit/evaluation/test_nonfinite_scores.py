"""Missing or non-finite scores of an expected method are warnings with exact counts: in
``summary.json``, on the terminal, as marked cells of Table 1 (the column stays) and in the report."""

from __future__ import annotations

import json
import shutil

import pytest
from fake_run import LDM_FIELDS, make_tiny_run
from rich.console import Console

from ldm_ood.evaluation.completeness import expected_methods
from ldm_ood.evaluation.evaluate import evaluate
from ldm_ood.evaluation.inputs import read_score_column
from ldm_ood.evaluation.summary import Summary
from ldm_ood.evaluation.tables import print_summary, table1_grid, to_markdown
from ldm_ood.report.html import build_report
from ldm_ood.runs import RunDir


def _write_ldm_csv(path, rows):
    """A ``scores/ldm/<set>.csv`` by hand: ``rows`` of ``(case_id, pred_score text)``."""
    lines = [",".join(LDM_FIELDS)]
    for cid, score in rows:
        lines.append(f"{cid},{path.stem},{score},0.5,1.0,50.0,0,,1.0")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def broken(tmp_path):
    """The tiny run with LDM scores of chunk_top all unusable (nan, inf, empty) and one of far_mr nan."""
    run, manifest = make_tiny_run(tmp_path)
    scores = run / "scores" / "ldm"
    _write_ldm_csv(scores / "chunk_top.csv", [("chunk_top_0", "nan"), ("chunk_top_1", "inf"), ("chunk_top_2", "")])
    _write_ldm_csv(scores / "far_mr.csv", [("far_mr_0", "0.5"), ("far_mr_1", "nan"), ("far_mr_2", "0.7")])
    return run, manifest


def test_read_score_column_counts_missing_and_nonfinite(broken):
    run, _ = broken
    col = read_score_column(run / "scores" / "ldm" / "chunk_top.csv", "pred_score")
    assert (col.n_rows, col.n_missing, col.n_nonfinite, col.scores) == (3, 1, 2, {})
    col = read_score_column(run / "scores" / "ldm" / "far_mr.csv", "pred_score")
    assert (col.n_rows, col.n_missing, col.n_nonfinite, col.scores) == (3, 0, 1, {"far_mr_0": 0.5, "far_mr_2": 0.7})
    assert not read_score_column(run / "nowhere.csv", "pred_score").exists


def test_warnings_with_exact_counts_in_summary_json_and_the_table_keeps_the_column(broken, tmp_path):
    run, manifest = broken
    out = tmp_path / "summary.json"
    s = evaluate({"l3": run}, manifest=manifest, out=out, n_boot=50, print_tables=False)
    data = json.loads(out.read_text())
    got = {(w["method"], w["set"]): (w["n_missing"], w["n_nonfinite"], w["n_total"]) for w in data["warnings"]}
    assert got == {("ldm", "chunk_top"): (1, 2, 3), ("ldm", "far_mr"): (0, 1, 3)}  # sub-scores and LTM are fine
    chunk = next(w for w in data["warnings"] if w["set"] == "chunk_top")
    assert chunk["run"] == "l3" and "no finite score for set 'chunk_top': 2 of 3 non-finite, 1 missing" in chunk["message"]
    assert Summary.from_dict(data).warnings == s.warnings

    # the LDM has no result on chunk_top, a result on the 2 finite far_mr scans
    assert s.detection_for("l3", "ldm", "chunk_top") is None
    assert s.detection_for("l3", "ldm", "far_mr").n_ood == 2
    grid = table1_grid(s)
    header = grid.columns
    assert header == ["Set", "LTM", "LDM", "MSE", "LPIPS"]  # the LDM column is kept
    rows = {cells[0].text: cells for _, cells in grid.rows}
    ldm = header.index("LDM")
    assert (rows["chunk_top"][ldm].text, rows["chunk_top"][ldm].mark) == ("n/a", "warning")
    assert (rows["mr"][ldm].text, rows["mr"][ldm].mark) == ("100.0", "warning")
    assert rows["chunk_top"][header.index("LTM")].mark == ""
    md = to_markdown(grid)
    assert "n/a†" in md and "scores missing or non-finite" in md

    tables, warn = Console(record=True, width=200), Console(record=True, width=200)
    print_summary(s, tables, warn_console=warn)
    assert "n/a†" in tables.export_text()
    text = warn.export_text()
    assert "WARNING: 2 method/set result(s) with missing or non-finite scores" in text
    assert "l3/ldm: no finite score for set 'chunk_top'" in text and "1 of 3 scans of set 'far_mr' left out" in text


def test_report_shows_a_warning_box_with_the_counts(broken, tmp_path):
    run, manifest = broken
    summary = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    page = build_report({"l3": run}, summary, tmp_path / "report" / "index.html", manifest=manifest).read_text()
    assert page.index('class="warnbox"') < page.index('id="auroc"')  # at the top
    assert "2 method/set result(s) with missing or non-finite scores" in page
    assert "no finite score for set &#x27;chunk_top&#x27;: 2 of 3 non-finite, 1 missing" in page
    # run, method, set, finite, non-finite, missing, total
    assert ('<td class="txt">l3</td><td class="txt">ldm</td><td class="txt">chunk_top</td>'
            "<td>0</td><td>2</td><td>1</td><td>3</td>") in page
    assert '<td class="warning">n/a†</td>' in page


def test_expected_method_without_any_score_is_a_warning(tmp_path):
    run, manifest = make_tiny_run(tmp_path)
    shutil.rmtree(run / "scores" / "ltm")
    (run / "transformer").mkdir()
    (run / "transformer" / "model.safetensors").write_bytes(b"")  # a transformer was trained
    s = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    (w,) = s.warnings
    assert (w.method, w.set, w.n_total) == ("ltm", None, 0)
    assert "no scores at all" in w.message and "transformer/model.safetensors" in w.message
    assert "LTM" in table1_grid(s).columns  # its column stays, every cell n/a†
    assert all(cells[1].text == "n/a" and cells[1].mark == "warning" for _, cells in table1_grid(s).rows)


def test_missing_set_of_an_expected_method_and_what_is_expected(tmp_path):
    run, manifest = make_tiny_run(tmp_path)
    (run / "scores" / "ltm" / "chunk_top.csv").unlink()
    s = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    (w,) = s.warnings
    assert (w.method, w.set, w.n_missing, w.n_nonfinite, w.n_total) == ("ltm", "chunk_top", 3, 0, 3)
    assert "no scores for set 'chunk_top'" in w.message and "3 scan(s) scored by another method" in w.message
    # the tiny run is calibrated (ood.json) and without config.yaml both sub-score columns hold values
    ids = run / "scores" / "ldm" / "id.csv"
    sub = {m: {"id": read_score_column(ids, c)} for m, c in (("ldm_mse", "score_mse"), ("ldm_lpips", "score_lpips"))}
    assert set(expected_methods(RunDir(run), sub)) == {"ldm", "ldm_mse", "ldm_lpips"}
    assert set(expected_methods(RunDir(run), {})) == {"ldm"}
    # a trained LDM is expected to be scored, unless the run is a segmentation (paper 001) run
    seg = RunDir(tmp_path / "seg")
    (seg.root / "ldm").mkdir(parents=True)
    (seg.root / "ldm" / "model.safetensors").write_bytes(b"")
    assert set(expected_methods(seg, {})) == {"ldm"}
    (seg.root / "segment").mkdir()
    assert expected_methods(seg, {}) == {}


def test_clean_run_has_no_warnings(tmp_path):
    run, manifest = make_tiny_run(tmp_path)
    s = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    assert s.warnings == [] and json.loads((run / "summary.json").read_text())["warnings"] == []
    assert "†" not in to_markdown(table1_grid(s))


def test_segmentation_scores_with_nan_are_a_warning_and_a_marked_row(tmp_path):
    import csv

    from ldm_ood.evaluation.tables import segmentation_grid

    run, manifest = make_tiny_run(tmp_path)
    path = run / "segment" / "c" / "sprites.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["pred_score"] = "nan"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    s = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    (w,) = s.warnings
    assert (w.method, w.set, w.n_missing, w.n_nonfinite, w.n_total, w.n_finite) == ("segment (c)", "sprites", 0, 1, 3, 2)
    (row,) = [r for r in s.segmentation if r.set == "sprites"]
    assert row.image_auroc == pytest.approx(6 / 6)  # the 2 finite sprites (0.4, 0.5) beat all 3 ID scores
    (cells,) = [c for _, c in segmentation_grid(s).rows if c[0].text.endswith("sprites")]
    assert cells[0].mark == "warning"
