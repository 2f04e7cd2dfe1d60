"""bf16 on this machine: the convolution weight-gradient fault, and what ``precision: auto`` picks.

    python benchmarks/bench_precision.py conv-fault [--out benchmarks/results]
        bf16 weight gradients of padded convolutions against fp32, unguarded and with
        ``precision.guard_small_convolutions``: relative error (inf = non-finite) per case.
    python benchmarks/bench_precision.py choices --preset demo [--out benchmarks/results]
        the ``auto`` self-check (no cache) of every network of the preset, for training
        (first stage, LDM UNet, LTM) and inference (first-stage decoder, UNet, LPIPS, LTM):
        speed-up, errors, decision.

Both write JSON (``bf16_conv_fault.json``, ``precision_choices_<preset>.json``) with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ldm_ood.precision import guard_small_convolutions
from ldm_ood.precision_policy import machine_fingerprint, relative_errors

# (conv class, in, out, kernel, stride, padding, input spatial shape): small maps, as at the
# deepest UNet level or the last discriminator layers, and two control cases where the kernel fits
CASES = [
    ("Conv3d", 32, 16, 3, 1, 1, (2, 2, 2)),
    ("Conv3d", 32, 1, 4, 1, 1, (3, 3, 3)),
    ("Conv3d", 16, 16, 4, 1, 1, (3, 3, 3)),
    ("Conv3d", 32, 16, 3, 2, 1, (1, 1, 1)),
    ("ConvTranspose3d", 32, 16, 4, 1, 1, (2, 2, 2)),
    ("Conv2d", 32, 16, 3, 2, 1, (1, 1)),
    ("Conv3d", 32, 16, 3, 1, 1, (4, 4, 4)),
    ("Conv3d", 32, 16, 3, 1, 1, (8, 8, 8)),
]


def _weight_grad(kind, cin, cout, k, stride, pad, shape, bf16: bool, guard: bool) -> torch.Tensor:
    torch.manual_seed(0)
    conv = getattr(torch.nn, kind)(cin, cout, k, stride, pad)
    if guard:
        guard_small_convolutions(conv)
    x = torch.randn(2, cin, *shape)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x)
    y.float().square().mean().backward()
    return conv.weight.grad.clone()


def conv_fault(repeats: int = 3) -> dict:
    rows = []
    for case in CASES:
        ref = _weight_grad(*case, bf16=False, guard=False)
        row = {"conv": case[0], "in": case[1], "out": case[2], "kernel": case[3], "stride": case[4],
               "padding": case[5], "input": list(case[6])}
        for guard in (False, True):
            errs = [relative_errors([_weight_grad(*case, bf16=True, guard=guard)], [ref])[0] for _ in range(repeats)]
            row["guarded" if guard else "unguarded"] = max(errs)
        rows.append(row)
        print(row, flush=True)
    return {"machine": machine_fingerprint(), "torch_threads": torch.get_num_threads(),
            "metric": "max over repeats of relative L2 error of the bf16 weight gradient vs fp32 (inf: non-finite)",
            "cases": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                      for r in rows]}


def choices(preset: str) -> dict:
    from ldm_ood.config import load_config
    from ldm_ood.methods import inference_precision as ip
    from ldm_ood.methods.ldm.similarity import lpips_similarity
    from ldm_ood.precision_policy import TRAIN_TENSOR_TOLERANCE, TRAIN_TOLERANCE, choose_precision, network_signature
    from ldm_ood.training.distributed import DistContext
    from ldm_ood.training.first_stage import FirstStageTask, load_lpips_for
    from ldm_ood.training.ldm import LDMTask
    from ldm_ood.training.precision_check import training_probe
    from ldm_ood.training.transformer import TransformerTask

    cfg, ctx, dev = load_config(preset=preset), DistContext(), torch.device("cpu")
    out = []

    def record(choice):
        out.append(choice.as_dict())
        print(choice.line(), flush=True)

    def train(task, batch, name):
        shapes = [v.shape for v in batch.values()]
        record(choose_precision("auto", f"{name} (training)", training_probe(task, batch, 0),
                                network_signature(task.modules().values(), *shapes), dev,
                                tolerance=TRAIN_TOLERANCE, tensor_tolerance=TRAIN_TENSOR_TOLERANCE, use_cache=False))

    grid = tuple(cfg.first_stage.train_patch or cfg.data.grid)
    fs_task = FirstStageTask(cfg, ctx, load_lpips_for(cfg, dev))
    train(fs_task, {"image": torch.rand(cfg.first_stage.optim.batch_size, 1, *grid)}, "first_stage")
    f = cfg.first_stage.downsampling_factor
    latent = tuple(g // f for g in cfg.data.grid)
    z = torch.randn(cfg.ldm.optim.batch_size, cfg.first_stage.embedding_dim, *latent)
    fs = fs_task.vqvae.eval()
    ldm_task = LDMTask(cfg, fs, 1.0, latent, ctx)
    train(ldm_task, {"latent": z}, "ldm")
    tr = TransformerTask(cfg, latent, ctx)
    seq_len = math.prod(latent)
    train(tr, {"tokens": torch.randint(0, cfg.first_stage.num_embeddings, (cfg.transformer.optim.batch_size, seq_len + 1))},
          "transformer")

    lp = load_lpips_for(cfg, dev) if cfg.first_stage.perceptual_weight > 0 else None
    nets = {
        "first_stage": (fs, lambda: ip.first_stage_probe(fs, cfg.data.grid, 4, dev)),
        "unet": (ldm_task.unet.eval(), lambda: ip.unet_probe(ldm_task.unet, fs, cfg.data.grid, ldm_task.multiple, 14, 500, dev)),
        "transformer": (tr.net_core.eval(), lambda: ip.transformer_probe(tr.net_core, seq_len, cfg.first_stage.num_embeddings, dev)),
    }
    if lp is not None:
        nets["lpips"] = (lp, lambda: ip.lpips_probe(lambda b: lpips_similarity(lp, cfg.data.spatial_dims, bf16=b),
                                                    cfg.data.grid, 4, dev))
    for name, (module, make) in nets.items():
        probe, shapes = make()
        record(choose_precision("auto", f"{name} (inference)", probe, network_signature([module], *shapes), dev,
                                use_cache=False))
    return {"machine": machine_fingerprint(), "preset": preset, "torch_threads": torch.get_num_threads(), "choices": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("conv-fault")
    c = sub.add_parser("choices")
    c.add_argument("--preset", default="demo")
    for s in sub.choices.values():
        s.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.cmd == "conv-fault":
        res, path = conv_fault(), a.out / "bf16_conv_fault.json"
    else:
        res, path = choices(a.preset), a.out / f"precision_choices_{a.preset}.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
