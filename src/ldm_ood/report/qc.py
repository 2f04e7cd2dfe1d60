"""QC reports of a folder-mode output folder: one page per scan and one page for the folder (as MRIQC).

Drawn from the per-scan records ``<case>.json`` (:mod:`ldm_ood.methods.scan_record`) that
``ldm-ood score|segment --input DIR --output OUT`` writes, by ``--report`` or :func:`write_qc_reports`:

* ``<case>.html`` (:func:`write_scan_report`): the verdict in words (flagged / not flagged / flagged by
  the input check / no threshold); the scan's score against the validation scores its calibration
  kept, with the threshold and the false-positive rate it was set at (or a line saying the
  distribution is unavailable: an old calibration, or one made after the scan was scored); the scan
  with its anomaly map overlaid on the scan's own grid (the map written beside it), three planes
  through the map's hottest region (a 2D image: the image); the record as a table and the model id;
* ``index.html`` (:func:`write_group_report`): every scan sorted by score, highest first, each row a
  thumbnail (the axial plane through the centre of the scan's signal, the same plane for every scan, so
  they compare), its score, percentile and flag and a link to its page; then the scans that could not be
  scored, with their error.

Every page is one self-contained HTML file (inline CSS, images embedded as base64 PNG, no script, no
link but to the folder's own pages). Inputs are shown through the run's intensity preprocessing
(:class:`Display`: CT window or min–max), as the model sees them. A scan whose page fails to draw is
named on the group page; the other pages are written.
"""

from __future__ import annotations

import datetime as _dt
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

import numpy as np

from ..artifacts.atomic import atomic_write_text
from ..data.io import read_image
from ..methods.calibration_files import recorded_id
from ..methods.operating_point import OperatingPoint, load_operating_point
from ..methods.registry import METHODS
from ..methods.scan_record import ScanRecord, read_scan_records
from ..runs import RunDir
from ..viz.preview import Panel, display_views, ras_index, render_panel, unit_intensity, view_aspects
from . import figures
from .html import _CSS, _esc, _png

INDEX = "index.html"
PLANES_3D = ("sagittal", "coronal", "axial")
#: the box :func:`hottest_voxel` averages the map over, as a fraction of the volume's smallest extent
PEAK_BOX = 0.05

_QC_CSS = """
.verdict{border-radius:6px;padding:10px 16px;margin:14px 0;font-size:1.05em;max-width:1100px}
.verdict b{font-size:1.1em} .flagged{background:#fde8e8;border:2px solid #c62828;color:#7f1010}
.clear{background:#e8f5e9;border:2px solid #2e7d32;color:#1b4d1f} .unknown{background:#f3f3f3;border:2px solid #999}
table.scans td{vertical-align:middle} table.scans img{border:0;margin:0;display:block}
tr.flag td{background:#fff3f3} td.flagtxt{font-weight:bold;color:#b71c1c;text-align:left} td.ok{color:#2e7d32;text-align:left}
.record td:first-child{font-weight:bold} td.err{color:#b71c1c;text-align:left;max-width:700px}
body{padding:0 24px} table.scans th,table.failed th{text-align:left} table.scans td.txt{max-width:420px}
"""


@dataclass(frozen=True)
class Display:
    """How inputs are windowed on the pages: the run's intensity preprocessing (``data.modality``,
    ``data.ct_window``); ``other`` rescales each scan min–max."""

    modality: str = "other"
    ct_window: tuple[float, float] = (-15.0, 100.0)

    @classmethod
    def of_run(cls, run: RunDir) -> "Display":
        """The run's display (min–max without a config)."""
        if not run.config_path.exists():
            return cls()
        data = run.load_config().data
        return cls(data.modality, tuple(data.ct_window))

    def scan(self, array: np.ndarray) -> np.ndarray:
        """``array`` in [0, 1] for display."""
        return unit_intensity(array, self.modality, self.ct_window)


