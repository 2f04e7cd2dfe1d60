"""Paper 000 Table 1 per VQ-GAN level beside the paper, DeLong marks, and the seed-stability flag,
on hand-made summaries."""

from __future__ import annotations

from ldm_ood.evaluation.seeds import NOT_A_RESULT, is_stable, replicate_of, replicate_run_name, seed_stability
from ldm_ood.evaluation.summary import DeLongResultRow, DetectionResult, Summary
from ldm_ood.evaluation.tables import PAPER_000_TABLE1, level_runs, paper000_table1_grid, to_markdown


def _det(run, method, set_name, auroc, low, high):
    return DetectionResult(run, method, set_name, "far" if set_name.startswith("far_") else "near", 47, 47,
                           auroc, low, high, None, None)


def _dl(run, set_name, ldm, ltm, p):
    marker = "**" if p < 0.001 else "*" if p < 0.05 else ""
    return DeLongResultRow(run, set_name, 94, ldm, ltm, None, None, p, marker)


def _summary() -> Summary:
    s = Summary(runs={"l2": "a", "l3": "b", "l2_seed1": "c"})
    rows = [  # (run, method, set, auroc, ci low, ci high)
        ("l2", "ltm", "far_mr_t1", 0.40, 0.30, 0.50), ("l2", "ldm", "far_mr_t1", 0.95, 0.90, 0.99),
        ("l2", "ltm", "noise_0.1", 0.60, 0.50, 0.70), ("l2", "ldm", "noise_0.1", 0.62, 0.52, 0.72),
        ("l3", "ltm", "far_mr_t1", 0.90, 0.85, 0.95), ("l3", "ldm", "far_mr_t1", 0.80, 0.70, 0.90),
        ("l3", "ltm", "noise_0.1", 0.55, 0.45, 0.65), ("l3", "ldm", "noise_0.1", 0.57, 0.47, 0.67),
        # seed 1: far_mr_t1 within both CIs; noise_0.1's LDM 0.80 lies outside seed 0's [0.52, 0.72]
        ("l2_seed1", "ltm", "far_mr_t1", 0.45, 0.35, 0.55), ("l2_seed1", "ldm", "far_mr_t1", 0.93, 0.88, 0.98),
        ("l2_seed1", "ltm", "noise_0.1", 0.61, 0.51, 0.71), ("l2_seed1", "ldm", "noise_0.1", 0.80, 0.70, 0.90),
    ]
    s.detection = [_det(*r) for r in rows]
    s.delong = [_dl("l2", "far_mr_t1", 0.95, 0.40, 1e-5), _dl("l2", "noise_0.1", 0.62, 0.60, 0.6),
                _dl("l3", "far_mr_t1", 0.80, 0.90, 0.01), _dl("l3", "noise_0.1", 0.57, 0.55, 0.8)]
    return s


def test_replicate_names_round_trip():
    assert replicate_run_name("l2", 1) == "l2_seed1" and replicate_of("l2_seed1") == ("l2", 1)
    assert replicate_of("l2") is None and replicate_of("seg2d_f8") is None


def test_stability_is_each_auroc_inside_the_other_ci():
    a = _det("l2", "ldm", "x", 0.62, 0.52, 0.72)
    assert is_stable(a, _det("l2_seed1", "ldm", "x", 0.70, 0.61, 0.79))  # 0.70 in [.52, .72], 0.62 in [.61, .79]
    assert not is_stable(a, _det("l2_seed1", "ldm", "x", 0.70, 0.65, 0.79))  # 0.62 below the replicate's CI
    assert not is_stable(a, _det("l2_seed1", "ldm", "x", 0.80, 0.70, 0.90))  # 0.80 above the base's CI
    assert not is_stable(a, _det("l2_seed1", "ldm", "x", None, None, None))  # no AUROC: no result either


