"""Why do the LDM anomaly maps localise the removed chunk / skull (or not)? Per-t maps against the region.

Paper 000's map (§2.3, ``methods.ldm.maps``) is the mean over t ∈ {100..400} of the MAE ``|x − x̂_t|``
z-scored per voxel against the validation scans. This script takes the run's scorer apart on the
localised near-OOD sets (scans with a region mask in the manifest, ``data.corruptions.REGION_KINDS``)
and measures the pooled pixel AUROC / AUPRC (``evaluation.localisation``, head domain, no bootstrap)
of, per start t (``--t``, any grid start, also above the paper's 400):

* ``mae@t``: the raw error ``|x − x̂_t|``;
* ``z@t``: that error z-scored per voxel against the validation statistics (t with statistics only);
* ``missing@t``: the signed error ``max(x̂_t − x, 0)``: tissue the reconstruction put back where the
  input has less — what removing tissue should leave;
* ``zmissing@t``: that signed error z-scored per voxel against the validation scans' (``--val``
  scans of the manifest's ``val`` split, σ floored as in ``methods.ldm.maps``);
* ``ae``: the first stage's own error ``|x − D(E(x))|``, no diffusion at all;

and their means over the paper's map t-values, with the saved paper map (``map``) for reference.
Two diagnostics of the maps themselves, over the head domain: ``corr(mae@t, ae)`` (Pearson, mean over
scans: how much of the map at t is the first stage's error) and ``grid share``: the fraction of the
map's variance explained by the voxel index modulo the first stage's downsampling factor f along
every axis (the decoder's f-periodic pattern; about f³/voxels for speckle without a grid).
One reconstruction per t and scan, seeded by the case id as in scoring. Writes
``benchmarks/results/localisation.json``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_localisation.py --run RUN --data MANIFEST [--t 100 200 ...] [--max-cases 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ldm_ood.data.corruptions import REGION_KINDS
from ldm_ood.data.io import read_image
from ldm_ood.data.manifest import read_manifest
from ldm_ood.data.scans import read_scan
from ldm_ood.data.transforms import Preprocessor
from ldm_ood.evaluation.localisation import head_domain, localisation_metrics
from ldm_ood.methods.ldm.maps import VOXEL_STD_FLOOR, VoxelStats
from ldm_ood.methods.ldm.pipeline import load_scoring_models
from ldm_ood.methods.ldm.reconstruct import decode_chains, inference_grid, reconstruct, snap_to_grid
from ldm_ood.models.diffusion import build_inference_scheduler
from ldm_ood.runs import RunDir
from ldm_ood.samplers.noise import case_seed


def grid_share(amap: np.ndarray, domain: np.ndarray, f: int) -> float:
    """Fraction of ``amap``'s variance over ``domain`` explained by the voxel index modulo ``f`` per axis."""
    phase = sum(((np.indices(amap.shape)[a] % f) * f ** a) for a in range(amap.ndim))[domain]
    v = amap[domain].astype(np.float64)
    counts = np.bincount(phase, minlength=f ** amap.ndim)
    means = np.bincount(phase, weights=v, minlength=f ** amap.ndim) / np.maximum(counts, 1)
    total = v.var()
    return float((counts * (means - v.mean()) ** 2).sum() / counts.sum() / total) if total > 0 else float("nan")


