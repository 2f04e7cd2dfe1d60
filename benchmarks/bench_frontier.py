"""Paper 000 scoring: AUROC per set against UNet evaluations per scan, over samplers, steps and starts.

For a trained run and a data manifest, every setting (``evaluation.frontier``: PLMS 100/50/25/10 steps ×
50/25/10/5 starts, DDIM and DPM-Solver++(2M) 50/25/10 steps × the same starts, one-step x̂0) scores the
``val`` cases (its calibration) and every test set (``id`` and the near/far sets) into
``<out>/<setting>/metrics.json`` (resumable: rerun the same command after an interruption). Then per
setting: AUROC of each set vs ``id`` with its bootstrap 95 % CI, and UNet evaluations per scan; the
selection: the cheapest setting ``--min-ratio``× cheaper than the paper setting (PLMS 100 steps, 50
starts, a fresh history per chain) whose AUROC lies in the paper setting's CI on every set, or the closest.
``--shared-history-set NAME`` also scores the paper setting with the official shared PLMS history
(one chain at a time) on ``val``, ``id`` and that set, and reports its AUROC beside the per-chain reset's.

    .venv/bin/python benchmarks/bench_frontier.py --run runs/x --data data/manifest.csv --out frontier/
    .venv/bin/python benchmarks/bench_frontier.py --run runs/x --data m.csv --out f/ \\
        --settings plms:100:50,ddim:10:10,one_step:1:25 --max-cases 8 --shared-history-set near_noise

Writes ``<out>/frontier.json`` and ``<out>/frontier.png`` (``report.figures.frontier_figure``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ldm_ood.artifacts.atomic import atomic_write, atomic_write_text
from ldm_ood.errors import BatchFailures
from ldm_ood.evaluation.frontier import (
    PAPER,
    FrontierSetting,
    default_grid,
    parse_setting,
    score_setting,
    select_cheapest,
    setting_auroc,
    summarise,
)
from ldm_ood.evaluation.summary import ID_SET
from ldm_ood.methods.context import load_context, test_cases, validation_cases
from ldm_ood.methods.ldm.pipeline import load_scoring_models
from ldm_ood.report.figures import frontier_figure, to_png
from ldm_ood.runs import RunDir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="trained run directory or model bundle")
    p.add_argument("--data", required=True, help="manifest with split=val and split=test rows")
    p.add_argument("--out", type=Path, required=True, help="output folder (one metrics folder per setting)")
    p.add_argument("--settings", default=None,
                   help="comma-separated sampler:steps:starts (default: the full grid); the paper setting is always added")
    p.add_argument("--sets", default=None, help="comma-separated test sets (default: all; 'id' is always scored)")
    p.add_argument("--max-cases", type=int, default=None, help="first N cases of val and of each set (a short run)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    p.add_argument("--min-ratio", type=float, default=50.0)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--shared-history-set", default=None, help="a near-OOD set: paper setting with the shared PLMS history")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    run = RunDir(args.run)
    cfg = run.load_config()
    ctx = load_context(args.run, cfg, device=args.device)
    models = load_scoring_models(run, cfg, ctx.device)
    sets = args.sets.split(",") if args.sets else None
    if sets and ID_SET not in sets:
        sets = [ID_SET, *sets]
    groups = {"val": validation_cases(cfg, args.data), **test_cases(cfg, args.data, sets)}
    if args.max_cases:
        groups = {k: v[: args.max_cases] for k, v in groups.items()}
    settings = [parse_setting(s) for s in args.settings.split(",")] if args.settings else default_grid()
    settings = [PAPER, *[s for s in settings if s != PAPER]]
    failures = BatchFailures()

    rows = []
    for setting in settings:
        store = score_setting(setting, models, ctx, groups, args.out, args.precision, failures)
        sets_auc = setting_auroc(store, cfg.score.fpr, args.n_boot)
        seconds = [s for g in store["seconds"].values() for s in g.values()]
        row = {"name": setting.name, **vars(setting), "unet_evaluations": store["unet_evaluations"]["with_maps"],
               "unet_evaluations_score_only": store["unet_evaluations"]["score_only"],
               "t_values": store["t_values"], "seconds_per_scan": sum(seconds) / max(1, len(seconds)), "sets": sets_auc}
        row.update(summarise(row))
        rows.append(row)
        print(f"{setting.name:22s} {row['unet_evaluations']:6d} UNet ev/scan  mean AUROC {row['mean_auroc']:.3f}  "
              f"worst {row['worst_auroc']:.3f}  {row['seconds_per_scan']:.2f} s/scan", flush=True)
    ref = rows[0]
    for r in rows:
        r["unet_evaluation_ratio_vs_paper"] = ref["unet_evaluations"] / r["unet_evaluations"]
    selection = select_cheapest(rows, PAPER.name, args.min_ratio)

    shared = None
    if args.shared_history_set:
        s = args.shared_history_set
        leaky = FrontierSetting(PAPER.sampler, PAPER.num_inference_steps, PAPER.num_t_values, "reference")
        store = score_setting(leaky, models, ctx, {k: groups[k] for k in ("val", ID_SET, s)}, args.out, args.precision,
                              failures)
        auc = setting_auroc(store, cfg.score.fpr, args.n_boot)[s]
        shared = {"set": s, "shared_history": auc, "per_chain_reset": ref["sets"][s],
                  "auroc_difference": (auc["auroc"] - ref["sets"][s]["auroc"])
                  if auc["auroc"] is not None and ref["sets"][s]["auroc"] is not None else None}
        print(f"{s}: AUROC shared PLMS history {auc['auroc']:.3f} vs per-chain reset {ref['sets'][s]['auroc']:.3f}")

    out = {"run": str(args.run), "data": str(args.data), "precision": args.precision, "threads": torch.get_num_threads(),
           "cases": {k: len(v) for k, v in groups.items()}, "reference": PAPER.name, "min_ratio": args.min_ratio,
           "selection": selection, "shared_history": shared, "settings": rows,
           "failures": [{"case_id": c, "error": m} for c, m in failures.items]}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "frontier.json", json.dumps(out, indent=2))
    fig = frontier_figure(rows, PAPER.name, selection["selected"], args.min_ratio)
    png = to_png(fig)
    atomic_write(args.out / "frontier.png", lambda tmp: tmp.write_bytes(png))
    print(json.dumps(selection, indent=2))
    failures.raise_if_any("bench_frontier")


if __name__ == "__main__":
    main()
