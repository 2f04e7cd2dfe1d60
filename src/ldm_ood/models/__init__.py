"""Networks: first stages (VQ-GAN / VQ-VAE), latent DDPM UNet and schedulers, LTM, LPIPS."""
