"""DDP training with 2 CPU processes (gloo): every stage completes, ranks end with identical networks
whose shapes match a single-process run, and only rank 0 writes the stage files."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest

WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path
    from safetensors.torch import save_file
    from ldm_ood.config import load_config
    from ldm_ood.runs import RunDir
    from ldm_ood.training import distributed
    from ldm_ood.training.api import build_datasets
    from ldm_ood.training.first_stage import fit_first_stage
    from ldm_ood.training.ldm import fit_ldm
    from ldm_ood.training.transformer import fit_transformer

    run, cfg_path = RunDir(sys.argv[1]), sys.argv[2]
    ctx = distributed.init_distributed()
    cfg = load_config(cfg_path)
    train_ds, val_ds = build_datasets(cfg, cfg.data.manifest)
    for stage, fn in (("first_stage", fit_first_stage), ("ldm", fit_ldm), ("transformer", fit_transformer)):
        res = fn(run, cfg, train_ds, val_ds, ctx=ctx)
        state = {k: v.detach().float().contiguous() for k, v in res.model.state_dict().items()}
        save_file(state, str(run.root / f"{stage}_rank{ctx.rank}_of{ctx.world_size}.safetensors"))
    distributed.shutdown()
''')


def _cohort(folder: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        vol = np.kron(rng.uniform(-15, 100, (4, 4, 4)), np.ones((4, 4, 4))).astype(np.float32)
        split = "train" if i < 4 else "val"  # 4 train (2 per rank), 2 val (1 per rank)
        cases.append(Case(f"c{i}", write_image(folder / f"c{i}.nii.gz", vol, np.eye(4)), set="id", split=split))
    return write_manifest(folder / "manifest.csv", cases)


@pytest.mark.slow
def test_two_process_ddp_training_matches_across_ranks(tmp_path):
    manifest = _cohort(tmp_path / "data")
    opt = {"max_epochs": 2, "batch_size": 1, "preview_every": 100, "patience": 10}
    cfg = {"preset": "tiny", "data": {"manifest": str(manifest)},
           "first_stage": {"perceptual_weight": 0.0, "optim": {**opt, "bf16": True}},
           "ldm": {"optim": opt}, "transformer": {"optim": opt}}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    for cmd, run in ((env_cmd, ddp_run), ([sys.executable], single_run)):
        run.mkdir()
        out = subprocess.run([*cmd, str(worker), str(run), str(cfg_path)], capture_output=True, text=True,
                             timeout=900, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                  "LDM_OOD_CACHE_DIR": os.environ["LDM_OOD_CACHE_DIR"]})
        assert out.returncode == 0, out.stderr[-8000:]
    for stage in ("first_stage", "ldm", "transformer"):
        r0 = load_file(str(ddp_run / f"{stage}_rank0_of2.safetensors"))
        r1 = load_file(str(ddp_run / f"{stage}_rank1_of2.safetensors"))
        single = load_file(str(single_run / f"{stage}_rank0_of1.safetensors"))
        assert r0.keys() == r1.keys() == single.keys()
        for k in r0:
            assert torch.equal(r0[k], r1[k]), (stage, k)  # DDP kept ranks in sync (incl. EMA codebook)
            assert r0[k].shape == single[k].shape, (stage, k)
        assert any(not torch.equal(r0[k], single[k]) for k in r0)  # a different (2x larger) effective batch
        assert (ddp_run / stage / "DONE").exists() and (ddp_run / stage / "model.safetensors").exists()
        rows = (ddp_run / stage / "metrics.csv").read_text().splitlines()
        assert len(rows) == 1 + 2  # header + 2 epochs, written once (rank 0 only)


NAN_WORKER = textwrap.dedent('''
    import math, sys
    from ldm_ood.config import load_config
    from ldm_ood.runs import RunDir
    from ldm_ood.training import distributed, losses
    from ldm_ood.training.api import build_datasets
    from ldm_ood.training.first_stage import fit_first_stage
    from ldm_ood.training.ldm import fit_ldm

    run, cfg_path = RunDir(sys.argv[1]), sys.argv[2]
    ctx = distributed.init_distributed()
    cfg = load_config(cfg_path)
    train_ds, val_ds = build_datasets(cfg, cfg.data.manifest)
    fit_first_stage(run, cfg, train_ds, val_ds, ctx=ctx)
    real, calls = losses.diffusion_loss, [0]

    def nan_on_rank_1(pred, eps):  # 2 steps + 1 validation per epoch: NaN at epoch 2, step 1, rank 1 only
        calls[0] += 1
        value = real(pred, eps)
        return value * math.nan if (ctx.rank == 1 and calls[0] == 4) else value

    losses.diffusion_loss = nan_on_rank_1
    fit_ldm(run, cfg, train_ds, val_ds, ctx=ctx)
''')


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    manifest = _cohort(tmp_path / "data")
    opt = {"max_epochs": 3, "batch_size": 1, "preview_every": 100, "patience": 10}
    cfg = {"preset": "tiny", "data": {"manifest": str(manifest)},
           "first_stage": {"perceptual_weight": 0.0, "optim": {**opt, "max_epochs": 1}}, "ldm": {"optim": opt}}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    worker = tmp_path / "worker.py"
    worker.write_text(NAN_WORKER)
    run = tmp_path / "ddp"
    run.mkdir()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(worker), str(run), str(cfg_path)], capture_output=True, text=True, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                              "LDM_OOD_CACHE_DIR": os.environ["LDM_OOD_CACHE_DIR"]})
    assert out.returncode != 0
    for rank in (0, 1):  # both ranks stopped at epoch 2, step 1 (rank 0 sees it through the averaged gradient)
        assert f"[rank{rank}]" in out.stderr and "ldm: non-finite" in out.stderr
    assert out.stderr.count("at epoch 2, step 1") >= 2, out.stderr[-4000:]
    from ldm_ood.artifacts.checkpoint import load_state

    assert load_state(run / "ldm" / "state.pt")["epoch"] == 1
    assert not (run / "ldm" / "DONE").exists()
