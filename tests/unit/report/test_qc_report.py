"""QC pages of a folder-mode output folder (``report.qc``): the overlay's geometry on the arrays drawn,
self-contained pages, the group page's order and links, failures that lose nothing, and
``ldm-ood score --input --output --report`` end to end on a tiny 2D run.

The 3D folder is built by hand (scans, maps on their grid, records), so no network runs for it.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest

from ldm_ood.data.io import write_image
from ldm_ood.methods.operating_point import OperatingPoint
from ldm_ood.methods.scan_record import ScanRecord, write_scan_record
from ldm_ood.report import qc
from ldm_ood.viz.preview import to_ras, triplanar

SHAPE = (20, 24, 22)
#: stored L-P-S with a permutation: voxel axis 0 runs along -y (P), axis 1 along -x (L), axis 2 along +z (S)
AFFINE = np.array([[0.0, -2.0, 0.0, 30.0], [-1.5, 0.0, 0.0, 20.0], [0.0, 0.0, 2.5, -10.0], [0.0, 0.0, 0.0, 1.0]])


def _head(anomaly_at: tuple[int, int, int] | None = None) -> np.ndarray:
    """A smooth ellipsoidal "head" in [0, 0.5] with, optionally, a bright 3×3×3 cube (1.0) at a voxel."""
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    head = np.clip(1.0 - np.sqrt((g**2).sum(0)), 0, None).astype(np.float32) * 0.5
    if anomaly_at is not None:
        i, j, k = anomaly_at
        head[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = 1.0
    return head


def _bump(at: tuple[int, int, int], width: float = 1.5) -> np.ndarray:
    idx = np.indices(SHAPE, dtype=float)
    return np.exp(-sum((idx[a] - at[a]) ** 2 for a in range(3)) / (2 * width**2)).astype(np.float32) * 5.0


def test_views_go_through_the_maps_maximum_and_keep_the_map_on_the_scan(tmp_path):
    at = (5, 17, 14)
    scan, amap = _head(at), _bump(at)
    views = qc.scan_views(scan, amap, AFFINE, AFFINE)
    assert views.planes == ("sagittal", "coronal", "axial") and views.peak and views.voxel == at
    # RAS index by hand: voxel axis 1 runs along -x (R index = 23 - 17), axis 0 along -y (A index = 19 - 5), axis 2 along z
    assert views.ras == (SHAPE[1] - 1 - at[1], SHAPE[0] - 1 - at[0], at[2])
    np.testing.assert_allclose(views.world, (AFFINE @ [*at, 1.0])[:3])
    # spacing by hand: x (voxel axis 1) 2 mm, y (axis 0) 1.5 mm, z 2.5 mm; pixel height / width per plane
    np.testing.assert_allclose(views.aspects, (2.5 / 1.5, 2.5 / 2.0, 1.5 / 2.0))
    ras_scan = to_ras(scan, AFFINE)
    assert ras_scan[views.ras] == 1.0  # the anomaly cube sits at that RAS voxel
    for view, mview, expected in zip(views.views, views.map_views, triplanar(scan, AFFINE, views.ras)):
        np.testing.assert_array_equal(view, expected)  # the planes drawn are the scan's own, through the peak
        assert view.shape == mview.shape
        peak = np.unravel_index(np.argmax(mview), mview.shape)
        assert view[peak] == 1.0  # the map's maximum is drawn on the anomaly of the scan, in every plane
        assert mview[peak] == pytest.approx(5.0)
    # one hot voxel at the volume's edge does not choose the planes: the hottest region does
    spiky = amap.copy()
    spiky[0, 0, 0] = 50.0
    assert qc.hottest_voxel(spiky) == at == qc.scan_views(scan, spiky, AFFINE).voxel
    # a constant map: planes through the centre; a map on another grid is refused, not resampled
    flat = qc.scan_views(scan, np.zeros(SHAPE, np.float32), AFFINE)
    assert not flat.peak and flat.voxel == tuple(s // 2 for s in SHAPE)
    with pytest.raises(ValueError, match="not on the scan's grid"):
        qc.scan_views(scan, amap[:-1], AFFINE)
    with pytest.raises(ValueError, match="affine"):
        qc.scan_views(scan, amap, AFFINE, np.eye(4))
    two_d = qc.scan_views(scan[:, :, 10], amap[:, :, 10], None)
    assert two_d.planes == ("slice",) and len(two_d.views) == 1 and two_d.voxel is None


def _folder(tmp_path: Path) -> tuple[Path, dict[str, float]]:
    """An output folder as folder mode leaves it: 3 scored 3D scans (one flagged by the input check), a
    failed one, and one whose map is missing (its page cannot be drawn)."""
    data, out = tmp_path / "in", tmp_path / "out"
    scores = {"b_low": -0.4, "a_high": 2.5, "c_mid": 0.7, "d_nomap": 0.1, "e_qc": float("inf")}
    anomalies = {"b_low": (10, 12, 11), "a_high": (5, 17, 14), "c_mid": (14, 6, 8), "d_nomap": (10, 12, 11),
                 "e_qc": (10, 12, 11)}
    for case, score in scores.items():
        scan = write_image(data / f"{case}.nii.gz", _head(anomalies[case]) * 100.0, AFFINE)
        if case != "d_nomap":
            write_image(out / f"{case}.nii.gz", _bump(anomalies[case]), AFFINE)
        qc_reason = "only 4 % of the grid is inside the scan" if case == "e_qc" else ""
        write_scan_record(out, ScanRecord(
            case, str(scan), "ldm", "score ldm", score, 0.3 if qc_reason else score, 100.0 if qc_reason else 50.0,
            bool(qc_reason) or score > 1.0, 1.0, 0.05, qc_reason, "cal123", "model456", 2.0,
            {"score": f"{case}.txt", "map": f"{case}.nii.gz"}))
    write_scan_record(out, ScanRecord("f_bad", str(data / "f_bad.nii.gz"), "ldm", "score ldm", threshold=1.0, fpr=0.05,
                                      error="f_bad.nii.gz: truncated gzip data"))
    return out, scores


def _srcs_and_links(page: str) -> tuple[list[str], list[str]]:
    return re.findall(r'src="([^"]*)"', page), re.findall(r'href="([^"]*)"', page)


def _assert_self_contained(page: str) -> None:
    srcs, links = _srcs_and_links(page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG") for s in srcs)
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    assert all("/" not in link and link.endswith(".html") for link in links)  # only the folder's own pages


def test_pages_are_self_contained_sorted_and_linked_and_a_broken_scan_loses_nothing(tmp_path):
    out, scores = _folder(tmp_path)
    (out / "d_nomap.html").write_text("a stale page of an earlier run")
    result = qc.write_qc_reports(out)  # no run: no validation scores, a min-max window
    # every page drawn but the one of the scan without a map, which the group page names
    assert sorted(p.name for p in result.pages) == ["a_high.html", "b_low.html", "c_mid.html", "e_qc.html"]
    assert list(result.failed) == ["d_nomap"] and not (out / "d_nomap.html").exists()
    pages = {p.stem: p.read_text() for p in result.pages}
    for page in pages.values():
        _assert_self_contained(page)
        assert "model456" in page and 'href="index.html"' in page
        assert "Validation score distribution unavailable: no run to read the calibration from" in page
    assert "Flagged: out of distribution.</b> Score 2.500 is above the threshold 1.000 (set so that 5 %" in pages["a_high"]
    assert "Not flagged" in pages["b_low"] and "by the input check" in pages["e_qc"]
    index = result.index.read_text()
    _assert_self_contained(index)
    order = re.findall(r'<td class="txt">(?:<a href="[^"]*">)?([a-z_]+)(?:</a>)?</td><td>', index)
    assert order == sorted(scores, key=lambda c: -scores[c]) == ["e_qc", "a_high", "c_mid", "d_nomap", "b_low"]
    _, links = _srcs_and_links(index)
    assert {unquote(link) for link in links} == {"a_high.html", "b_low.html", "c_mid.html", "e_qc.html"}
    assert all((out / unquote(link)).is_file() for link in links)
    assert "page not drawn" in index and "no thumbnail" in index
    assert "Not scored" in index and "f_bad" in index and "truncated gzip data" in index
    assert "5 scan(s) scored: 2 flagged out of distribution</b> (1 by the input check)" in index

    # with the calibration's validation scores: the distribution panel (an infinite score off its scale)
    ref = OperatingPoint(tuple(np.linspace(-1.0, 1.2, 12)), threshold=1.0, fpr=0.05)
    qc_flagged = ScanRecord.from_json((out / "e_qc.json").read_text())
    page = qc.write_scan_report(qc_flagged, out, ref, qc.Display("ct", (0.0, 100.0))).read_text()
    _assert_self_contained(page)
    assert "The scores of the 12 in-distribution validation scans" in page and "unavailable" not in page
    assert len(_srcs_and_links(page)[0]) == 2  # the distribution and the views
    page = qc.write_scan_report(qc_flagged, out, ref, unavailable="scored under calibration x").read_text()
    assert "unavailable: scored under calibration x" in page and len(_srcs_and_links(page)[0]) == 1


def test_the_distribution_comes_from_the_calibration_the_scans_were_scored_under(tmp_path):
    out, _ = _folder(tmp_path)
    for case in ("b_low", "c_mid", "d_nomap", "e_qc"):
        (out / f"{case}.json").unlink()
    run = tmp_path / "run"
    (run / "calibration").mkdir(parents=True)
    (run / "calibration" / "ood.json").write_text(json.dumps({"val_scores": [0.1, -0.2, 0.4], "threshold": 1.0, "fpr": 0.05}))
    (run / "calibration" / "ldm_record.json").write_text(json.dumps({"id": "cal123"}))  # the records' calibration id
    page = qc.write_qc_reports(out, run).pages[0].read_text()
    assert "The scores of the 3 in-distribution validation scans" in page
    (run / "calibration" / "ldm_record.json").write_text(json.dumps({"id": "cal999"}))  # recalibrated since
    page = qc.write_qc_reports(out, run).pages[0].read_text()
    assert "unavailable: the scan was scored under calibration cal123, the run is now calibrated as cal999" in page


def test_thumbnail_shows_the_axial_plane_through_the_peak(tmp_path):
    at = (5, 17, 14)
    views = qc.scan_views(_head(at), _bump(at), AFFINE)
    png = qc.thumbnail(views, cell=64)
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=float)
    factor = rgb.shape[0] // views.views[-1].shape[0]
    assert rgb.shape[:2] == tuple(factor * s for s in views.views[-1].shape)
    peak = np.unravel_index(np.argmax(views.map_views[-1]), views.map_views[-1].shape)
    far = np.unravel_index(np.argmin(views.map_views[-1] + views.views[-1]), views.views[-1].shape)
    pixel = rgb[peak[0] * factor, peak[1] * factor]
    assert pixel[0] > pixel[2] + 30  # the map's warm colour over the peak, grey far from it
    assert np.ptp(rgb[far[0] * factor, far[1] * factor]) < 2


@pytest.mark.usefixtures("one_thread")
def test_score_folder_with_report_from_the_cli(tmp_path):
    """``ldm-ood score --input --output --report`` on a tiny 2D run: JSON records, one page per scan
    (one 2D view), the group page listing the broken file; the command exits 1 for it."""
    from tiny_runs import build_tiny_2d_run
    from typer.testing import CliRunner

    from ldm_ood.cli import app
    from ldm_ood.methods.ldm.pipeline import calibrate_ldm

    run, folder = build_tiny_2d_run(tmp_path)
    calibrate_ldm(run.root, progress=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["score", "--run", str(run.root), "--input", str(folder), "--output", str(out),
                                      "--report"])
    assert result.exit_code == 1 and "broken" in result.output and "QC report" in result.output
    assert sorted(p.name for p in out.glob("*.html")) == ["f0.html", "f1.html", "index.html"]
    val = json.loads(run.ood_calibration_path.read_text())["val_scores"]
    page = (out / "f0.html").read_text()
    _assert_self_contained(page)
    assert f"The scores of the {len(val)} in-distribution validation scans" in page
    index = (out / "index.html").read_text()
    assert "broken" in index and index.count('href="f0.html"') == 2  # thumbnail and name link to the page
    assert "--report needs" in CliRunner().invoke(app, ["score", "--run", str(run.root), "--report"]).output


def test_thumbnails_are_drawn_through_the_centre_of_the_scans_signal():
    from ldm_ood.report.qc import foreground_centre, scan_views

    scan = np.zeros((10, 12, 14), np.float32)
    scan[2:6, 4:10, 6:14] = 1.0  # the signal's centre of mass: voxel (3.5, 6.5, 9.5)
    assert foreground_centre(scan) == (4, 6, 10)  # rounded half to even
    amap = np.zeros_like(scan)
    amap[8, 1, 1] = 5.0  # hot far from the signal: the page's planes go there, the thumbnail's do not
    centre = foreground_centre(scan)
    views = scan_views(scan, amap, np.eye(4), np.eye(4), at=centre)
    assert views.voxel == centre and not views.peak
    assert foreground_centre(np.zeros((4, 4, 4))) == (2, 2, 2)
