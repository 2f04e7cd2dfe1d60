"""The report renders every section from a tiny fabricated run, self-contained."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
from fake_run import make_tiny_run

from ldm_ood.evaluation.evaluate import evaluate
from ldm_ood.report import figures
from ldm_ood.report.html import SECTION_TITLES, build_report
from ldm_ood.viz.preview import display_slice, to_ras


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_has_every_section_and_embedded_figures(tmp_path):
    run, manifest = make_tiny_run(tmp_path)
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "memory.json").write_text(json.dumps([{"model": "LDM", "peak_mb": 512.5}, {"model": "LTM", "peak_mb": 900}]))
    summary = evaluate({"l3": run}, manifest=manifest, n_boot=50, print_tables=False)
    out = build_report({"l3": run}, summary, tmp_path / "report" / "index.html", benchmarks_dir=bench, manifest=manifest)
    page = out.read_text()
    for title in SECTION_TITLES:
        assert f">{title}</h2>" in page, title
    pngs = _pngs(page)
    # ROC (1) + histograms LDM and LTM (2) + anomaly maps (1) + segmentation examples (1)
    assert len(pngs) >= 5
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    assert "peak_mb" in page and "512.5" in page  # memory table
    assert page.count("not measured") == 2  # scoring.json and segment.json absent
    assert '<td class="weak">100.0</td>' in page  # LDM beats LTM on far_mr, 0.001 < p < 0.05
    assert "sprites" in page and "⌈DICE⌉" in page


def test_report_without_summary_or_calibration(tmp_path):
    run, manifest = make_tiny_run(tmp_path)
    (run / "calibration" / "ood.json").write_text(json.dumps({"fpr": 0.05, "ood_threshold": 0.3}))
    out = build_report(run, None, tmp_path / "r.html", manifest=manifest)
    page = out.read_text()
    assert (tmp_path / "summary.json").exists()
    assert "no &#x27;threshold&#x27; key" in page and "ood_threshold" in page  # read defensively, noted
    assert len(_pngs(page)) >= 5


def test_report_of_an_empty_run_still_renders(tmp_path):
    (tmp_path / "empty").mkdir()
    out = build_report({"x": tmp_path / "empty"}, None, tmp_path / "r.html")
    page = out.read_text()
    for title in SECTION_TITLES:
        assert f">{title}</h2>" in page
    assert "No detection results" in page


def test_figures_show_inputs_radiologically_in_a_fixed_window():
    y = np.r_[np.zeros(10), np.ones(10)]
    fig = figures.roc_grid({"a": {"LDM": (y, np.arange(20.0))}, "b": {"LTM": (y, -np.arange(20.0))}})
    assert figures.to_png(fig).startswith(b"\x89PNG")
    gt = np.zeros((8, 8, 8))
    gt[2:4, 2:4, 5] = 1
    assert figures._lesion_slice(gt) == 5
    # a volume stored with its z axis flipped: the lesion slice and view come from the RAS volume
    flipped = np.diag([1.0, 1.0, -1.0, 1.0])
    view = figures._lesion_view(gt[..., ::-1], flipped, figures._lesion_slice(to_ras(gt[..., ::-1], flipped)))
    np.testing.assert_array_equal(view, display_slice(gt[..., 5]))
    dark = np.full((8, 8, 8), 0.01, np.float32)  # e.g. scale_0.01: must look dark, not like a normal scan
    fig = figures.segmentation_grid([("c", dark, flipped, gt[..., ::-1], gt * 0.9, None)])
    axes = fig.axes
    assert axes[0].images[0].get_clim() == (0.0, 1.0)
    assert figures.to_png(fig).startswith(b"\x89PNG")
    fig = figures.overlay_grid([("scale_0.01: c", dark, np.eye(4), {"LDM": gt})])
    assert [ax.images[0].get_clim() for ax in fig.axes[:3]] == [(0.0, 1.0)] * 3
    assert len(fig.axes) == 3 + 3 + 1  # input planes, map planes, one colour bar
    assert figures.to_png(fig).startswith(b"\x89PNG")


def test_inputs_are_shown_as_the_preprocessing_sees_them(tmp_path):
    from ldm_ood.config import load_config
    from ldm_ood.data.io import write_image
    from ldm_ood.report.html import _display_input
    from ldm_ood.runs import RunDir

    run = RunDir(tmp_path / "run")
    run.save_config(load_config(preset="tiny"))
    hu = np.full((4, 4, 4), -15.0 + 0.01 * 115, np.float32)  # a scale_0.01 scan stored in HU
    hu[0] = 1000.0
    img, affine = _display_input(run, write_image(tmp_path / "x.nii.gz", hu, np.diag([2.0, 2, 2, 1])), [])
    np.testing.assert_allclose(img[1:], 0.01, atol=1e-6)
    assert img[0].max() == 1.0 and affine[0, 0] == 2.0
    notes: list[str] = []
    raw, _ = _display_input(RunDir(tmp_path / "none"), tmp_path / "x.nii.gz", notes)
    assert raw.max() == 1.0 and raw.min() == 0.0 and "no config.yaml" in notes[0]


def test_benchmark_json_becomes_tables_with_dotted_columns():
    from ldm_ood.report.html import _json_to_html

    page = _json_to_html({"torch": "2.13", "threads": 2, "rows": [
        {"model": "ldm", "train_step": {"peak_rss_gb": 1.5, "seconds": 3.0}, "grid": [16, 16]},
        {"model": "ltm", "train_step": {"peak_rss_gb": 0.25}}]})
    assert page.count("<table>") == 2  # scalar fields, then the rows
    assert "<th>train_step.peak_rss_gb</th>" in page and "<td>0.25</td>" in page and "<td>[16, 16]</td>" in page
    assert "peak_rss_gb&quot;" not in page  # no JSON blob in a cell
    assert '<td class="txt">ldm</td>' in page and "<td>2</td>" in page  # text left, numbers right


def test_report_lists_the_precision_of_every_network(tmp_path):
    from ldm_ood.evaluation.summary import Summary

    (tmp_path / "run").mkdir()
    summary = Summary(precision={"run": {
        "ldm (training)": {"precision": "fp32", "speedup": 0.95, "rel_error": 0.003,
                           "reason": "bf16 only 0.95x as fast as fp32 (needs 1.15x)"},
        "unet (ldm scoring)": {"precision": "bf16", "speedup": 1.8, "rel_error": 0.004, "reason": "bf16 1.80x"},
    }})
    page = build_report({"run": tmp_path / "run"}, summary, tmp_path / "r.html").read_text()
    section = page[page.index('id="precision"'):page.index('id="notes"')]
    assert "ldm (training)" in section and "fp32" in section and "0.95" in section and "needs 1.15x" in section
    assert "unet (ldm scoring)" in section and "1.8" in section
