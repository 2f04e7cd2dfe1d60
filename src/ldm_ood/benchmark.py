"""The one-command benchmark and the demo: data → train → calibrate → score → segment → evaluate → report.

Reproduces the papers' tables on the built-in synthetic benchmark (or the same layout of your own
data): paper 000 Table 1 (LDM vs LTM per VQ-GAN level beside the paper's values, every near- and
far-OOD set, DeLong tests; the ``cpu`` preset trains l = 2 twice, seeds 0 and 1, and flags the sets
whose AUROC moves beyond a 95 % CI between them: :mod:`.evaluation.seeds`)
and paper 001 Tables 1/3 (segmentation variants a–d on 2D sprite lesions).

The command fails (:class:`~ldm_ood.errors.IncompleteResultsError`, exit code 1) after the report is
written when a method it ran has no usable result (:func:`check_results`): a ``Summary.warnings`` row
(missing or non-finite scores), an OOD method without a finite AUROC, or a segmentation variant
whose ⌈DICE⌉, pixel AUPRC or image AUROC is not finite.

Every stage is resumable: a finished stage (its outputs exist) is skipped, training resumes from
its last completed epoch, scoring from its last finished scan. Wall-clock seconds of every stage are
kept in ``<out>/timings.json`` and shown in the report.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, get_args

from rich.console import Console

from .config import PAPER_CODEBOOK_SIZE, Config, Variant, deep_merge, load_config
from .config.stages import CALIBRATIONS
from .errors import IncompleteResultsError
from .evaluation.seeds import replicate_run_name
from .evaluation.summary import ID_SET, METHOD_LABELS, Summary
from .methods.registry import METHODS
from .runs import RunDir

console = Console(stderr=True)


@dataclass
class BenchmarkPlan:
    """What to run; ``overrides_3d`` / ``overrides_2d`` are config overrides on top of the preset."""

    preset: str
    levels: list[int]
    variants: list[str] = field(default_factory=lambda: list(get_args(Variant)))
    overrides_3d: dict[str, Any] = field(default_factory=dict)
    overrides_2d: dict[str, Any] = field(default_factory=dict)
    ltm: bool = True
    segmentation: bool = True
    #: paper 001's comparison systems run beside the variants (every registered segmentation method but ``segment``)
    baselines: list[str] = field(default_factory=lambda: segmentation_baselines())
    #: paper 001 Table 3: first-stage levels of further 2D runs (``seg2d_f<2**level>``) that segment with variants
    #: c and d only, beside the ``seg2d`` run (f = 2**levels of the 2D preset, 4)
    table3_levels: list[int] = field(default_factory=list)
    #: ``{level: [seed, ...]}``: the detection run of that level trained and scored again with each seed
    #: (run ``l<level>_seed<k>``, beside ``l<level>`` at the preset's seeds): the seed-stability check
    seeds: dict[int, list[int]] = field(default_factory=dict)


#: paper 000 Table 1's levels per preset. ``cpu`` (64³) compares l = 2 (16³ latent) and l = 3 (8³) and leaves
#: out l = 4: its 4³ latent reaches 1³ at the UNet's third level (``latent_multiple`` = 4 for 3 levels) and
#: its first stage would train on 2³-latent crops of the 32³ patches; ``--level 4`` still runs it.
DEFAULT_LEVELS = {"tiny": [2], "demo": [2], "cpu": [2, 3], "cpu-quick": [2], "paper": [2, 3, 4]}

#: the levels trained again with other seeds (:attr:`BenchmarkPlan.seeds`); the quick and demo runs train one seed
DEFAULT_SEEDS = {"cpu": {2: [1]}}

#: ``ldm-ood benchmark --quick``: the preset at the earlier, smaller sizes (same tables, a fraction of the time)
QUICK_PRESETS = {"cpu": "cpu-quick"}

#: paper 001 Table 3's second downsampling factor (f = 8: levels 3) where the benchmark trains it; the demo skips it
TABLE3_LEVELS = {"cpu": [3], "cpu-quick": [3], "paper": [3]}

#: the variants paper 001 Table 3 compares across downsampling factors
TABLE3_VARIANTS = ["c", "d"]


#: baselines left out of a preset's plan: the demo skips the 8-member ensemble (minutes of training on CPU)
SKIPPED_BASELINES = {"demo": ("ensemble",)}


def default_plan(preset: str, levels: list[int] | None = None) -> BenchmarkPlan:
    baselines = [b for b in segmentation_baselines() if b not in SKIPPED_BASELINES.get(preset, ())]
    levels = list(levels or DEFAULT_LEVELS.get(preset, [2]))
    seeds = {lv: list(s) for lv, s in DEFAULT_SEEDS.get(preset, {}).items() if lv in levels}
    return BenchmarkPlan(preset=preset, levels=levels, baselines=baselines,
                         table3_levels=list(TABLE3_LEVELS.get(preset, [])), seeds=seeds)


def detection_runs(plan: BenchmarkPlan) -> list[tuple[str, int, int | None]]:
    """``(run name, level, seed or None for the preset's seeds)`` of every detection run of ``plan``: one per level,
    then the seed replicates (so the level comparison is complete first)."""
    out: list[tuple[str, int, int | None]] = [(f"l{level}", level, None) for level in plan.levels]
    for level in plan.levels:
        out += [(replicate_run_name(f"l{level}", seed), level, seed) for seed in plan.seeds.get(level, [])]
    return out


def seed_overrides(seed: int) -> dict[str, Any]:
    """Config overrides that train every stage of a detection run (weights, data order, noise) and score it with ``seed``."""
    return {"first_stage": {"optim": {"seed": seed}}, "ldm": {"optim": {"seed": seed}},
            "transformer": {"optim": {"seed": seed}}, "score": {"seed": seed}}


class Timings:
    """Wall-clock seconds per stage, persisted to ``timings.json`` after each stage."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        yield
        self.data[name] = round(self.data.get(name, 0.0) + time.perf_counter() - t0, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2))


