"""A tiny 2D run saved as a trained run would be (random networks): what method tests score with.

``build_tiny_2d_run(root)``: a first stage, an LDM, an LTM, an ensemble of LTMs (one per
``ensemble.orderings``), an f-AnoGAN and paper 001's AE / VAE baselines of the ``tiny-2d`` preset with
random weights, a manifest of 3 ``val`` and 3 ``test`` slices of set ``id`` plus one unreadable ``bad``
case, and a folder of 2 good slices and one broken file. ``tiny_3d_ldm(cfg, root)``: a 3D run folder
and its LDM scoring networks with random weights, in memory (passed as ``models=``). Imported by tests
(``tests/`` is on the path).
"""

from __future__ import annotations

import numpy as np
import torch

from ldm_ood.artifacts.checkpoint import save_model
from ldm_ood.artifacts.stage_meta import FanoganMeta
from ldm_ood.config import load_config
from ldm_ood.data.io import write_image
from ldm_ood.data.manifest import Case, write_manifest
from ldm_ood.methods.autoencoder.model import build_autoencoder
from ldm_ood.methods.ldm.pipeline import ScoringModels
from ldm_ood.models.diffusion import build_unet, latent_multiple
from ldm_ood.models.fanogan import build_fanogan
from ldm_ood.models.perceptual import load_lpips
from ldm_ood.models.first_stage import build_first_stage
from ldm_ood.models.loading import upstream_hashes
from ldm_ood.models.transformer import build_transformer
from ldm_ood.runs import RunDir


def _slice(rng, shape=(18, 20)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    return (np.where(r < min(shape) * 0.4, 40.0, -1000.0) + rng.normal(0, 3, shape)).astype(np.float32)


def tiny_3d_ldm(cfg, root):
    """``(run, models)``: ``root`` as a run folder holding ``cfg`` (a 3D ``tiny`` config) and the LDM scoring
    networks of ``cfg`` with random weights (seed 0, latent scale 0.8, LPIPS), for ``score_ldm(..., models=)``."""
    torch.manual_seed(0)
    fs = build_first_stage(cfg.first_stage, 3).eval()
    unet = build_unet(cfg.ldm, 3, cfg.first_stage.embedding_dim).eval()
    models = ScoringModels(fs, unet, 0.8, latent_multiple(cfg.ldm), cfg.ldm, 3, load_lpips())
    run = RunDir(root)
    run.save_config(cfg)
    return run, models


def build_tiny_2d_run(root):
    """``(run, folder)`` under ``root`` (module docstring)."""
    rng = np.random.default_rng(0)
    cfg = load_config(preset="tiny-2d", overrides={
        "score": {"num_inference_steps": 5, "num_t_values": 2, "map_t_values": [250, 500]},
        "segment": {"start_t": 8, "ddim_steps": 3, "kl_num_t": 3, "score_num_t": 4, "batch_size": 2}})
    cases = [Case(f"v{i}", write_image(root / "data" / f"v{i}.nii.gz", _slice(rng)), set="id", split="val")
             for i in range(3)]
    cases += [Case(f"t{i}", write_image(root / "data" / f"t{i}.nii.gz", _slice(rng)), set="id", split="test")
              for i in range(3)]
    bad = root / "data" / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    cases.append(Case("bad", bad, set="id", split="test"))
    cfg.data.manifest = write_manifest(root / "data" / "manifest.csv", cases)
    folder = root / "folder"
    for i in range(2):
        write_image(folder / f"f{i}.nii.gz", _slice(rng))
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")

    run = RunDir(root / "run")
    run.save_config(cfg)
    torch.manual_seed(0)
    dump = cfg.model_dump(mode="json")
    fs = build_first_stage(cfg.first_stage, 2)
    save_model(run.stage_dir("first_stage"), fs, {"stage": "first_stage", "spatial_dims": 2, "config": dump})
    inputs = upstream_hashes(run, ("first_stage",))  # as training records what it was trained on
    save_model(run.stage_dir("ldm"), build_unet(cfg.ldm, 2, cfg.first_stage.embedding_dim), {
        "stage": "ldm", "spatial_dims": 2, "scale_factor": 0.8, "latent_multiple": latent_multiple(cfg.ldm),
        "latent_spatial_shape": [4, 4], "latent_channels": cfg.first_stage.embedding_dim, "config": dump,
        "inputs": inputs})
    tokens = cfg.first_stage.num_embeddings + 1
    save_model(run.stage_dir("transformer"), build_transformer(cfg.transformer, tokens, 16), {
        "stage": "transformer", "spatial_dims": 2, "num_tokens": tokens, "seq_len": 16,
        "latent_spatial_shape": [4, 4], "ordering": cfg.transformer.ordering, "ordering_seed": 0, "config": dump,
        "inputs": inputs})
    save_model(run.stage_dir("fanogan"), build_fanogan(cfg.fanogan, cfg.data.grid), FanoganMeta(
        spatial_dims=2, config=dump, grid=tuple(cfg.data.grid), gan_epochs=cfg.fanogan.gan_epochs).to_json())
    for stage in run.root.iterdir():  # finished, as training leaves them
        if (stage / "model.safetensors").exists():
            (stage / "DONE").write_text('{"reason": "max_epochs"}')
    for kind in ("ae", "vae"):  # paper 001's AE / VAE baselines
        net = build_autoencoder(kind, getattr(cfg, kind), cfg.data.grid)
        save_model(run.stage_dir(kind), net, {"stage": kind, "spatial_dims": 2, "config": dump})
    _save_ensemble(run, cfg, inputs, tokens)
    return run, folder


def _save_ensemble(run, cfg, inputs, tokens):
    """The ensemble stage as ``training.ensemble.fit_ensemble`` leaves it: one LTM per ordering, then its record."""
    import json

    from ldm_ood.artifacts.stage_meta import EnsembleMeta
    from ldm_ood.models.loading import members_sha256, stage_sha256
    from ldm_ood.training.ensemble import member_config, member_folder

    members = {member_folder(k, o): o for k, o in enumerate(cfg.ensemble.orderings)}
    for folder, ordering in members.items():
        member = member_config(cfg, ordering)
        save_model(RunDir(run.stage_dir("ensemble") / folder).stage_dir("transformer"),
                   build_transformer(member.transformer, tokens, 16), {
                       "stage": "transformer", "spatial_dims": 2, "num_tokens": tokens, "seq_len": 16,
                       "latent_spatial_shape": [4, 4], "ordering": ordering, "ordering_seed": 0,
                       "config": member.model_dump(mode="json"), "inputs": inputs})
    hashes = [stage_sha256(RunDir(run.stage_dir("ensemble") / f), "transformer") for f in members]
    meta = EnsembleMeta(spatial_dims=2, config=cfg.model_dump(mode="json"), inputs=inputs,
                        weights_sha256=members_sha256(hashes), members=members)
    run.model_config_path("ensemble").write_text(json.dumps(meta.to_json()))
    run.done_path("ensemble").write_text("{}")
