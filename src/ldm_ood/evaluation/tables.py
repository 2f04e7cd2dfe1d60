"""Result tables from a :class:`~ldm_ood.evaluation.evaluate.Summary`: one grid, three renderings.

- :func:`table1_grid` — paper 000 Table 1 layout: rows far-OOD sets then near-OOD sets, columns
  method × run (VQ-GAN level), AUC × 100. Where the DeLong test of LDM vs LTM on the same run is
  significant, the better of the two cells is marked: ``strong`` (p < 0.001; bold in the paper,
  ``**`` in text) or ``weak`` (p < 0.05; underlined in the paper, ``*`` in text).
- :func:`paper000_table1_grid` — the same per VQ-GAN level (runs ``l<level>``) beside paper 000 Table 1's
  values of that level, with each seed replicate's LTM / LDM and a "not a result yet" flag (:mod:`.seeds`);
- :func:`paper001_table1_grid` — paper 001 Table 1 beside the paper's numbers, with CIs and time;
- :func:`paper001_table3_grid` — paper 001 Table 3's analogue on the haemorrhage set, ordered by time;
- :func:`segmentation_grid` — every segmentation row: ⌈DICE⌉, Dice at the validation threshold,
  pixel AUPRC, image-level AUROC / AUPRC per run × variant × set.
- :func:`localisation_grid` — the anomaly maps' pixel AUROC / AUPRC against a corruption's known
  region (the removed chunk, the stripped skull), LDM beside LTM, per run × set × map filter.
- :func:`detail_grid` — every detection result with its bootstrap CI, AUPRC, FPR@95TPR, DeLong p.

A method whose scores are missing or non-finite (``Summary.warnings``) keeps its Table 1 column:
its cells are marked ``warning`` (``†``; ``n/a†`` where no AUROC could be computed), and
:func:`print_warnings` prints the warnings in red below the tables.

Renderings: :func:`to_rich` (terminal), :func:`to_markdown`; the HTML report renders the same grids.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .seeds import NOT_A_RESULT, replicate_of, seed_stability, unstable_methods
from .summary import METHOD_LABELS, SegmentationResult, Summary, is_far, order_sets, segment_method

MARK_TEXT = {"strong": "**", "weak": "*", "warning": "†", "unstable": "", "": ""}
MARK_STYLE = {"strong": "bold", "weak": "underline", "warning": "bold red", "unstable": "yellow", "": ""}
WARNING_CAPTION = "†: scores missing or non-finite for this method and set (see the warnings); n/a†: none finite."
SHORT_LABELS = {"ldm": "LDM", "ltm": "LTM", "ldm_mse": "MSE", "ldm_lpips": "LPIPS", "ldm_one_sided": "LDM 1-sided"}


@dataclass
class Cell:
    text: str
    mark: str = ""  # "strong" | "weak" | "warning" | ""


@dataclass
class Grid:
    """A table: ``columns`` labels (first = row label), optional spanning ``groups`` over the value
    columns as ``(label, span)``, and ``rows`` as ``(section or None, [cells])`` where a section
    starts a new block (e.g. "Far-OOD")."""

    title: str
    columns: list[str]
    groups: list[tuple[str, int]] = field(default_factory=list)
    rows: list[tuple[str | None, list[Cell]]] = field(default_factory=list)
    caption: str = ""


def fmt(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    """Number or ``n/a``."""
    return "n/a" if v is None else f"{v * scale:.{digits}f}"


def _pretty_set(name: str) -> str:
    return name[4:] if name.startswith("far_") else name


def table1_grid(summary: Summary, methods: list[str] | None = None) -> Grid:
    """Paper 000 Table 1: AUC × 100 per OOD set (rows) × run and method (columns)."""
    methods = methods or _table1_methods(summary)
    warned = _table1_warnings(summary)
    runs = [r for r in summary.runs if any(d.run == r for d in summary.detection) or any(w.run == r for w in warned)]
    grid = Grid(
        title="AUROC × 100, ID test vs each OOD set (paper 000 Table 1 layout)",
        columns=["Set"] + [SHORT_LABELS[m] for _ in runs for m in methods],
        groups=[(r, len(methods)) for r in runs],
        caption=DELONG_CAPTION + " MSE / LPIPS: LDM with one metric only. "
        "n/a: undefined (one class); —: not scored." + (f" {WARNING_CAPTION}" if warned else ""),
    )
    for section, s in _table1_rows(summary, warned):
        grid.rows.append((section, [Cell(_pretty_set(s))] + [c for r in runs for c in _run_cells(summary, r, s, methods)]))
    return grid


DELONG_CAPTION = ("DeLong test LDM vs LTM on the same run: ** / bold p < 0.001, * / underlined p < 0.05 "
                  "(mark on the better of the two).")


def _table1_methods(summary: Summary) -> list[str]:
    return [m for m in ("ltm", "ldm", "ldm_mse", "ldm_lpips", "ldm_one_sided") if m in summary.methods()]


def _table1_warnings(summary: Summary) -> list:
    return [w for w in summary.warnings if w.method in SHORT_LABELS]


def _table1_rows(summary: Summary, warned: list) -> list[tuple[str | None, str]]:
    """``(section or None, set)`` of every Table 1 row: far-OOD sets, then near-OOD, a section at each change."""
    rows, last = [], None
    for s in order_sets([*(d.set for d in summary.detection), *(w.set for w in warned if w.set is not None)]):
        section = "Far-OOD" if is_far(s) else "Near-OOD"
        rows.append((section if section != last else None, s))
        last = section
    return rows


def _run_cells(summary: Summary, run: str, set_name: str, methods: list[str]) -> list[Cell]:
    """AUC × 100 of each of ``methods`` of ``run`` on ``set_name``; the DeLong mark (LDM vs LTM) on the better."""
    dl = summary.delong_for(run, set_name)
    winner = None
    if dl and dl.marker and dl.auc_ldm is not None and dl.auc_ltm is not None:
        winner = "ldm" if dl.auc_ldm >= dl.auc_ltm else "ltm"
    cells = []
    for m in methods:
        d = summary.detection_for(run, m, set_name)
        warning = bool(summary.warnings_for(run, m, set_name))
        if d is None:
            cells.append(Cell("n/a", "warning") if warning else Cell("—"))
            continue
        mark = ("strong" if dl.marker == "**" else "weak") if winner == m and dl else ""
        cells.append(Cell(fmt(d.auroc, 100, 1), "warning" if warning else mark))
    return cells


#: paper 000 Table 1 (AUC × 100; None: N/A, no 2-level LTM): the built-in set -> (the paper's row, {level: (LTM, LDM)}).
#: Near-OOD rows are the same corruptions; far-OOD rows are the paper's dataset closest to the built-in class
#: (the head MR template; a cropped brain MR for the Hippocampal MR crops; abdomen, chest and a real
#: abdominal CT slice for the Decathlon CTs); classes without an analogue have no paper values.
PAPER_000_TABLE1: dict[str, tuple[str, dict[int, tuple[float | None, float]]]] = {
    "far_mr_t1": ("Head MR", {2: (None, 72.0), 3: (0.0, 100.0), 4: (100.0, 100.0)}),
    "far_mr_brain_crop": ("Hippocampal MR", {2: (None, 3.51), 3: (0.0, 100.0), 4: (100.0, 100.0)}),
    "far_ct_abdomen": ("Liver CT", {2: (None, 100.0), 3: (100.0, 100.0), 4: (99.8, 100.0)}),
    "far_ct_chest": ("Lung CT", {2: (None, 100.0), 3: (89.0, 100.0), 4: (100.0, 100.0)}),
    "far_ct_body": ("Pancreas CT", {2: (None, 100.0), 3: (100.0, 100.0), 4: (99.3, 100.0)}),
    "noise_0.01": ("Noise σ = 0.01", {2: (None, 59.7), 3: (48.1, 59.3), 4: (50.7, 54.5)}),
    "noise_0.1": ("Noise σ = 0.1", {2: (None, 100.0), 3: (57.5, 100.0), 4: (44.7, 100.0)}),
    "noise_0.2": ("Noise σ = 0.2", {2: (None, 100.0), 3: (88.3, 100.0), 4: (45.6, 100.0)}),
    "background_0.3": ("BG value = 0.3", {2: (None, 100.0), 3: (100.0, 100.0), 4: (100.0, 100.0)}),
    "background_0.6": ("BG value = 0.6", {2: (None, 100.0), 3: (100.0, 100.0), 4: (100.0, 100.0)}),
    "background_1.0": ("BG value = 1.0", {2: (None, 100.0), 3: (100.0, 100.0), 4: (100.0, 100.0)}),
    "flip_lr": ("Flip L-R", {2: (None, 53.5), 3: (49.4, 61.2), 4: (51.1, 58.6)}),
    "flip_ap": ("Flip A-P", {2: (None, 100.0), 3: (65.6, 100.0), 4: (90.7, 100.0)}),
    "flip_is": ("Flip I-S", {2: (None, 100.0), 3: (69.7, 100.0), 4: (90.5, 100.0)}),
    "chunk_top": ("Chunk top", {2: (None, 46.1), 3: (28.6, 94.6), 4: (97.6, 99.8)}),
    "chunk_middle": ("Chunk middle", {2: (None, 94.4), 3: (22.0, 100.0), 4: (96.2, 100.0)}),
    "skull_stripped": ("Skull stripped", {2: (None, 98.1), 3: (0.0, 100.0), 4: (100.0, 100.0)}),
    "scale_0.01": ("Scaling 1%", {2: (None, 0.317), 3: (0.0, 100.0), 4: (100.0, 100.0)}),
    "scale_0.1": ("Scaling 10%", {2: (None, 100.0), 3: (0.0, 100.0), 4: (100.0, 100.0)}),
}

_LEVEL_RUN = re.compile(r"^l(\d+)$")


def level_runs(summary: Summary) -> dict[int, str]:
    """``{VQ-GAN level: run}`` of the runs named ``l<level>`` (the benchmark's detection runs), by level."""
    found = {int(m[1]): r for r in summary.runs if (m := _LEVEL_RUN.match(r))}
    return dict(sorted(found.items()))


def _paper_cells(set_name: str, level: int) -> list[Cell]:
    values = PAPER_000_TABLE1.get(set_name, ("", {}))[1].get(level)
    if values is None:
        return [Cell("—"), Cell("—")]
    return [Cell("N/A" if v is None else f"{v:g}") for v in values]


def paper000_table1_grid(summary: Summary) -> Grid:
    """Paper 000 Table 1 beside the paper: per VQ-GAN level (runs ``l<level>``) the LTM / LDM pair (DeLong
    marks), LDM with MSE or LPIPS only, each replicate run's LTM / LDM (``l2_seed1``, :mod:`.seeds`) with a
    ``seeds`` column that says "not a result yet" where an AUROC moved beyond a 95 % CI between seeds, and
    the paper's LTM / LDM of the same level. The AUROCs' 95 % CIs are in ``summary.json`` and the detail grid."""
    methods = _table1_methods(summary)
    warned = _table1_warnings(summary)
    levels = level_runs(summary)
    stability = seed_stability(summary)
    replicates = {lv: [(r, p[1]) for r in summary.runs if (p := replicate_of(r)) and p[0] == run]
                  for lv, run in levels.items()}
    columns, groups = ["Set"], []
    for lv, run in levels.items():
        cols = [SHORT_LABELS[m] for m in methods]
        for _, seed in replicates[lv]:
            cols += [f"LTM s{seed}", f"LDM s{seed}"] if "ltm" in methods else [f"LDM s{seed}"]
        cols += (["seeds"] if replicates[lv] else []) + ["paper LTM", "paper LDM"]
        columns += cols
        groups.append((f"l = {lv} ({run})", len(cols)))
    grid = Grid(
        title="Paper 000 Table 1: AUROC × 100 per VQ-GAN level, beside the paper",
        columns=columns, groups=groups,
        caption=DELONG_CAPTION + " MSE / LPIPS: LDM with one metric only. s<k>: the same level trained and scored "
        f"again with seed k; seeds: '{NOT_A_RESULT}' where an AUROC of the named method lies outside the other seed's "
        "95 % bootstrap CI. Paper: Graham et al. 2023 Table 1 at the same level (N/A: no 2-level LTM); far-OOD rows "
        "beside the paper's closest dataset (in brackets), —: no counterpart. 95 % CIs: summary.json."
        + (f" {WARNING_CAPTION}" if warned else ""),
    )
    for section, s in _table1_rows(summary, warned):
        paper_row = PAPER_000_TABLE1.get(s, ("", {}))[0]
        label = _pretty_set(s) + (f" ({paper_row})" if paper_row and is_far(s) else "")
        cells = [Cell(label)]
        for lv, run in levels.items():
            cells += _run_cells(summary, run, s, methods)
            for rep, _ in replicates[lv]:
                cells += _run_cells(summary, rep, s, [m for m in ("ltm", "ldm") if m in methods])
            if replicates[lv]:
                moved = unstable_methods(stability, run, s)
                cells.append(Cell(f"{NOT_A_RESULT} ({', '.join(SHORT_LABELS[m] for m in moved)})" if moved else "ok",
                                  "unstable" if moved else ""))
            cells += _paper_cells(s, lv)
        grid.rows.append((section, cells))
    return grid


def segmentation_grid(summary: Summary) -> Grid:
    """Paper 001 Table 1 style: one row per run × variant × set with masks or image scores."""
    grid = Grid(
        title="Anomaly segmentation (paper 001 Table 1 style)",
        columns=["Run / variant / set", "⌈DICE⌉", "Dice @ val thr", "pixel AUPRC", "image AUROC", "image AUPRC", "masks"],
        caption="⌈DICE⌉: best Dice over all thresholds; Dice @ val thr: at calibration 'residual_threshold'. "
        + ("Voxels pooled over scans." if all(r.pooling == "pooled" for r in summary.segmentation)
           else "Metrics averaged per scan."),
    )
    if any(w.method not in SHORT_LABELS for w in summary.warnings):
        grid.caption += " " + WARNING_CAPTION
    for r in summary.segmentation:
        thr = "n/a" if r.dice_at_threshold is None else f"{r.dice_at_threshold:.3f} (t={r.threshold:.3g})"
        warning = "warning" if summary.warnings_for(r.run, segment_method(r.variant), r.set) else ""
        grid.rows.append((None, [
            Cell(f"{r.run} / ({r.variant}) / {r.set}", warning), Cell(fmt(r.best_dice)), Cell(thr), Cell(fmt(r.pixel_auprc)),
            Cell(fmt(r.image_auroc)), Cell(fmt(r.image_auprc)), Cell(f"{r.n_masks}/{r.n_cases}"),
        ]))
    return grid


#: paper 001 Table 1 (synthetic lesions): system -> (label, ⌈DICE⌉, AUPRC); (d) is in its Table 3 only
PAPER_001_TABLE1: dict[str, tuple[str, float | None, float | None]] = {
    "ae": ("AE (spatial)", 0.165, 0.093), "vae": ("VAE (dense)", 0.533, 0.464), "fanogan": ("f-AnoGAN", 0.492, 0.432),
    "transformer": ("Transformer", 0.768, 0.808), "ensemble": ("Ensemble", 0.895, 0.956),
    "a": ("DDPM (a)", 0.777, 0.810), "b": ("DDPM (b)", 0.908, 0.950), "c": ("DDPM (c)", 0.920, 0.955),
    "d": ("DDIM (d)", None, None),
}


def _with_ci(v: float | None, lo: float | None, hi: float | None) -> str:
    return fmt(v) + ("" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]")


def localisation_grid(summary: Summary) -> Grid:
    """Pixel AUROC / AUPRC of the anomaly maps against the corrupted region: one row per run × set ×
    map filter × domain, LDM beside LTM, each with its 95 % case-bootstrap interval."""
    methods = [m for m in ("ldm", "ltm") if any(r.method == m for r in summary.localisation)]
    grid = Grid(
        title="Anomaly-map localisation: pixel AUROC / AUPRC against the corrupted region",
        columns=["Run / set / map / domain"] + [f"{SHORT_LABELS[m]} {k}" for k in ("AUROC", "AUPRC") for m in methods]
        + ["region share", "scans"],
        caption="Voxels pooled over the set's scans; [95 % case-bootstrap CI]. Region: the voxels the corruption "
        "removed (chunk: the slab's tissue; skull stripped: the tissue outside the brain). Domain head: the "
        "uncorrupted scan's tissue (the air around the head left out); fov: every voxel. Map none: the map as "
        "saved (paper 000's); other filters post-process it. Region share: the AUPRC of a map that knows nothing.",
    )
    keys = list(dict.fromkeys((r.run, r.set, r.map_filter, r.domain) for r in summary.localisation))
    order = {s: i for i, s in enumerate(order_sets(k[1] for k in keys))}
    for run, set_name, flt, domain in sorted(keys, key=lambda k: (list(summary.runs).index(k[0]) if k[0] in summary.runs
                                                                   else 0, order.get(k[1], 0))):
        by = {r.method: r for r in summary.localisation if (r.run, r.set, r.map_filter, r.domain) == (run, set_name, flt, domain)}
        cells = [Cell(f"{run} / {set_name.replace('_', ' ')} / {flt} / {domain}")]
        for metric in ("auroc", "auprc"):
            for m in methods:
                r = by.get(m)
                cells.append(Cell("—" if r is None else _with_ci(getattr(r, f"pixel_{metric}"), getattr(r, f"pixel_{metric}_low"),
                                                                 getattr(r, f"pixel_{metric}_high"))))
        any_r = next(iter(by.values()))
        cells += [Cell(fmt(any_r.region_fraction)), Cell(str(any_r.n_cases))]
        grid.rows.append((None, cells))
    return grid


def paper001_table1_grid(summary: Summary) -> Grid:
    """Paper 001 Table 1 beside the paper: every system on each set with masks, in the paper's row
    order, ⌈DICE⌉ and pixel AUPRC with 95 % case-bootstrap CIs, and the time per 100 slices (Table 3)."""
    grid = Grid(
        title="Paper 001 Table 1: anomaly segmentation of the lesion set, beside the paper",
        columns=["Run / set", "System", "⌈DICE⌉ [95% CI]", "paper", "AUPRC [95% CI]", "paper", "Dice @ val thr",
                 "image AUROC", "s / 100 slices", "+ image score s / 100"],
        caption="CIs resample scans. Paper: Pinaya et al. 2022 Table 1 (its Table 3 orders time per 100 slices: "
                "VAE, f-AnoGAN < 1 s < DDIM (d) 46 s < DDPM (c) 324 s on a GPU; the transformers slower still). "
                "Here: CPU seconds, one run side by side; the segmentation's time, and apart from it the image-level "
                "score's (DDPM rows: mean KL over the whole Markov chain, §4.1; in brackets its AUROC on a subsample "
                "of t of the same draws).",
    )
    order = list(PAPER_001_TABLE1)
    rows = [r for r in summary.segmentation if r.n_masks > 0 and r.set != TABLE3_SET]  # Table 3's set: its own grid
    rows.sort(key=lambda r: (r.run, r.set, order.index(r.variant) if r.variant in order else len(order), r.variant))
    for r in rows:
        label, p_dice, p_auprc = PAPER_001_TABLE1.get(r.variant, (r.variant, None, None))
        grid.rows.append((None, [
            Cell(f"{r.run} / {r.set}"), Cell(label), Cell(_with_ci(r.best_dice, r.best_dice_low, r.best_dice_high)),
            Cell(fmt(p_dice)), Cell(_with_ci(r.pixel_auprc, r.pixel_auprc_low, r.pixel_auprc_high)), Cell(fmt(p_auprc)),
            Cell(fmt(r.dice_at_threshold)),
            Cell(fmt(r.image_auroc) + ("" if r.image_auroc_subsample is None else f" ({fmt(r.image_auroc_subsample)})")),
            Cell(_seconds(r.seconds_per_100)), Cell(_seconds(r.score_seconds_per_100)),
        ]))
    return grid


#: paper 001 Table 3 (real 2D CT lesions, KCH column, seconds per 100 slices on a GPU): system -> (⌈DICE⌉, s)
PAPER_001_TABLE3: dict[tuple[str, int | None], tuple[float, float]] = {
    ("vae", None): (0.353, 1.0), ("fanogan", None): (0.292, 1.0),
    ("d", 8): (0.483, 12.0), ("d", 4): (0.469, 46.0), ("c", 8): (0.473, 81.0), ("c", 4): (0.471, 324.0),
    ("transformer", 8): (0.395, 589.0), ("ensemble", 8): (0.435, 4907.0),
    ("transformer", 4): (0.482, 8047.0), ("ensemble", 4): (0.631, 8000.0),
}

#: the set of the built-in benchmark that plays paper 001 Table 3's CT lesions (synthetic/lesions.py)
TABLE3_SET = "haemorrhage"


def _table3_key(r: SegmentationResult) -> tuple[str, int | None]:
    """Paper 001 Table 3 names the latent models by their downsampling factor, the image-space ones without."""
    return (r.variant, r.downsampling if r.variant in ("c", "d", "a", "b", "transformer", "ensemble") else None)


def paper001_table3_grid(summary: Summary) -> Grid:
    """Paper 001 Table 3 analogue: every system on the haemorrhage set, ordered by time per 100 slices, with
    ⌈DICE⌉ [95 % CI] beside the paper's KCH column and its GPU seconds."""
    grid = Grid(
        title="Paper 001 Table 3 analogue: haemorrhage-like CT lesions, systems ordered by time",
        columns=["System", "f", "⌈DICE⌉ [95% CI]", "paper (KCH)", "AUPRC", "s / 100 slices", "paper s (GPU)"],
        caption="Built-in head-CT slices with one hyperdense (50–90 HU) haematoma each, with mass effect "
                "(synthetic/lesions.py). Paper: Pinaya et al. 2022 Table 3, KCH column, on an NVIDIA Titan RTX "
                "(the ensemble at f = 4: > 8000 s). Here: CPU seconds of the segmentation, one run side by side "
                "(the image-level score apart).",
    )
    rows = [r for r in summary.segmentation if r.set == TABLE3_SET and r.n_masks > 0]
    rows.sort(key=lambda r: (math.inf if r.seconds_per_100 is None else r.seconds_per_100))
    for r in rows:
        label = PAPER_001_TABLE1.get(r.variant, (r.variant,))[0]
        key = _table3_key(r)
        paper = PAPER_001_TABLE3.get(key)
        grid.rows.append((None, [
            Cell(label), Cell("—" if key[1] is None else str(key[1])),
            Cell(_with_ci(r.best_dice, r.best_dice_low, r.best_dice_high)), Cell(fmt(paper[0]) if paper else "—"),
            Cell(fmt(r.pixel_auprc)), Cell(_seconds(r.seconds_per_100)), Cell(f"{paper[1]:g}" if paper else "—"),
        ]))
    return grid


def _seconds(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def detail_grid(summary: Summary) -> Grid:
    """Every detection result: AUROC [bootstrap 95% CI], AUPRC, FPR@95TPR, DeLong p (LDM rows)."""
    grid = Grid(
        title="Detection metrics per run, method and set",
        columns=["Run", "Method", "Set", "n ID / OOD", "AUROC [95% CI]", "AUPRC", "FPR@95TPR", "DeLong p (LDM vs LTM)"],
        caption="CI: stratified percentile bootstrap. AUPRC: average precision with OOD as positive class.",
    )
    order = {s: i for i, s in enumerate(order_sets(d.set for d in summary.detection))}
    for d in sorted(summary.detection, key=lambda d: (list(summary.runs).index(d.run) if d.run in summary.runs else 0,
                                                       list(METHOD_LABELS).index(d.method), order.get(d.set, 0))):
        ci = "" if d.auroc_low is None else f" [{d.auroc_low:.3f}, {d.auroc_high:.3f}]"
        dl = summary.delong_for(d.run, d.set) if d.method == "ldm" else None
        p = "" if dl is None or dl.p_value is None else f"{dl.p_value:.2g}"
        grid.rows.append((None, [
            Cell(d.run), Cell(METHOD_LABELS[d.method]), Cell(d.set), Cell(f"{d.n_id} / {d.n_ood}"),
            Cell(fmt(d.auroc) + ci), Cell(fmt(d.auprc)), Cell(fmt(d.fpr95)),
            Cell(p, "strong" if dl and dl.marker == "**" else "weak" if dl and dl.marker == "*" else ""),
        ]))
    return grid


def to_rich(grid: Grid) -> Table:
    """Rich table; marks as bold (strong) / underline (weak) plus the ``**`` / ``*`` suffix."""
    table = Table(title=grid.title, caption=grid.caption or None, show_lines=False)
    group_of = [label for label, n in grid.groups for _ in range(n)]
    for i, col in enumerate(grid.columns):
        head = col if i == 0 or not group_of else f"{group_of[i - 1]}\n{col}"
        table.add_column(head, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for section, cells in grid.rows:
        if section:
            table.add_section() if table.row_count else None
            table.add_row(f"[bold]{section}[/bold]", *[""] * (len(grid.columns) - 1))
        styled = []
        for c in cells:
            style = MARK_STYLE[c.mark]
            text = c.text + MARK_TEXT[c.mark]
            styled.append(f"[{style}]{text}[/{style}]" if style else text.replace("[", "\\["))
        table.add_row(*styled)
    return table


def to_markdown(grid: Grid) -> str:
    """GitHub markdown table; group labels are folded into the column headers."""
    group_of = [label for label, n in grid.groups for _ in range(n)]
    heads = [c if i == 0 or not group_of else f"{group_of[i - 1]} {c}" for i, c in enumerate(grid.columns)]
    lines = [f"**{grid.title}**", "", "| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * len(heads)) + "|"]
    for section, cells in grid.rows:
        if section:
            lines.append("| " + " | ".join([f"*{section}*"] + [""] * (len(heads) - 1)) + " |")
        lines.append("| " + " | ".join(c.text + MARK_TEXT[c.mark] for c in cells) + " |")
    if grid.caption:
        lines += ["", grid.caption]
    return "\n".join(lines)


def print_warnings(summary: Summary, console: Console | None = None) -> None:
    """Print the warnings (default: on stderr): red where a method has no finite score on a set,
    yellow where only some scans were left out. Nothing when there are none."""
    if not summary.warnings:
        return
    console = console or Console(stderr=True)
    console.print(f"[bold red]WARNING: {len(summary.warnings)} method/set result(s) with missing or non-finite "
                  "scores (marked † in the tables):[/bold red]", highlight=False)
    for w in summary.warnings:
        colour = "yellow" if w.n_finite else "red"
        console.print(f"[{colour}]  ! {escape(w.message)}[/{colour}]", highlight=False)


def print_summary(summary: Summary, console: Console | None = None, warn_console: Console | None = None) -> None:
    """Print Table 1, the segmentation table and the notes; then the warnings on ``warn_console``
    (default: ``console`` when given, else stderr)."""
    given = console is not None
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped / logged: don't squeeze the tables into 80 columns
            console = Console(width=160)
    if summary.detection or any(w.method in SHORT_LABELS for w in summary.warnings):
        console.print(to_rich(paper000_table1_grid(summary) if level_runs(summary) else table1_grid(summary)))
    if summary.segmentation:
        console.print(to_rich(segmentation_grid(summary)))
        if any(r.n_masks for r in summary.segmentation):
            console.print(to_rich(paper001_table1_grid(summary)))
        if any(r.set == TABLE3_SET and r.n_masks for r in summary.segmentation):
            console.print(to_rich(paper001_table3_grid(summary)))
    if summary.localisation:
        console.print(to_rich(localisation_grid(summary)))
    if not summary.detection and not summary.segmentation and not summary.warnings:
        console.print("[yellow]no score files found: nothing to evaluate[/yellow]")
    for note in summary.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]", highlight=False)
    print_warnings(summary, warn_console or (console if given else None))
