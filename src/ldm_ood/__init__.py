"""ldm-ood: OOD detection and anomaly segmentation with latent diffusion models."""
__version__ = "0.1.0"