@dataclass
class ScanViews:
    """What a scan page draws: ``views`` of the scan in [0, 1] and ``map_views`` of its anomaly map,
    the same ``planes`` (display orientation: ``viz.preview``); ``voxel``: the scan's voxel the 3D
    planes go through (:func:`hottest_voxel`, else the centre; ``peak`` says which), ``world`` its
    position in mm; ``ras``: the same voxel as an index of the RAS-reoriented volume; ``vmax``: the top
    of the map's colour scale (:func:`~.figures.map_vmax` over the whole map); ``aspects``: height /
    width of a displayed pixel per plane (the voxel spacing)."""

    planes: tuple[str, ...]
    views: list[np.ndarray]
    map_views: list[np.ndarray]
    vmax: float
    aspects: tuple[float, ...] = (1.0,)
    voxel: tuple[int, ...] | None = None
    ras: tuple[int, ...] | None = None
    world: tuple[float, ...] | None = None
    peak: bool = False


def scan_views(scan: np.ndarray, amap: np.ndarray, affine: np.ndarray | None, map_affine: np.ndarray | None = None,
               at: tuple[int, ...] | None = None) -> ScanViews:
    """The planes of ``scan`` (2D ``(X, Y)`` or 3D ``(X, Y, Z)``, in [0, 1]) and of its anomaly map
    ``amap`` on the same grid, through the map's hottest region (or the voxel ``at``). ``ValueError`` when
    the map is not on the scan's grid (another shape, or ``map_affine`` not ``affine``): it is drawn on the
    scan's own grid, never resampled."""
    scan, amap = np.asarray(scan, dtype=np.float32), np.asarray(amap, dtype=np.float32)
    if amap.shape != scan.shape:
        raise ValueError(f"the anomaly map has shape {amap.shape}, the scan {scan.shape}: not on the scan's grid")
    if affine is not None and map_affine is not None and not np.allclose(affine, map_affine, atol=1e-3):
        raise ValueError("the anomaly map's affine differs from the scan's: not on the scan's grid")
    vmax = figures.map_vmax(amap)
    if scan.ndim == 2:
        return ScanViews(("slice",), display_views(scan), display_views(amap), vmax)
    voxel = hottest_voxel(amap) if at is None else tuple(int(i) for i in at)
    peak = voxel is not None and at is None
    voxel = voxel if voxel is not None else tuple(s // 2 for s in scan.shape)
    ras = ras_index(voxel, scan.shape, affine)
    world = None if affine is None else tuple(float(c) for c in (np.asarray(affine) @ [*voxel, 1.0])[:3])
    return ScanViews(PLANES_3D, display_views(scan, affine, ras), display_views(amap, affine, ras), vmax,
                     view_aspects(affine), voxel, ras, world, peak)


def hottest_voxel(amap: np.ndarray) -> tuple[int, ...] | None:
    """The voxel where the map, averaged over a box of :data:`PEAK_BOX` of the volume's smallest extent
    (at least 3 voxels a side; outside the volume counts as the map's minimum), is largest: the centre
    of its hottest region, so that one hot voxel at the edge of the volume does not choose the planes.
    None for a map without two different finite values."""
    from scipy.ndimage import uniform_filter

    a = np.asarray(amap, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any() or float(a[finite].max()) == float(a[finite].min()):
        return None
    low = float(a[finite].min())
    size = max(3, int(round(PEAK_BOX * min(a.shape))))
    smooth = uniform_filter(np.where(finite, a, low), size=size, mode="constant", cval=low)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(smooth)), a.shape))


def thumbnail(views: ScanViews, cell: int = 112) -> bytes:
    """PNG bytes of the axial plane of ``views`` (or the 2D image) with the map over it, about ``cell`` px wide."""
    from matplotlib.image import imsave

    panel = Panel(views.views[-1], overlay=views.map_views[-1], overlay_cmap=figures.MAP_CMAP, alpha=0.6,
                  overlay_min=figures.MAP_SHOWN_FROM * views.vmax, overlay_max=views.vmax)
    buf = io.BytesIO()
    imsave(buf, np.clip(render_panel(panel, cell), 0.0, 1.0), format="png")
    return buf.getvalue()


