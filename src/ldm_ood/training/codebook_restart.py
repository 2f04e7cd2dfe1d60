"""Dead-code restart of the EMA codebook (beyond the papers; van den Oord et al. 2017's codebook, the
restarts of Dhariwal et al. 2020 (Jukebox) and Williams et al. 2020).

MONAI's ``EMAQuantizer`` starts every code with an EMA cluster size of 0 and divides the EMA sum of a code
by its (Laplace-smoothed) cluster size: a code no encoder output was ever assigned to has a smoothed size
of about ``epsilon`` (1e-5) while its EMA sum only decays, so it drifts far from the data and is never
assigned again. Measured on the built-in 32² sprite slices (``demo-2d``, 10 epochs, fp32 and bf16 alike):
every slice encoded with one code of 256 (validation perplexity 1.0, 255 dead codes, PSNR 11.9 dB), which
caps every latent model trained on it.

:func:`restart_dead_codes` replaces each code whose EMA cluster size is below ``threshold`` with a random
encoder output of the current batch, and gives it an EMA state (size 1, sum = that vector) from which the
EMA update keeps it there. Called every ``first_stage.codebook_restart_every`` training steps; under DDP
rank 0's choice is broadcast so every replica keeps the same codebook.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def restart_dead_codes(quantizer: torch.nn.Module, z: torch.Tensor, threshold: float,
                       generator: torch.Generator | None = None) -> int:
    """Re-seed dead codes of an ``EMAQuantizer`` from encoder outputs; returns how many were restarted.

    Args:
        quantizer: MONAI ``EMAQuantizer`` (``embedding``, ``ema_cluster_size``, ``ema_w``).
        z: encoder outputs ``(B, D, *s)`` (``D`` = embedding dim) of the current batch.
        threshold: a code is dead when its EMA cluster size (an EMA of its assignments per step) is below this.
        generator: CPU generator choosing the encoder outputs (seeded: training stays reproducible).
    """
    dead = (quantizer.ema_cluster_size < threshold).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    flat = z.detach().float().movedim(1, -1).reshape(-1, z.shape[1])
    pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
    vectors = flat[pick]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(vectors, src=0)
    quantizer.embedding.weight.data[dead] = vectors.to(quantizer.embedding.weight.dtype)
    quantizer.ema_w.data[dead] = vectors.to(quantizer.ema_w.dtype)
    quantizer.ema_cluster_size.data[dead] = 1.0
    return int(dead.numel())
