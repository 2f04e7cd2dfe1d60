"""Samplers of the latent DDPM, one file per scheduler, with per-chain (per-image) state.

* :mod:`.noise` — the forward process ``q(z_t | z_0)`` and seeded per-scan / per-image noise;
* :mod:`.plms` — PLMS (PNDM without Runge-Kutta steps) with one history per chain: every chain of
  every scan advances through one UNet call per grid step (paper 000 §2.2);
* :mod:`.ddim` — the deterministic DDIM update (η = 0; paper 001 variant d);
* :mod:`.dpm_solver` — DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order solver of the
  diffusion ODE in data prediction, with one history per chain (``score.sampler: dpmpp_2m``);
* :mod:`.one_step` — the single-step estimate ``x̂_0 = (z_t − σ_t ε) / α_t`` (``score.sampler: one_step``);
* :mod:`.ddpm` — one ancestral DDPM step through MONAI's ``DDPMScheduler`` (paper 001 variant c).

Samplers take the network's ε (``models.diffusion.epsilon``); they never own a network, and the
networks never own sampling. Each is tested against MONAI's scheduler of the same name, or (those
MONAI does not have) against its definition.
"""
