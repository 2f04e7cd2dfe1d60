"""Training of the first stage, the latent DDPM and the LTM: loops, losses, checkpoints, DDP."""
