"""``ldm-ood report``: one self-contained HTML page (figures embedded as base64 PNG, inline CSS, no JS).

A warning box at the top lists every ``Summary.warnings`` row (an expected method whose scores are
missing or non-finite on a set, with the counts); the tables mark those cells ``†``.

Sections: AUROC table (paper 000 Table 1 layout with DeLong marks) and detailed metrics,
segmentation metrics (paper 001 Table 1) and the anomaly maps' localisation (pixel AUROC / AUPRC
against the corrupted region, LDM beside LTM), ROC curves (small multiples per run), score histograms
ID vs each OOD set with the operating threshold, tri-planar anomaly-map overlays for the spatially
localised corruptions (LDM and LTM side by side, paper 000 Fig. 1; the corrupted region outlined), segmentation examples with
ground truth, the time / memory table from the benchmark JSON files, and the evaluation notes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..data.io import read_image
from ..data.manifest import Case
from ..data.scans import ScanSource, read_scan
from ..evaluation.evaluate import evaluate
from ..evaluation.inputs import (
    normalise_runs,
    read_scores,
    read_threshold,
    resolve_path,
    run_manifest,
    score_sets,
    segment_variants,
    segmentation_calibration,
)
from ..evaluation.summary import DETECTION_METHODS, ID_SET, METHOD_LABELS, Summary, order_sets
from ..evaluation.tables import (
    MARK_TEXT, TABLE3_SET, Grid, detail_grid, level_runs, localisation_grid, paper000_table1_grid, paper001_table1_grid,
    paper001_table3_grid, segmentation_grid, table1_grid,
)
from ..methods.records import read_records
from ..runs import RunDir
from ..viz.preview import unit_intensity
from . import figures

#: corruptions with a spatially localised effect: shown as anomaly-map overlays
LOCALISED_SETS = ("chunk_top", "chunk_middle", "skull_stripped", "scale_0.01", "scale_0.1")
BENCHMARK_FILES = (("memory.json", "Memory"), ("scoring.json", "Scoring time"), ("segment.json", "Segmentation time"))
FRONTIER_FILE = "frontier.json"  # benchmarks/bench_frontier.py: AUROC vs UNet evaluations, drawn as a figure
SECTION_TITLES = ("AUROC table", "Segmentation metrics", "ROC curves", "Score histograms", "Anomaly maps",
                  "Segmentation examples", "Time and memory", "Precision", "Notes", "LTM training curves")
#: the stage whose train / validation curve the report shows (the LTM trains to convergence: early stopping)
CURVE_STAGE = "transformer"

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1300px;color:#222}
h1{font-size:1.6em;margin-bottom:0} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{font-size:1.05em;margin-bottom:4px} .meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:8px 0 4px;font-size:.85em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f3f3f3} th[colspan]{text-align:center}
td:first-child,th:first-child{text-align:left} tr.section td{background:#fafafa;font-style:italic;text-align:left}
.strong{font-weight:bold} .weak{text-decoration:underline} .caption{color:#555;font-size:.85em;max-width:1100px}
img{max-width:100%;border:1px solid #eee;margin:6px 0} .note{color:#666;font-size:.85em}
.warnbox{border:2px solid #c00;background:#fff0f0;color:#600;padding:8px 16px;margin:16px 0;border-radius:4px}
.unstable{color:#a60;font-style:italic} .warnbox h2{color:#c00;border:none;margin:4px 0} .warnbox table{background:#fff} td.warning{color:#c00;font-weight:bold}
details{margin:8px 0} summary{cursor:pointer;color:#1f5fa8} .wide{overflow-x:auto;max-width:100%} td.txt{text-align:left}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"/>'


def grid_to_html(grid: Grid) -> str:
    """HTML table of a :class:`~ldm_ood.evaluation.tables.Grid` (marks as bold / underline)."""
    out = [f"<h3>{_esc(grid.title)}</h3><table>"]
    if grid.groups:
        out.append("<tr><th></th>" + "".join(f'<th colspan="{n}">{_esc(g)}</th>' for g, n in grid.groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in grid.columns) + "</tr>")
    for section, cells in grid.rows:
        if section:
            out.append(f'<tr class="section"><td colspan="{len(grid.columns)}">{_esc(section)}</td></tr>')
        out.append("<tr>" + "".join(f'<td class="{c.mark}">{_esc(c.text + (MARK_TEXT[c.mark] if c.mark == "warning" else ""))}</td>'
                                    for c in cells) + "</tr>")
    out.append("</table>")
    if grid.caption:
        out.append(f'<p class="caption">{_esc(grid.caption)}</p>')
    return "".join(out)


def _warning_box(summary: Summary) -> str:
    """The prominent box at the top of the page: one row per warning with its counts; "" without warnings."""
    if not summary.warnings:
        return ""
    rows = [[w.run, w.method, "(all)" if w.set is None else w.set, w.n_finite, w.n_nonfinite, w.n_missing, w.n_total,
             w.message] for w in summary.warnings]
    return ('<div class="warnbox" id="warnings">'
            f"<h2>Warning: {len(summary.warnings)} method/set result(s) with missing or non-finite scores</h2>"
            "<p>These scores were left out of the metrics (cells marked † in the tables; n/a† where none was finite). "
            "A method producing NaN usually means a broken model: retrain it, recalibrate and rescore.</p>"
            + _table(["run", "method", "set", "finite", "non-finite", "missing", "total", "message"], rows)
            + "</div>")


def _flat(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A record with nested dicts as dotted keys (``train_step.peak_rss_gb``)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _records(data: Any) -> list[dict[str, Any]] | None:
    """Rows of a list of records or of a mapping name → record (name first); None otherwise."""
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return [_flat(r) for r in data]
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return [{"name": k, **_flat(v)} for k, v in data.items()]
    return None


def _table(keys: list[str], rows: list[list[Any]]) -> str:
    """A plain HTML table (scrolls sideways when wide); text cells left-aligned, numbers right."""
    txt = ' class="txt"'

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return json.dumps(v) if isinstance(v, (dict, list)) else str(v)

    return ('<div class="wide"><table><tr>' + "".join(f"<th>{_esc(k)}</th>" for k in keys) + "</tr>"
            + "".join("<tr>" + "".join(f"<td{txt if isinstance(v, str) else ''}>{_esc(cell(v))}</td>" for v in r)
                      + "</tr>" for r in rows)
            + "</table></div>")


def _precision_section(summary: Summary) -> str:
    """One row per network and use of each run: bf16 or fp32, the measured speed-up and why (``precision_policy``)."""
    rows = [[run, net, c.get("precision", ""), c.get("speedup") if c.get("speedup") is not None else "",
             c.get("rel_error") if c.get("rel_error") is not None else "", c.get("reason", "")]
            for run, nets in summary.precision.items() for net, c in sorted(nets.items())]
    if not rows:
        return '<p class="note">No precision records.</p>'
    return (_table(["run", "network (use)", "precision", "bf16 speed-up", "bf16 vs fp32 error", "why"], rows)
            + '<p class="caption">precision: auto runs bf16 only where a self-check on the run\'s own networks '
              "is finite, agrees with fp32 and is faster on this machine.</p>")


def _json_to_html(data: Any) -> str:
    """A benchmark JSON as tables: its scalar fields as key / value, then each list (or mapping) of
    records as its own table, nested fields as dotted columns."""
    recs = _records(data)
    if recs is not None:
        keys = list(dict.fromkeys(k for r in recs for k in r))
        return _table(keys, [[r.get(k, "") for k in keys] for r in recs])
    if not isinstance(data, dict):
        return f"<pre>{_esc(json.dumps(data, indent=1)[:5000])}</pre>"
    scalars = {k: v for k, v in data.items() if _records(v) is None}
    parts = [_table(["key", "value"], [[k, v] for k, v in _flat(scalars).items()])] if scalars else []
    for k, v in data.items():
        if k not in scalars:
            parts.append(f'<p class="note"><b>{_esc(k)}</b></p>' + _json_to_html(v))
    return "".join(parts)


# ----------------------------------------------------------------------------- sections


def _method_scores(run: RunDir) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {set: {case: score}}}`` for every detection method with an ``id`` file."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, (folder, column) in DETECTION_METHODS.items():
        sets = score_sets(run, folder)
        if ID_SET not in sets:
            continue
        per_set = {s: read_scores(run.scores_path(folder, s), column) for s in sets}
        if per_set[ID_SET]:
            out[method] = {s: v for s, v in per_set.items() if v}
    return out


def _roc_section(runs: Mapping[str, RunDir], scores: Mapping[str, dict]) -> str:
    parts = []
    for name, per_method in scores.items():
        sets = order_sets(s for m in per_method.values() for s in m)
        curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for s in sets:
            curves[s] = {}
            for method, per_set in per_method.items():
                if s in per_set:
                    neg, pos = list(per_set[ID_SET].values()), list(per_set[s].values())
                    curves[s][METHOD_LABELS[method]] = (np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])
        if curves:
            fig = figures.roc_grid(curves, title=f"ROC curves, run {name}: ID test vs each OOD set")
            parts.append(_png(figures.to_png(fig), f"ROC curves {name}"))
    return "".join(parts) or '<p class="note">No detection scores.</p>'


def _threshold_for(run: RunDir, method: str, notes: list[str]) -> float | None:
    """Operating threshold of ``method`` from its calibration JSON (key ``threshold``), read defensively."""
    path = run.ood_calibration_path if method == "ldm" else run.ltm_calibration_path
    thr = read_threshold(path, "threshold")
    if thr is None and path.exists():
        try:
            keys = sorted(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            keys = ["<unreadable>"]
        cands = [k for k in keys if "threshold" in k.lower()]
        thr = read_threshold(path, cands[0]) if cands else None
        notes.append(f"{path}: no 'threshold' key (keys: {', '.join(keys)})"
                     + (f"; used {cands[0]!r}" if thr is not None else "; histogram drawn without threshold"))
    return thr


def _hist_section(runs: Mapping[str, RunDir], scores: Mapping[str, dict], notes: list[str]) -> str:
    parts = []
    for name, per_method in scores.items():
        for method in ("ldm", "ltm"):
            if method not in per_method:
                continue
            per_set = per_method[method]
            thr = _threshold_for(runs[name], method, notes)
            ood = {s: np.array(list(per_set[s].values())) for s in order_sets(per_set)}
            if not ood:
                continue
            fig = figures.histogram_grid(
                np.array(list(per_set[ID_SET].values())), ood, thr,
                title=f"{METHOD_LABELS[method]} scores, run {name}" + ("" if thr is None else f" (threshold {thr:.3g})"),
                xlabel=f"{METHOD_LABELS[method]} score",
            )
            parts.append(_png(figures.to_png(fig), f"histograms {name} {method}"))
    return "".join(parts) or '<p class="note">No detection scores.</p>'


def _case_lookup(cases: list[Case] | None) -> dict[tuple[str, str], Case]:
    """``{(set, case_id): case}``, the test-split case winning over another split's with the same key."""
    out: dict[tuple[str, str], Case] = {}
    for c in cases or []:
        if (c.set, c.case_id) not in out or c.split == "test":
            out[(c.set, c.case_id)] = c
    return out