def foreground_centre(scan: np.ndarray) -> tuple[int, ...]:
    """The voxel at the centre of mass of ``scan``'s signal (values above 5 % of its range): the plane every
    thumbnail of a folder is drawn through, so thumbnails compare; the grid's centre for a blank scan."""
    a = np.nan_to_num(np.asarray(scan, dtype=np.float64))
    lo, hi = float(a.min()), float(a.max())
    mask = a > lo + 0.05 * (hi - lo)
    if hi <= lo or not mask.any():
        return tuple(s // 2 for s in a.shape)
    return tuple(int(round(c.mean())) for c in np.nonzero(mask))


def load_views(record: ScanRecord, out_dir: str | Path, display: Display) -> tuple[ScanViews, ScanViews]:
    """The record's scan (``input``) and its map (``outputs["map"]`` in ``out_dir``) as :class:`ScanViews`:
    through the map's hottest region (the page) and through the scan's centre (the thumbnail)."""
    if "map" not in record.outputs:
        raise ValueError(f"{record.case_id}: the record names no anomaly map")
    scan = read_image(record.input, allow_constant=True)
    amap = read_image(Path(out_dir) / record.outputs["map"], allow_constant=True)
    x = display.scan(scan.array)
    return (scan_views(x, amap.array, scan.affine, amap.affine),
            scan_views(x, amap.array, scan.affine, amap.affine, at=foreground_centre(x)))


def scan_page_name(case_id: str) -> str:
    """``<case>.html`` (``index.scan.html`` for a case named ``index``: ``index.html`` is the folder's page)."""
    return "index.scan.html" if case_id == "index" else f"{case_id}.html"


# ----------------------------------------------------------------------------- words


def _num(value: float | None, fmt: str = ".3f") -> str:
    if value is None:
        return "—"
    return "+inf" if value == float("inf") else format(value, fmt)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} %"


def flag_words(record: ScanRecord) -> tuple[str, str]:
    """``(css class, short words)`` of the record's flag: the group page's flag column."""
    if record.qc_reason:
        return "flagged", "OOD (input check)"
    if record.flag is None:
        return "unknown", "no threshold"
    return ("flagged", "OOD") if record.flag else ("clear", "in distribution")


def verdict(record: ScanRecord) -> tuple[str, str]:
    """``(css class, HTML sentence)``: the scan's flag in words, for its page."""
    rate = "" if record.fpr is None else f" (set so that {100 * record.fpr:.3g} % of the in-distribution validation scans are flagged)"
    rank = "" if record.percentile is None else f"; {record.percentile:.0f} % of the validation scans score at or below it"
    if record.qc_reason:
        return "flagged", (f"<b>Flagged: out of distribution, by the input check.</b> {_esc(record.qc_reason)}. The scan "
                           f"is not of the kind the model was calibrated on, so its model score ({_num(record.model_score)}) "
                           "is not a valid measure; the score is set to +inf.")
    if record.flag is None:
        why = ("this method has no image-level threshold" if record.threshold is None else "the scan has no flag")
        return "unknown", f"<b>No flag:</b> {why}. Score {_num(record.score)}{rank}."
    if record.flag:
        return "flagged", (f"<b>Flagged: out of distribution.</b> Score {_num(record.score)} is above the threshold "
                           f"{_num(record.threshold)}{rate}{rank}.")
    return "clear", (f"<b>Not flagged: within the validation distribution.</b> Score {_num(record.score)} is at or below "
                     f"the threshold {_num(record.threshold)}{rate}{rank}.")


def _record_table(record: ScanRecord) -> str:
    rows = [("case", record.case_id), ("input", record.input), ("method", f"{record.method} ({record.method_label})"),
            ("score", _num(record.score, ".6g")), ("model score", _num(record.model_score, ".6g")),
            ("percentile", _pct(record.percentile)),
            ("flag", {None: "—", True: "yes", False: "no"}[record.flag]), ("threshold", _num(record.threshold, ".6g")),
            ("threshold's FPR", "—" if record.fpr is None else f"{100 * record.fpr:.3g} %"),
            ("input check", record.qc_reason or "passed"), ("model id", record.model_id or "(not recorded)"),
            ("calibration id", record.calibration_id or "(not recorded)"), ("seconds", _num(record.seconds, ".3g")),
            ("outputs", ", ".join(f"{k}: {v}" for k, v in record.outputs.items()))]
    return ('<table class="record">' + "".join(f"<tr><td>{_esc(k)}</td><td class=\"txt\">{_esc(v)}</td></tr>" for k, v in rows)
            + "</table>")