def reconstructions(models, scheduler, cfg, x: torch.Tensor, starts, case_id: str):
    """``(x̂_t for t in starts (n_t, *S), D(E(x)) (*S))`` of one preprocessed scan ``x (1, *S)``."""
    rec = reconstruct(models.first_stage, models.unet, scheduler, x[None], starts,
                      [case_seed(cfg.score.seed, case_id)], models.scale_factor, models.latent_multiple,
                      sampler=cfg.score.sampler)
    lat = torch.cat([rec.latents[0], rec.z])
    out = torch.cat([imgs for _, imgs in decode_chains(models.first_stage, lat, cfg.score.requantize, False)])
    out = out.clamp(0, 1)[:, 0].numpy()
    return out[:-1], out[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="manifest with region masks (ldm-ood synth)")
    ap.add_argument("--t", type=int, nargs="+", default=[100, 200, 300, 400, 600, 800])
    ap.add_argument("--max-cases", type=int, default=8)
    ap.add_argument("--val", type=int, default=8, help="validation scans for the zmissing statistics")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/localisation.json"))
    args = ap.parse_args()

    run = RunDir(args.run)
    cfg = run.load_config()
    device = torch.device("cpu")
    cfg.score.metrics = ("mse",)  # no LPIPS: only the maps are wanted
    models = load_scoring_models(run, cfg, device)
    scheduler = build_inference_scheduler(models.ldm_config, cfg.score.sampler, cfg.score.num_inference_steps)
    grid = inference_grid(scheduler)
    starts = tuple(sorted(set(snap_to_grid(args.t, grid))))
    voxel = VoxelStats.load(run.ood_voxel_stats_path)
    paper_t = tuple(voxel.t_values)
    pre = Preprocessor(cfg.data)
    cases = [c for c in read_manifest(args.data) if c.set in REGION_KINDS and c.mask is not None and c.split == "test"]

    f = cfg.first_stage.downsampling_factor
    # per-voxel statistics of the signed error on validation scans (as the paper's MAE statistics)
    missing_val = []
    for case in [c for c in read_manifest(args.data) if c.set == "id" and c.split == "val"][: args.val]:
        x, _ = pre.load(case.source)
        recon, _ = reconstructions(models, scheduler, cfg, x, starts, case.case_id)
        missing_val.append(np.clip(recon - x[0].numpy(), 0, None))
    mu = np.mean(missing_val, 0)
    sd = np.maximum(np.std(missing_val, 0, ddof=1), VOXEL_STD_FLOOR) if len(missing_val) > 1 else np.full_like(mu, VOXEL_STD_FLOOR)

    results: dict[str, dict] = {}
    for kind in REGION_KINDS:
        maps: dict[str, list[np.ndarray]] = {}
        regions, domains, diag = [], [], {}
        for case in [c for c in cases if c.set == kind][: args.max_cases]:
            x, _ = pre.load(case.source)
            region = read_image(case.mask, allow_constant=True).array > 0.5
            if region.shape != tuple(x.shape[1:]):
                raise SystemExit(f"{case.mask}: the bench needs scans already on the run's grid")
            domain = head_domain(read_scan(case.source).array, region)
            regions.append(region)
            domains.append(domain)
            recon, ae = reconstructions(models, scheduler, cfg, x, starts, case.case_id)
            xi = x[0].numpy()
            per: dict[str, np.ndarray] = {"ae": np.abs(xi - ae)}
            for j, t in enumerate(starts):
                per[f"mae@{t}"] = np.abs(xi - recon[j])
                per[f"missing@{t}"] = np.clip(recon[j] - xi, 0, None)
                per[f"zmissing@{t}"] = (per[f"missing@{t}"] - mu[j]) / sd[j]
                if t in paper_t:
                    k = paper_t.index(t)
                    per[f"z@{t}"] = (per[f"mae@{t}"] - voxel.mean[k].numpy()) / voxel.std[k].numpy()
                diag.setdefault(f"corr(mae@{t}, ae)", []).append(
                    float(np.corrcoef(per[f"mae@{t}"][domain], per["ae"][domain])[0, 1]))
            in_paper = [t for t in starts if t in paper_t]
            if in_paper:
                for name in ("mae", "missing", "zmissing", "z"):
                    per[f"{name} mean t={in_paper[0]}..{in_paper[-1]}"] = np.mean([per[f"{name}@{t}"] for t in in_paper], 0)
            saved = Path(run.root / "maps" / "ldm" / kind / f"{case.case_id}.nii.gz")
            if saved.exists():
                per["map (saved, paper)"] = read_image(saved, allow_constant=True).array
                diag.setdefault("grid share (saved map)", []).append(grid_share(per["map (saved, paper)"], domain, f))
            diag.setdefault("grid share (ae)", []).append(grid_share(per["ae"], domain, f))
            for key, v in per.items():
                maps.setdefault(key, []).append(v)
        rows = {}
        for key, vs in maps.items():
            if len(vs) != len(regions):
                continue
            lm = localisation_metrics(vs, regions, domains, n_boot=0)
            rows[key] = {"pixel_auroc": round(lm.pixel_auroc, 4), "pixel_auprc": round(lm.pixel_auprc, 4)}
            print(f"{kind:15s} {key:28s} AUROC {lm.pixel_auroc:.3f}  AUPRC {lm.pixel_auprc:.3f}  (base {lm.region_fraction:.3f})",
                  flush=True)
        diagnostics = {k: round(float(np.mean(v)), 4) for k, v in diag.items()}
        for k, v in diagnostics.items():
            print(f"{kind:15s} {k:28s} {v:.3f}", flush=True)
        results[kind] = {"n_cases": len(regions), "region_fraction": round(lm.region_fraction, 4), "maps": rows,
                         "diagnostics": diagnostics}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "t": list(starts), "domain": "head", "n_val": len(missing_val),
                                    "downsampling": f, "results": results},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