def _run_config(plan: BenchmarkPlan, preset: str, manifest: Path, overrides: dict[str, Any], level: int | None) -> Config:
    over: dict[str, Any] = {"data": {"manifest": str(manifest)}}
    if level is not None:
        base = load_config(preset=preset)
        codebook = PAPER_CODEBOOK_SIZE.get(level, base.first_stage.num_embeddings) if preset == "paper" else base.first_stage.num_embeddings
        over["first_stage"] = {"levels": level, "num_embeddings": codebook}
    return load_config(preset=preset, overrides=deep_merge(over, overrides))


def _train_all(run: RunDir, stages: list[str], timings: Timings, tag: str) -> None:
    from .training.api import train

    for stage in stages:
        if run.is_trained(stage):
            continue
        with timings.stage(f"{tag}/train_{stage}"):
            train(run.root, stage, resume=True)


def _ood_run(run: RunDir, plan: BenchmarkPlan, timings: Timings, tag: str) -> None:
    from .methods.ldm.pipeline import calibrate_ldm, score_ldm

    stages = ["first_stage", "ldm"] + (["transformer"] if plan.ltm else [])
    _train_all(run, stages, timings, tag)
    if not run.ood_calibration_path.exists():
        with timings.stage(f"{tag}/calibrate_ldm"):
            calibrate_ldm(run.root)
    with timings.stage(f"{tag}/score_ldm"):
        score_ldm(run.root)
    if plan.ltm:
        from .methods.ltm.pipeline import calibrate_ltm, score_ltm

        if not run.ltm_calibration_path.exists():
            with timings.stage(f"{tag}/calibrate_ltm"):
                calibrate_ltm(run.root)
        with timings.stage(f"{tag}/score_ltm"):
            score_ltm(run.root)


def segmentation_baselines() -> list[str]:
    """Paper 001's comparison systems: the registered segmentation methods other than its own."""
    return [m.name for m in METHODS.values() if m.task == "segmentation" and m.name != "segment"]