def _page(title: str, body: Sequence[str]) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}{_QC_CSS}</style></head><body>{''.join(body)}</body></html>")


def _generated() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


# ----------------------------------------------------------------------------- pages


def _distribution_section(record: ScanRecord, reference: OperatingPoint, unavailable: str) -> str:
    if not reference.available or unavailable:
        why = unavailable or "the calibration holds no validation scores (made by an older version; recalibrate to see them)"
        return f'<p class="note">Validation score distribution unavailable: {_esc(why)}.</p>'
    fig = figures.score_distribution(reference.val_scores, record.score, record.threshold, record.fpr,
                                     xlabel=f"{record.method} score (higher = more out of distribution)")
    return (_png(figures.to_png(fig), "score against the validation scores")
            + f'<p class="caption">The scores of the {len(reference.val_scores)} in-distribution validation scans the '
            "calibration kept (histogram, one tick per scan), the operating threshold and this scan's score.</p>")


def _views_caption(views: ScanViews) -> str:
    if views.voxel is None:
        where, first, second = "The 2D image", "Left", "Right"
    else:
        how = ("the anomaly map's hottest region (its maximum after averaging over a small box)" if views.peak
               else "the volume's centre (the map is constant)")
        mm = "" if views.world is None else f", world ({', '.join(f'{c:.1f}' for c in views.world)}) mm"
        where = f"Sagittal, coronal and axial planes through {how}: voxel ({', '.join(map(str, views.voxel))}) of the scan{mm}"
        first, second = "Top", "Bottom"
    return (f'<p class="caption">{where}; radiological display (patient right on the left, superior / anterior at '
            f"the top). {first}: the scan as the model sees it (window [0, 1]). {second}: the anomaly map on the scan's "
            f"own grid, shown from {100 * figures.MAP_SHOWN_FROM:.0f} % of its 99.5th percentile ({views.vmax:.3g}) up.</p>")


def write_scan_report(record: ScanRecord, out_dir: str | Path, reference: OperatingPoint = OperatingPoint(),
                      display: Display = Display(), unavailable: str = "", views: ScanViews | None = None) -> Path:
    """Write ``<out_dir>/<case>.html`` for a scored ``record`` (module docstring) and return its path.

    ``reference``: the validation scores of the calibration it was scored under (empty: the page says
    the distribution is unavailable; ``unavailable`` says why instead of the default reason);
    ``display``: how the scan is windowed; ``views``: the scan's :func:`load_views`, when already read.
    Raises (nothing written) when the scan or its map cannot be read or the map is not on the scan's grid."""
    if record.failed:
        raise ValueError(f"{record.case_id}: not scored ({record.error}); it has no page")
    views = views if views is not None else load_views(record, out_dir, display)[0]
    css, words = verdict(record)
    fig = figures.scan_overlay(views.views, views.map_views, views.planes, views.vmax,
                               title=f"{record.case_id}: scan and anomaly map", aspects=views.aspects)
    body = [
        f"<h1>QC report: {_esc(record.case_id)}</h1>",
        f'<p class="meta">{_esc(record.input)} · {_esc(record.method_label or record.method)} · model id '
        f"<b>{_esc(record.model_id or '(not recorded)')}</b> · generated {_generated()} · "
        f'<a href="{INDEX}">all scans of this folder</a></p>',
        f'<div class="verdict {css}">{words}</div>',
        "<h2>Score against the validation scans</h2>", _distribution_section(record, reference, unavailable),
        "<h2>Scan and anomaly map</h2>", _png(figures.to_png(fig), "scan and anomaly map"), _views_caption(views),
        "<h2>Record</h2>", _record_table(record),
        f'<p class="note">From {_esc(record.case_id)}.json in this folder. Model id: the trained networks the '
        "calibration was made with; calibration id: the calibration files.</p>",
    ]
    path = Path(out_dir) / scan_page_name(record.case_id)
    atomic_write_text(path, _page(f"QC {record.case_id}", body))
    return path