def test_seed_stability_rows_pair_each_method_and_set():
    rows = seed_stability(_summary())
    assert {(r.method, r.set): r.stable for r in rows} == {
        ("ltm", "far_mr_t1"): True, ("ldm", "far_mr_t1"): True, ("ltm", "noise_0.1"): True, ("ldm", "noise_0.1"): False}
    r = next(r for r in rows if (r.method, r.set) == ("ldm", "noise_0.1"))
    assert (r.base, r.replicate, r.seed, r.auroc, r.auroc_replicate) == ("l2", "l2_seed1", 1, 0.62, 0.80)
    # kept in summary.json
    s = _summary()
    s.seed_stability = rows
    again = Summary.from_dict(s.to_dict())
    assert [(r.method, r.set, r.stable) for r in again.seed_stability] == [(r.method, r.set, r.stable) for r in rows]


def test_level_table_columns_marks_paper_values_and_seed_flag():
    s = _summary()
    assert level_runs(s) == {2: "l2", 3: "l3"}
    g = paper000_table1_grid(s)
    assert g.groups == [("l = 2 (l2)", 7), ("l = 3 (l3)", 4)]
    assert g.columns == ["Set", "LTM", "LDM", "LTM s1", "LDM s1", "seeds", "paper LTM", "paper LDM",
                         "LTM", "LDM", "paper LTM", "paper LDM"]
    (far_section, far), (near_section, near) = g.rows
    assert (far_section, near_section) == ("Far-OOD", "Near-OOD")
    assert [c.text for c in far] == ["mr_t1 (Head MR)", "40.0", "95.0", "45.0", "93.0", "ok", "N/A", "72",
                                     "90.0", "80.0", "0", "100"]
    # DeLong: l2 LDM better at p < 0.001 (strong on LDM), l3 LTM better at p < 0.05 (weak on LTM)
    assert [c.mark for c in far[1:3]] == ["", "strong"] and [c.mark for c in far[8:10]] == ["weak", ""]
    assert [c.text for c in near] == ["noise_0.1", "60.0", "62.0", "61.0", "80.0", f"{NOT_A_RESULT} (LDM)", "N/A", "100",
                                      "55.0", "57.0", "57.5", "100"]
    assert near[5].mark == "unstable" and all(c.mark == "" for c in near[1:5] + near[8:10])
    md = to_markdown(g)
    assert "l = 2 (l2) LDM" in md and "95.0**" in md and "90.0*" in md


def test_paper_values_are_table_1_of_paper_000():
    # spot checks against Graham et al. 2023 Table 1 (AUC × 100): (LTM, LDM) per level
    assert PAPER_000_TABLE1["scale_0.01"][1] == {2: (None, 0.317), 3: (0.0, 100.0), 4: (100.0, 100.0)}
    assert PAPER_000_TABLE1["chunk_top"][1][4] == (97.6, 99.8)
    assert PAPER_000_TABLE1["far_mr_brain_crop"] == ("Hippocampal MR", {2: (None, 3.51), 3: (0.0, 100.0), 4: (100.0, 100.0)})
    assert len([k for k in PAPER_000_TABLE1 if not k.startswith("far_")]) == 14


def test_without_replicate_no_seed_columns():
    s = _summary()
    s.runs.pop("l2_seed1")
    s.detection = [d for d in s.detection if d.run != "l2_seed1"]
    g = paper000_table1_grid(s)
    assert g.columns[1:5] == ["LTM", "LDM", "paper LTM", "paper LDM"] and seed_stability(s) == []


def test_ldm_only_run_has_ldm_columns():
    s = Summary(runs={"l4": "x"}, detection=[_det("l4", "ldm", "flip_lr", 0.5, 0.4, 0.6)])
    g = paper000_table1_grid(s)
    assert g.columns == ["Set", "LDM", "paper LTM", "paper LDM"]
    assert [c.text for c in g.rows[0][1]] == ["flip_lr", "50.0", "51.1", "58.6"]
