"""The report renders every section from a tiny fabricated run, self-contained."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from fake_run import make_tiny_run

from ldm_ood.evaluation.evaluate import evaluate
from ldm_ood.report import figures
from ldm_ood.report.html import SECTION_TITLES, build_report


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


def test_triplanar_views_and_figures():
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    views = figures._triplanar(vol)
    assert [v.shape for v in views] == [(6, 5), (6, 4), (5, 4)]  # rot90 of (y,z), (x,z), (x,y)
    np.testing.assert_array_equal(views[0], np.rot90(vol[2]))
    assert len(figures._triplanar(np.zeros((3, 3)))) == 1
    y = np.r_[np.zeros(10), np.ones(10)]
    fig = figures.roc_grid({"a": {"LDM": (y, np.arange(20.0))}, "b": {"LTM": (y, -np.arange(20.0))}})
    assert figures.to_png(fig).startswith(b"\x89PNG")
    gt = np.zeros((8, 8, 8))
    gt[2:4, 2:4, 5] = 1
    assert figures._lesion_slice(gt) == 5
    fig = figures.segmentation_grid([("c", np.random.default_rng(0).random((8, 8, 8)), gt, gt * 0.9, None)])
    assert figures.to_png(fig).startswith(b"\x89PNG")
