"""``ldm-ood`` command line: each command parses its options and calls ONE library function.

Heavy imports (torch, MONAI) happen inside the commands so ``ldm-ood --help`` is instant.
Library errors (bad input, bad config, missing model, a batch with failures) are printed as one
clear message and exit non-zero; results already written stay on disk.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Callable, Optional, get_args

import typer
from rich.console import Console

from .config.presets import PRESETS
from .config.schema import Variant as SegmentVariant
from .config.stages import STAGES, StageInfo
from .methods.registry import METHODS

PRESET_NAMES = " | ".join(PRESETS)  # every preset shipped in ldm_ood/config/presets/

app = typer.Typer(
    name="ldm-ood",
    help="Unsupervised OOD detection and anomaly segmentation of 2D/3D medical images with latent diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a first stage, the latent DDPM or the LTM of a run.", no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console(stderr=True)


#: ``--method`` choices: every method of ``methods.registry``
Method = Enum("Method", {name: name for name in METHODS}, type=str)


#: ``ldm-ood benchmark --part`` choices (``benchmark.PARTS``)
BenchmarkPart = Enum("BenchmarkPart", {p: p for p in ("all", "detection", "segmentation")}, type=str)


#: ``serve --method`` choices: the methods that score one scan at a time (a ``prepare_fn`` in the registry)
ServedMethod = Enum("ServedMethod", {m.name: m.name for m in METHODS.values() if m.prepare_fn}, type=str)


#: ``--variant`` choices: the variants of ``config.Variant``
Variant = Enum("Variant", {v: v for v in get_args(SegmentVariant)}, type=str)


def _friendly(fn: Callable) -> Callable:
    """Turn the library's user-facing errors into a one-paragraph message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape

        from . import errors

        expected = (errors.ConfigError, errors.InputError, errors.BatchError, errors.NonFiniteError,
                    errors.IncompleteResultsError, errors.OutputError, errors.IntegrityError,
                    errors.StaleArtifactError, errors.RunLockedError, errors.LPIPSWeightsError, errors.BundleError,
                    FileNotFoundError)
        try:
            return fn(*args, **kwargs)
        except expected as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper


RunOpt = typer.Option(
    ..., "--run", "--run-dir", help="Run directory (models, calibration, scores live here). Under torchrun use --run-dir."
)
DataOpt = typer.Option(None, "--data", help="Manifest CSV or image folder (default: the run config's data.manifest).")
ConfigOpt = typer.Option(
    None, "--config",
    help="YAML config. New run: its fields override the preset. Existing run: exactly the fields it names change "
    "in the run's config.yaml; finished stages and calibrations made with an old value are named.",
)
PresetOpt = typer.Option(
    None, "--preset",
    help=f"New run: {PRESET_NAMES}. An existing run keeps its own.",
)
SetsOpt = typer.Option(None, "--set", help="Only these sets (repeatable). Default: every test set.")
ForceOpt = typer.Option(False, "--force", help="Use a model or calibration made before a network it depends on was "
                        "retrained (a warning instead of an error), and add rows to score files of another calibration.")
InputOpt = typer.Option(None, "--input", help="Folder of scans to score (folder-in/folder-out mode): its NIfTI/PNG/NPY "
                        "files and every DICOM series in its tree (one case per SeriesInstanceUID).")
ScoringRunOpt = typer.Option(None, "--run", "--run-dir", help="Run directory (models, calibration, scores live here).")
ModelOpt = typer.Option(None, "--model", help="Model bundle (`ldm-ood export`) instead of --run: scores a folder "
                        "(--input/--output); nothing is written into the bundle.")
OutputOpt = typer.Option(None, "--output", help="Output folder of the folder mode: <case>.txt + <case>.nii.gz + <case>.json.")
ReportOpt = typer.Option(False, "--report", help="Folder mode: also write a QC page per scan (<case>.html) and one for "
                         "the folder (index.html), also when some scans failed.")


def _scored(score: Callable[[], object], report: bool, output_dir: Optional[Path], run: Path) -> None:
    """Run ``score``; with ``--report`` write the output folder's QC pages after it, also when some scans failed."""
    from .errors import BatchError

    if report and output_dir is None:
        raise typer.BadParameter("--report needs --input and --output (folder mode)", param_hint="--report")
    try:
        console.print(score())
    except BatchError:
        if report:
            _qc_reports(output_dir, run)
        raise
    if report:
        _qc_reports(output_dir, run)