def _sort_key(record: ScanRecord) -> tuple[int, float]:
    """Highest score first (+inf first), scans without a finite-or-infinite score last."""
    score = record.score
    return (1, 0.0) if score is None or np.isnan(score) else (0, -score)


def _thumbnail_cell(record: ScanRecord, out_dir: Path, display: Display, link: str | None,
                    png: bytes | None = None) -> tuple[str, str]:
    """``(table cell, note)``: the linked thumbnail (``png``, else drawn here), or a dash and why it could not be drawn."""
    try:
        img = _png(png or thumbnail(load_views(record, out_dir, display)[1]), f"{record.case_id} thumbnail")
    except Exception as err:  # noqa: BLE001 - one scan's thumbnail never loses the page
        return "<td>—</td>", f"no thumbnail: {type(err).__name__}: {err}"
    return (f'<td><a href="{link}">{img}</a></td>' if link else f"<td>{img}</td>"), ""


def write_group_report(out_dir: str | Path, display: Display = Display(),
                       page_errors: Mapping[str, str] | None = None, thumbnails: Mapping[str, bytes] | None = None
                       ) -> Path:
    """Write ``<out_dir>/index.html`` from the folder's records (module docstring) and return its path.

    A scan links to its page where ``<case>.html`` exists; ``page_errors`` (case id → why its page
    could not be drawn) are shown in its row instead. ``thumbnails``: case id → :func:`thumbnail` PNG
    already drawn (the others are drawn here)."""
    thumbnails = thumbnails or {}
    out = Path(out_dir)
    records, problems = read_scan_records(out)
    page_errors = dict(page_errors or {})
    scored = sorted((r for r in records if not r.failed), key=_sort_key)
    failed = [r for r in records if r.failed]
    rows = []
    for rank, r in enumerate(scored, start=1):
        page = scan_page_name(r.case_id)
        link = quote(page) if (out / page).exists() and r.case_id not in page_errors else None
        css, words = flag_words(r)
        name = f'<a href="{link}">{_esc(r.case_id)}</a>' if link else _esc(r.case_id)
        thumb, thumb_note = _thumbnail_cell(r, out, display, link, thumbnails.get(r.case_id))
        page_note = f"page not drawn: {page_errors[r.case_id]}" if r.case_id in page_errors else ""
        note = "; ".join(n for n in (r.qc_reason, page_note, thumb_note) if n)
        rows.append(f'<tr class="{"flag" if css == "flagged" else ""}"><td>{rank}</td>'
                    f"{thumb}<td class=\"txt\">{name}</td><td>{_num(r.score)}</td>"
                    f'<td>{_pct(r.percentile)}</td><td class="{"flagtxt" if css == "flagged" else "ok" if css == "clear" else "txt"}">'
                    f'{_esc(words)}</td><td class="txt">{_esc(note)}</td></tr>')
    methods = sorted({r.method_label or r.method for r in records} - {""})
    models = sorted({r.model_id for r in records} - {""})
    thresholds = sorted({(r.threshold, r.fpr) for r in scored if r.threshold is not None})
    n_flagged = sum(flag_words(r)[0] == "flagged" for r in scored)
    n_qc = sum(bool(r.qc_reason) for r in scored)
    op = "; ".join(f"threshold {_num(t)}" + ("" if f is None else f" at {100 * f:.3g} % validation FPR")
                   for t, f in thresholds) or "no image-level threshold"
    body = [
        f"<h1>QC report: {_esc(out.name)}</h1>",
        f'<p class="meta">{_esc(out.resolve())} · {_esc(", ".join(methods) or "method not recorded")} · model id '
        f"<b>{_esc(', '.join(models) or '(not recorded)')}</b> · {op} · generated {_generated()}</p>",
        f'<div class="verdict {"flagged" if n_flagged else "unknown" if failed or not scored else "clear"}"><b>{len(scored)} scan(s) '
        f"scored: {n_flagged} flagged out of distribution</b>" + (f" ({n_qc} by the input check)" if n_qc else "")
        + f", {len(scored) - n_flagged} not flagged; {len(failed)} could not be scored.</div>",
        "<h2>Scans, highest score first</h2>",
        '<table class="scans"><tr><th>#</th><th>view + map</th><th>case</th><th>score</th>'
        "<th>percentile</th><th>flag</th><th>note</th></tr>" + "".join(rows) + "</table>" if rows
        else '<p class="note">No scored scans in this folder.</p>',
        '<p class="caption">view: the axial plane through the centre of the scan (a 2D image: the image) with the anomaly map over '
        "it; percentile: of the validation scans scoring at or below the scan. Click a thumbnail or a case for its "
        "page.</p>",
    ]
    if failed or problems:
        items = [(r.case_id, r.input, r.error) for r in failed] + [(name, "", why) for name, why in problems.items()]
        body += ["<h2>Not scored</h2>",
                 '<table class="failed"><tr><th>case</th><th>input</th><th>error</th></tr>'
                 + "".join(f'<tr><td class="txt">{_esc(c)}</td><td class="txt">{_esc(i)}</td><td class="err">{_esc(e)}</td></tr>'
                           for c, i, e in items) + "</table>"]
    path = out / INDEX
    atomic_write_text(path, _page(f"QC {out.name}", body))
    return path


