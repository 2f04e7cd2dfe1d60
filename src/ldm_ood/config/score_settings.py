"""Named paper 000 scoring settings: what ``score.setting`` expands to (:class:`.schema.ScoreConfig`)."""

from __future__ import annotations

from typing import Any

#: Named scoring settings (``score.setting``): each fixes these ``score`` fields. ``paper``: paper 000
#: §3.2 as the reference code runs it (50 starts × 100 PLMS steps, one chain at a time with the shared
#: PLMS history, fp32, plain PyTorch); ``default``: the same grid, all chains batched with a fresh history per chain,
#: the measured precision; ``fast``: 10 starts on a 10-step DDIM grid (the starts snap to the grid's
#: levels 0, 111, …, 888: 9 distinct chains), ~60× fewer UNet evaluations than ``paper`` (with the
#: default map starts: 44 vs 2654 per scan, ``methods.ldm.reconstruct.unet_evaluations``).
SCORE_SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {"num_t_values": 50, "t_values": None, "num_inference_steps": 100, "sampler": "plms",
              "sequential": True, "precision": "fp32", "engine": "eager"},
    "default": {"num_t_values": 50, "t_values": None, "num_inference_steps": 100, "sampler": "plms",
                "sequential": False, "precision": "auto"},
    "fast": {"num_t_values": 10, "t_values": None, "num_inference_steps": 10, "sampler": "ddim",
             "sequential": False, "precision": "auto"},
}