def _segmentation_run(run: RunDir, variants: Sequence[str], baselines: Sequence[str], timings: Timings, tag: str) -> None:
    from .methods.segment.pipeline import calibrate_segment, segment

    _train_all(run, ["first_stage", "ldm"], timings, tag)
    if not run.segment_calibration_path.exists():  # every variant at once: one calibration id for all their rows
        with timings.stage(f"{tag}/calibrate_segment"):
            calibrate_segment(run.root, variants=list(variants))
    for variant in variants:
        with timings.stage(f"{tag}/segment_{variant}"):
            segment(run.root, variant=variant)
    for name in baselines:  # paper 001 Table 1's other rows, on the same run and slices
        _train_all(run, list(CALIBRATIONS[name].stages), timings, tag)  # trained stages are skipped
        if not run.calibration_json_path(name).exists():
            with timings.stage(f"{tag}/calibrate_{name}"):
                METHODS[name].calibrate()(run.root)
        with timings.stage(f"{tag}/segment_{name}"):
            METHODS[name].score()(run.root)


def result_problems(
    summary: Summary,
    detection: Mapping[str, Sequence[str]] | None = None,
    segmentation: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """What makes the results unusable, one line each (empty: all fine).

    Args:
        summary: the evaluation; each of its ``warnings`` (an expected method with missing or
            non-finite scores on a set) is a problem.
        detection: ``{run: methods it ran}`` (e.g. ``{"l2": ["ldm", "ltm"]}``): each needs a finite
            AUROC on every OOD set it has a result for, and at least one.
        segmentation: ``{run: variants it ran}``: each needs results, and on every set with masks
            a finite ⌈DICE⌉ and pixel AUPRC, on every OOD set a finite image AUROC.
    """
    problems = [w.message for w in summary.warnings]
    for run, methods in (detection or {}).items():
        for method in methods:
            rows = [d for d in summary.detection if (d.run, d.method) == (run, method)]
            if not rows:
                problems.append(f"{run}/{method}: no {METHOD_LABELS.get(method, method)} result on any OOD set")
            problems += [f"{run}/{method}: AUROC on set {d.set!r} is not finite" for d in rows if d.auroc is None]
    for run, variants in (segmentation or {}).items():
        for variant in variants:
            rows = [r for r in summary.segmentation if (r.run, r.variant) == (run, variant)]
            if not rows:
                problems.append(f"{run}/({variant}): no segmentation results")
            for r in rows:
                bad = [label for label, v, needed in (
                    ("⌈DICE⌉", r.best_dice, r.n_masks > 0), ("pixel AUPRC", r.pixel_auprc, r.n_masks > 0),
                    ("image AUROC", r.image_auroc, r.set != ID_SET and r.n_cases > 0)) if needed and v is None]
                if bad:
                    problems.append(f"{run}/({variant})/{r.set}: {', '.join(bad)} not finite")
    return list(dict.fromkeys(problems))


def check_results(
    summary: Summary,
    detection: Mapping[str, Sequence[str]] | None = None,
    segmentation: Mapping[str, Sequence[str]] | None = None,
    what: str = "benchmark",
    report: str | Path | None = None,
) -> None:
    """Raise :class:`IncompleteResultsError` listing :func:`result_problems` when there are any."""
    problems = result_problems(summary, detection, segmentation)
    if problems:
        where = f"; see the report {report}" if report is not None else ""
        raise IncompleteResultsError(
            f"{what}: {len(problems)} result(s) missing or not finite{where} (a model producing NaN: retrain it, "
            "then recalibrate and rescore):\n" + "\n".join(f"  {p}" for p in problems)
        )


def expected_results(plan: BenchmarkPlan) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(detection, segmentation)`` of :func:`result_problems` for the runs of ``plan``."""
    detection = {name: ["ldm"] + (["ltm"] if plan.ltm else []) for name, _, _ in detection_runs(plan)}
    segmentation = {"seg2d": [*plan.variants, *plan.baselines]}
    segmentation.update({table3_run_name(level): list(TABLE3_VARIANTS) for level in plan.table3_levels})
    return detection, (segmentation if plan.segmentation else {})


def table3_run_name(level: int) -> str:
    """The 2D run of paper 001 Table 3 at first-stage ``level``: ``seg2d_f8`` for level 3."""
    return f"seg2d_f{2 ** level}"


def run_plan(plan: BenchmarkPlan, out: str | Path) -> dict[str, Any]:
    """Run every stage of ``plan`` under ``out``; returns the evaluation summary. Raises
    :class:`IncompleteResultsError` after writing the report when a method has no usable result."""
    from .evaluation.evaluate import evaluate
    from .report.html import build_report
    from .synthetic.cohort import synth

    out = Path(out)
    timings = Timings(out / "timings.json")
    data_dir = out / "data"
    manifest_3d, manifest_2d = data_dir / "manifest.csv", data_dir / "manifest_2d.csv"
    if not manifest_3d.exists():
        with timings.stage("synth"):
            synth(plan.preset, data_dir)

    runs: dict[str, Path] = {}
    for name, level, seed in detection_runs(plan):
        run = RunDir(out / "runs" / name)
        over = plan.overrides_3d if seed is None else deep_merge(plan.overrides_3d, seed_overrides(seed))
        run.config_or(_run_config(plan, plan.preset, manifest_3d, over, level))
        _ood_run(run, plan, timings, name)
        runs[name] = run.root
    if plan.segmentation:
        run = RunDir(out / "runs" / "seg2d")
        run.config_or(_run_config(plan, f"{plan.preset}-2d", manifest_2d, plan.overrides_2d, None))
        _segmentation_run(run, plan.variants, plan.baselines, timings, "seg2d")
        runs["seg2d"] = run.root
        for level in plan.table3_levels:  # paper 001 Table 3: the same with another downsampling factor
            name = table3_run_name(level)
            run = RunDir(out / "runs" / name)
            over = deep_merge(plan.overrides_2d, {"first_stage": {"levels": level}})
            run.config_or(_run_config(plan, f"{plan.preset}-2d", manifest_2d, over, None))
            _segmentation_run(run, TABLE3_VARIANTS, [], timings, name)
            runs[name] = run.root

    with timings.stage("evaluate"):
        summary = evaluate(runs, out=out / "summary.json")
    with timings.stage("report"):
        path = build_report(runs, summary, out / "report" / "index.html", benchmarks_dir=out)
    console.print(f"[bold green]report:[/] {path}")
    check_results(summary, *expected_results(plan), what="demo" if plan.preset == "demo" else "benchmark", report=path)
    return summary


#: ``ldm-ood benchmark --part``: both papers, paper 000's detection runs only, or paper 001's 2D runs only
PARTS = ("all", "detection", "segmentation")


def run_benchmark(preset: str, out: str | Path, levels: list[int] | None = None, part: str = "all",
                  quick: bool = False) -> dict[str, Any]:
    """``ldm-ood benchmark``: the papers' tables on the built-in benchmark at ``preset`` sizes (``part``: :data:`PARTS`;
    ``quick``: the preset's :data:`QUICK_PRESETS` variant, the same tables at smaller sizes)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    if quick:
        if preset not in QUICK_PRESETS:
            raise ValueError(f"--quick: preset {preset!r} has no quick variant (presets with one: {', '.join(QUICK_PRESETS)})")
        preset = QUICK_PRESETS[preset]
    plan = default_plan(preset, levels)
    if part == "segmentation":
        plan.levels, plan.ltm, plan.seeds = [], False, {}
    elif part == "detection":
        plan.segmentation = False
    return run_plan(plan, out)


def run_demo(out: str | Path) -> dict[str, Any]:
    """``make demo``: the benchmark at the ``demo`` preset (32³ cohort, one level, short training)."""
    return run_plan(default_plan("demo"), out)