def _qc_reports(output_dir: Path, run: Path) -> None:
    from .report.qc import write_qc_reports

    pages = write_qc_reports(output_dir, run)
    not_drawn = f"; not drawn: {', '.join(pages.failed)}" if pages.failed else ""
    console.print(f"QC report: {pages.index} ({len(pages.pages)} scan pages{not_drawn})")


# ----------------------------------------------------------------------------- data


@app.command()
@_friendly
def synth(
    preset: str = typer.Option("cpu", help=f"Size preset (its synth section): {PRESET_NAMES}."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    seed: Optional[int] = typer.Option(None, help="Seed (default: the preset's)."),
) -> None:
    """Generate the built-in synthetic head-CT benchmark (ID, 14 near-OOD + smoothed and fov_emptied, far-OOD, 2D sprites)."""
    from .synthetic.cohort import synth as run

    result = run(preset, out, seed=seed)
    console.print(f"wrote {result}")


@app.command()
@_friendly
def corrupt(
    kind: str = typer.Option(..., "--kind", help="Corruption (paper 000 §3.1), e.g. noise_0.1, flip_lr, chunk_top, smoothed, fov_emptied."),
    input_dir: Path = typer.Option(..., "--in", help="Folder of preprocessed scans."),
    output_dir: Path = typer.Option(..., "--out", help="Output folder."),
    seed: int = typer.Option(0, help="Seed of the random corruptions."),
) -> None:
    """Apply one of paper 000's near-OOD corruptions to every scan of a folder."""
    from .data.corruptions import corrupt_folder

    console.print(corrupt_folder(kind, input_dir, output_dir, seed=seed))


@app.command("config")
@_friendly
def show_config(
    preset: Optional[str] = typer.Option(
        None, help=f"Preset to print: {PRESET_NAMES} (default: cpu; with --config: the YAML's own preset: / extends:)."
    ),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML whose fields override the preset."),
) -> None:
    """Print the full configuration of a preset (and YAML overrides) as YAML."""
    import yaml

    from .config import load_config

    cfg = load_config(config, preset=preset if (preset or config) else "cpu")
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# ----------------------------------------------------------------------------- training


ResumeOpt = typer.Option(
    False, help="Continue after the last completed epoch (also of a retraining in <stage>.staging/). Without it a "
    "finished stage is retrained in <stage>.staging/; the old model stays usable until the new one replaces it.",
)


def _train(stage: str, run: Path, config: Optional[Path], preset: Optional[str], data: Optional[Path], resume: bool):
    from .training.api import train

    result = train(run, stage, config_path=config, preset=preset, manifest=data, resume=resume)
    console.print(result)


def _train_command(stage: StageInfo) -> Callable:
    def command(
        run: Path = RunOpt, config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
        data: Optional[Path] = DataOpt, resume: bool = ResumeOpt,
    ) -> None:
        _train(stage.name, run, config, preset, data, resume)

    command.__doc__ = stage.description
    command.__name__ = f"train_{stage.name}"
    return _friendly(command)


for _stage in STAGES.values():  # one `ldm-ood train <command>` per trained stage of config.stages
    train_app.command(_stage.command)(_train_command(_stage))


# ----------------------------------------------------------------------------- inference


def _methods_help(task: str | None = None) -> str:
    return "; ".join(f"{m.name}: {m.description}" for m in METHODS.values() if task in (None, m.task)) + "."


def _run_or_model(run: Optional[Path], model: Optional[Path], method: str, input_dir: Optional[Path],
                  output_dir: Optional[Path]) -> Path:
    """The folder scoring reads: ``--run``, or the verified ``--model`` bundle (folder mode only)."""
    if (run is None) == (model is None):
        raise typer.BadParameter("give exactly one of --run (a run directory) and --model (a model bundle)")
    if (input_dir is None) != (output_dir is None):
        raise typer.BadParameter("--input and --output go together")
    if model is None:
        return run
    if input_dir is None:
        raise typer.BadParameter("--model scores a folder: give --input DIR --output OUT (a bundle is read-only; "
                                 "score a manifest's sets with --run)")
    from .bundle import open_bundle

    return open_bundle(model).root_for(method)


@app.command()
@_friendly
def calibrate(
    run: Path = RunOpt,
    method: Method = typer.Option(Method.ldm, help=_methods_help()),
    data: Optional[Path] = DataOpt,
    force: bool = ForceOpt,
) -> None:
    """Calibrate on the in-distribution validation split (z-score stats, thresholds, operating point)."""
    console.print(METHODS[method.value].calibrate()(run, manifest=data, force=force))


@app.command()
@_friendly
def score(
    run: Optional[Path] = ScoringRunOpt,
    model: Optional[Path] = ModelOpt,
    method: Method = typer.Option(Method.ldm, help=_methods_help("detection")),
    data: Optional[Path] = DataOpt,
    sets: Optional[list[str]] = SetsOpt,
    input_dir: Optional[Path] = InputOpt,
    output_dir: Optional[Path] = OutputOpt,
    sequential: bool = typer.Option(False, help="LDM: one chain at a time, as the reference implementation."),
    force: bool = ForceOpt,
    report: bool = ReportOpt,
) -> None:
    """Score scans: OOD score, percentile, flag and an anomaly map on the input's grid."""
    info = METHODS[method.value]
    if info.task != "detection":
        raise typer.BadParameter(f"{info.name} is a segmentation method: use `ldm-ood segment`", param_hint="--method")
    root = _run_or_model(run, model, info.name, input_dir, output_dir)
    options = {"sequential": True} if sequential else {}
    for name in set(options) - set(info.score_options):
        raise typer.BadParameter(f"--{name} is not an option of method {info.name}", param_hint=f"--{name}")
    _scored(lambda: info.score()(root, manifest=data, sets=sets, input_dir=input_dir, output_dir=output_dir, force=force,
                                 **options), report, output_dir, root)


@app.command()
@_friendly
def segment(
    run: Optional[Path] = ScoringRunOpt,
    model: Optional[Path] = ModelOpt,
    method: Method = typer.Option(Method.segment, help=_methods_help("segmentation")),
    variant: Variant = typer.Option(Variant.c, help="segment: a: reverse steps, no mask; b: a + masked residual; "
                                    "c: full (DDPM); d: DDIM."),
    data: Optional[Path] = DataOpt,
    sets: Optional[list[str]] = SetsOpt,
    input_dir: Optional[Path] = InputOpt,
    output_dir: Optional[Path] = typer.Option(
        None, "--output", help="Output folder of the folder mode: <case>.txt + <case>_{healed,map,mask} images + <case>.json."
    ),
    force: bool = ForceOpt,
    report: bool = ReportOpt,
) -> None:
    """Anomaly segmentation (paper 001 and its baselines): healed image, anomaly map, binary mask, image score."""
    info = METHODS[method.value]
    if info.task != "segmentation":
        raise typer.BadParameter(f"{info.name} is a detection method: use `ldm-ood score`", param_hint="--method")
    root = _run_or_model(run, model, info.name, input_dir, output_dir)
    options = {"variant": variant.value} if "variant" in info.score_options else {}
    _scored(lambda: info.score()(root, manifest=data, sets=sets, input_dir=input_dir, output_dir=output_dir, force=force,
                                 **options), report, output_dir, root)


@app.command()
@_friendly
def export(
    run: Path = RunOpt,
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the bundle."),
) -> None:
    """Export a run's calibrated methods as a portable model bundle (networks, config, calibration, model.json)."""
    from .bundle import export_bundle

    export_bundle(run, out)


@app.command()
@_friendly
def serve(
    model: Optional[Path] = typer.Option(None, "--model", help="Model bundle (`ldm-ood export`); or --run."),
    run: Optional[Path] = ScoringRunOpt,
    method: ServedMethod = typer.Option(ServedMethod.ldm, help="Detection method to serve."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback; the service has no authentication)."),
    port: int = typer.Option(8000, help="Port (0: a free one, printed at start)."),
    workers: int = typer.Option(1, min=1, help="Scans scored at once."),
    queue: int = typer.Option(4, min=0, help="Scans that may wait for a worker; beyond them a request gets 429."),
    threads: Optional[int] = typer.Option(None, min=1, help="Torch threads (default: torch's count // workers)."),
    max_upload_mb: float = typer.Option(256.0, min=0.001, help="Largest request body, MiB (413 beyond)."),
    keep_maps: int = typer.Option(32, min=0, help="Anomaly maps kept for GET /v1/maps/{id} (0: none)."),
    map_ttl: float = typer.Option(900.0, min=0, help="Seconds an anomaly map is kept at most."),
    force: bool = ForceOpt,
) -> None:
    """HTTP scoring service: POST /v1/score a NIfTI scan → score, flag, anomaly map (model loaded once)."""
    from .serve.server import serve as run_server
    from .serve.service import MiB, ServeSettings

    settings = ServeSettings(host=host, port=port, workers=workers, queue=queue, threads=threads,
                             max_upload_bytes=int(max_upload_mb * MiB), keep_maps=keep_maps, map_ttl_s=map_ttl)
    run_server(run=run, model=model, method=method.value, settings=settings, force=force)


# ----------------------------------------------------------------------------- evaluation


def _check_map_filters(values: Optional[list[str]]) -> Optional[list[str]]:
    from .evaluation.localisation import check_filter

    try:
        return [check_filter(v) for v in values] if values else values
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
@_friendly
def evaluate(
    run: list[Path] = typer.Option(..., "--run", help="Run directory (repeat for several VQ-GAN levels)."),
    data: Optional[Path] = DataOpt,
    out: Optional[Path] = typer.Option(None, help="summary.json path (default: in the first run)."),
    map_filter: Optional[list[str]] = typer.Option(
        None, "--map-filter", callback=_check_map_filters, help="Anomaly-map post-processing for the localisation table, repeatable: none (the "
        "maps as saved, default), abs, gaussian<sigma>, median<k>, or steps joined by '+' (e.g. abs+gaussian1)."),
) -> None:
    """AUROC/AUPRC/FPR95 per OOD set, DeLong LDM vs LTM, segmentation Dice/AUPRC, map localisation → summary.json + table."""
    from .evaluation.evaluate import evaluate as run_evaluate

    run_evaluate({p.name: p for p in run}, manifest=data, out=out, map_filters=map_filter or ("none",))


@app.command()
@_friendly
def report(
    run: list[Path] = typer.Option(..., "--run", help="Run directory (repeat for several)."),
    out: Optional[Path] = typer.Option(None, help="HTML path (default: <first run>/report/index.html)."),
    benchmarks: Optional[Path] = typer.Option(None, help="Folder with benchmark JSON (time/memory table)."),
) -> None:
    """Write one self-contained HTML report (tables, ROC curves, histograms, anomaly-map overlays)."""
    from .evaluation.evaluate import evaluate as run_evaluate
    from .report.html import build_report

    runs = {p.name: p for p in run}
    summary = run_evaluate(runs, out=None)
    path = build_report(runs, summary, out or (run[0] / "report" / "index.html"), benchmarks_dir=benchmarks)
    console.print(f"report: {path}")


@app.command()
@_friendly
def benchmark(
    preset: str = typer.Option("cpu", help=f"Preset: {PRESET_NAMES}."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable: finished stages are skipped)."),
    levels: Optional[list[int]] = typer.Option(
        None, "--level", help="VQ-GAN level(s) to train, repeatable (default: tiny/demo 2; cpu 2, 3; paper 2, 3, 4)."
    ),
    part: BenchmarkPart = typer.Option(BenchmarkPart.all, help="all | detection (paper 000's 3D runs only) | "
                                       "segmentation (paper 001's 2D runs only: Tables 1 and 3)."),
    quick: bool = typer.Option(False, "--quick", help="The same tables at the earlier, smaller sizes (cpu-quick: "
                               "8 ID-test heads, 6 scans per far-OOD class, l = 2 once, a 6-epoch LTM)."),
) -> None:
    """Generate the built-in benchmark, train, calibrate, score every set with every method, evaluate, report."""
    from .benchmark import run_benchmark

    run_benchmark(preset, out, levels=levels, part=part.value, quick=quick)


@app.command()
@_friendly
def demo(out: Path = typer.Option(Path("demo-output"), "--out", help="Output folder.")) -> None:
    """The main job on the built-in data, small: ~10 minutes on 2 CPU cores. Ends with the report path."""
    from .benchmark import run_demo

    run_demo(out)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