# ----------------------------------------------------------------------------- the folder


@dataclass
class QCReports:
    """What :func:`write_qc_reports` wrote: the group page, the scan pages, and the scans whose page
    could not be drawn (case id → why)."""

    index: Path
    pages: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _reference(run: RunDir | None, record: ScanRecord, cache: dict[str, tuple[OperatingPoint, str]]
               ) -> tuple[OperatingPoint, str]:
    """The run's operating point for the record's method, and why it is unavailable for this record
    ("" when it is available): the run is now calibrated otherwise than when the scan was scored."""
    if run is None or record.method not in METHODS:
        return OperatingPoint(), "no run to read the calibration from"
    if record.method not in cache:
        cache[record.method] = (load_operating_point(run, record.method), recorded_id(run, record.method))
    reference, now = cache[record.method]
    if record.calibration_id and now != record.calibration_id:
        return reference, (f"the scan was scored under calibration {record.calibration_id}, the run is now calibrated "
                           f"as {now or '(none)'}")
    return reference, ""


def write_qc_reports(out_dir: str | Path, run_dir: str | Path | None = None) -> QCReports:
    """Every scan page and the group page of the folder-mode output ``out_dir`` (module docstring).

    ``run_dir``: the run the folder was scored with: its calibration's validation scores and its
    intensity window (without it, no distribution panel and a min–max window). A page that fails to
    draw is recorded in the result and on the group page, and any stale page of that scan removed."""
    out = Path(out_dir)
    run = RunDir(run_dir) if run_dir is not None else None
    display = Display.of_run(run) if run is not None else Display()
    result = QCReports(out / INDEX)
    cache: dict[str, tuple[OperatingPoint, str]] = {}
    records, _ = read_scan_records(out)
    thumbnails: dict[str, bytes] = {}
    for record in records:
        if record.failed:
            continue
        try:
            reference, unavailable = _reference(run, record, cache)
            views, centred = load_views(record, out, display)
            result.pages.append(write_scan_report(record, out, reference, display, unavailable, views))
            thumbnails[record.case_id] = thumbnail(centred)
        except Exception as err:  # noqa: BLE001 - one scan's page never loses the others
            result.failed[record.case_id] = f"{type(err).__name__}: {err}"
            (out / scan_page_name(record.case_id)).unlink(missing_ok=True)
    result.index = write_group_report(out, display, result.failed, thumbnails)
    return result