def _display_input(run: RunDir, source: ScanSource, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """An input scan in [0, 1] by the run's intensity preprocessing (``data.modality`` / ``ct_window``),
    on its native grid, and its affine. Without a run config the stored values are shown as they are."""
    img = read_scan(source, allow_constant=True)
    if not run.config_path.exists():
        notes.append(f"{run.root}: no config.yaml; inputs shown as stored, in a [0, 1] window")
        return np.clip(img.array, 0.0, 1.0), img.affine
    data = run.load_config().data
    return unit_intensity(img.array, data.modality, data.ct_window), img.affine


def _region(case: Case, shape: tuple[int, ...], notes: list[str], where: str) -> np.ndarray | None:
    """The case's region mask (the voxels its corruption removed) on the image's grid, or None."""
    if case.mask is None:
        return None
    try:
        region = read_image(case.mask, allow_constant=True).array > 0.5
    except Exception as err:
        notes.append(f"{where}: region outline skipped ({err})")
        return None
    return region if region.shape == tuple(shape) else None


def _overlay_section(runs: Mapping[str, RunDir], manifests: Mapping[str, list[Case] | None], notes: list[str], max_cases: int) -> str:
    parts = []
    for name, run in runs.items():
        lookup = _case_lookup(manifests.get(name))
        sets = [s for s in LOCALISED_SETS if run.scores_path("ldm", s).exists() or run.scores_path("ltm", s).exists()]
        rows, regions = [], []
        for s in sets:
            by_method = {m: {r["case_id"]: r for r in read_records(run.scores_path(m, s))} for m in ("ldm", "ltm")}
            case_ids = list(dict.fromkeys([*by_method["ldm"], *by_method["ltm"]]))[:max_cases]
            for cid in case_ids:
                case = lookup.get((s, cid))
                if case is None:
                    notes.append(f"{name}/{s}/{cid}: not in the manifest; no overlay")
                    continue
                try:
                    image, affine = _display_input(run, case.source, notes)
                    maps = {}
                    for m, label in (("ldm", "LDM"), ("ltm", "LTM")):
                        p = resolve_path(by_method[m].get(cid, {}).get("map_path", ""), run)
                        if p is not None and p.exists():
                            maps[label] = read_image(p, allow_constant=True).array
                except Exception as err:
                    notes.append(f"{name}/{s}/{cid}: overlay skipped ({err})")
                    continue
                if maps:
                    rows.append((f"{s}: {cid}", image, affine, maps))
                    regions.append(_region(case, image.shape, notes, f"{name}/{s}/{cid}"))
        if rows:
            fig = figures.overlay_grid(rows, title=f"Anomaly maps, run {name} (input | LDM | LTM)", regions=regions)
            parts.append(_png(figures.to_png(fig), f"anomaly maps {name}"))
    return "".join(parts) or '<p class="note">No anomaly maps of the localised corruptions (' + ", ".join(LOCALISED_SETS) + ").</p>"


def _segmentation_examples(runs: Mapping[str, RunDir], manifests: Mapping[str, list[Case] | None], notes: list[str], max_cases: int) -> str:
    parts = []
    for name, run in runs.items():
        lookup = _case_lookup(manifests.get(name))
        for variant in segment_variants(run):
            thr = read_threshold(segmentation_calibration(run, variant), "residual_threshold", variant)
            rows = []
            for s in order_sets(p.stem for p in (run.root / "segment" / variant).glob("*.csv")):
                shown = 0
                for r in read_records(run.segment_scores_path(variant, s)):
                    case = lookup.get((s, r["case_id"]))
                    if shown >= max_cases or case is None or case.mask is None:
                        continue
                    try:
                        image, affine = _display_input(run, case.source, notes)
                        gt = read_image(case.mask, allow_constant=True).array
                        amap = read_image(resolve_path(r.get("map_path", ""), run) or "", allow_constant=True).array
                        pred_path = resolve_path(r.get("mask_path", ""), run)
                        pred = (read_image(pred_path, allow_constant=True).array if pred_path and pred_path.exists()
                                else (amap >= thr).astype(np.float32) if thr is not None else None)
                    except Exception as err:
                        notes.append(f"{name}/{variant}/{s}/{r['case_id']}: example skipped ({err})")
                        continue
                    rows.append((f"{s}: {r['case_id']}", image, affine, gt, amap, pred))
                    shown += 1
            if rows:
                fig = figures.segmentation_grid(rows, title=f"Segmentation, run {name}, variant ({variant})")
                parts.append(_png(figures.to_png(fig), f"segmentation {name} {variant}"))
    return "".join(parts) or '<p class="note">No segmentation outputs with ground-truth masks.</p>'


def _curves_section(runs: Mapping[str, RunDir], notes: list[str]) -> str:
    """The LTM's train / validation loss per epoch of every run that trained one (``metrics.csv``)."""
    from ..training.metrics import read_metrics

    curves = {}
    for name, run in runs.items():
        path = run.metrics_path(CURVE_STAGE)
        if not path.exists():
            continue
        try:
            rows = read_metrics(path)
            done = json.loads(run.done_path(CURVE_STAGE).read_text()) if run.done_path(CURVE_STAGE).exists() else {}
        except (OSError, ValueError) as err:
            notes.append(f"{name}: training curve unreadable ({path}: {err})")
            continue
        curves[name] = (rows, int(done["best_epoch"]) if done.get("best_epoch") else None)
    if not curves:
        return '<p class="note">No LTM trained.</p>'
    fig = figures.training_curves(curves, title="LTM: mean next-token cross-entropy per epoch (early stopping on validation)")
    return (_png(figures.to_png(fig), "LTM training curves")
            + '<p class="caption">Dashed: the epoch whose weights were kept (lowest validation loss); training stops '
              "after optim.patience epochs without improvement. Rows: each run's transformer/metrics.csv.</p>")


def _detection_tables(summary: Summary) -> str:
    """Paper 000 Table 1 per VQ-GAN level beside the paper when the runs are named ``l<level>``, else the run grid."""
    if not (summary.detection or any(w.method in METHOD_LABELS for w in summary.warnings)):
        return '<p class="note">No detection results.</p>'
    if not level_runs(summary):
        return grid_to_html(table1_grid(summary))
    return (grid_to_html(paper000_table1_grid(summary))
            + "<details><summary>Every run side by side</summary>" + grid_to_html(table1_grid(summary)) + "</details>")


def _benchmark_section(benchmarks_dir: Path | None) -> str:
    parts = []
    for fname, title in BENCHMARK_FILES:
        path = None if benchmarks_dir is None else Path(benchmarks_dir) / fname
        parts.append(f"<h3>{_esc(title)}</h3>")
        if path is None or not path.exists():
            parts.append('<p class="note">not measured</p>')
            continue
        try:
            parts.append(_json_to_html(json.loads(path.read_text())) + f'<p class="note">from {_esc(path)}</p>')
        except (OSError, json.JSONDecodeError) as err:
            parts.append(f'<p class="note">not measured ({_esc(path)} unreadable: {_esc(err)})</p>')
    frontier = None if benchmarks_dir is None else Path(benchmarks_dir) / FRONTIER_FILE
    if frontier is not None and frontier.exists():  # benchmarks/bench_frontier.py's output, when present
        parts.append("<h3>Scoring cost frontier</h3>")
        try:
            data = json.loads(frontier.read_text())
            sel = data.get("selection") or {}
            fig = figures.frontier_figure(data["settings"], data.get("reference"), sel.get("selected"),
                                          data.get("min_ratio"))
            parts.append(_png(figures.to_png(fig), "scoring cost frontier")
                         + _json_to_html({"selection": sel, "shared_history": data.get("shared_history")})
                         + f'<p class="note">from {_esc(frontier)}</p>')
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            parts.append(f'<p class="note">{_esc(frontier)} unreadable: {_esc(err)}</p>')
    return "".join(parts)


# ----------------------------------------------------------------------------- page


def build_report(
    run_dirs: Mapping[str, str | Path] | str | Path | Iterable[str | Path],
    summary: Summary | None,
    out_html: str | Path,
    benchmarks_dir: str | Path | None = None,
    manifest: str | Path | None = None,
    max_cases: int = 2,
) -> Path:
    """Write the report page and return its path.

    Args:
        run_dirs: as for :func:`~ldm_ood.evaluation.evaluate.evaluate` (name → run folder).
        summary: the result of ``evaluate`` (computed here, without printing, when None).
        out_html: output file; parent folders are created.
        benchmarks_dir: folder with ``memory.json`` / ``scoring.json`` / ``segment.json``; default
            ``benchmarks/results`` in the working directory; "not measured" for what is missing.
        manifest: manifest for input images and masks (default: each run's ``data.manifest``).
        max_cases: overlay / segmentation examples per set.
    """
    runs = {k: RunDir(v) for k, v in normalise_runs(run_dirs).items()}
    if summary is None:
        summary = evaluate({k: r.root for k, r in runs.items()}, manifest=manifest, out=Path(out_html).with_name("summary.json"),
                           print_tables=False)
    notes: list[str] = []
    manifests = {name: run_manifest(run, manifest, notes) for name, run in runs.items()}
    scores = {name: _method_scores(run) for name, run in runs.items() if run.root.is_dir()}
    if benchmarks_dir is None and Path("benchmarks/results").is_dir():
        benchmarks_dir = Path("benchmarks/results")

    body = [
        "<h1>ldm-ood report</h1>",
        f'<p class="meta">Runs: {", ".join(f"<b>{_esc(k)}</b> ({_esc(r.root)})" for k, r in runs.items())}'
        f" · generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
        _warning_box(summary),
        f'<h2 id="auroc">{SECTION_TITLES[0]}</h2>',
        _detection_tables(summary),
        "<details><summary>All detection metrics (bootstrap CI, AUPRC, FPR@95TPR, DeLong p)</summary>"
        + grid_to_html(detail_grid(summary)) + "</details>" if summary.detection else "",
        f'<h2 id="segmentation">{SECTION_TITLES[1]}</h2>',
        (grid_to_html(paper001_table1_grid(summary))
         + (grid_to_html(paper001_table3_grid(summary)) if any(r.set == TABLE3_SET for r in summary.segmentation) else "")
         + "<details><summary>Every segmentation row</summary>"
         + grid_to_html(segmentation_grid(summary)) + "</details>") if summary.segmentation
        else '<p class="note">No segmentation results.</p>',
        f'<h2 id="curves">{SECTION_TITLES[9]}</h2>', _curves_section(runs, notes),
        f'<h2 id="roc">{SECTION_TITLES[2]}</h2>', _roc_section(runs, scores),
        f'<h2 id="histograms">{SECTION_TITLES[3]}</h2>', _hist_section(runs, scores, notes),
        f'<h2 id="maps">{SECTION_TITLES[4]}</h2>',
        grid_to_html(localisation_grid(summary)) if summary.localisation else "",
        _overlay_section(runs, manifests, notes, max_cases),
        f'<h2 id="segmentation-examples">{SECTION_TITLES[5]}</h2>', _segmentation_examples(runs, manifests, notes, max_cases),
        f'<h2 id="benchmarks">{SECTION_TITLES[6]}</h2>', _benchmark_section(None if benchmarks_dir is None else Path(benchmarks_dir)),
        f'<h2 id="precision">{SECTION_TITLES[7]}</h2>', _precision_section(summary),
        f'<h2 id="notes">{SECTION_TITLES[8]}</h2>',
        "<ul>" + "".join(f'<li class="note">{_esc(n)}</li>' for n in dict.fromkeys([*summary.notes, *notes])) + "</ul>"
        if summary.notes or notes else '<p class="note">None.</p>',
    ]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ldm-ood report</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
