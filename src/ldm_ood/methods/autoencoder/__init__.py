"""Paper 001 Table 1's reconstruction baselines, "AE (Spatial)" and "VAE (Dense)" (Baur et al. 2021).

One package for both (``kind`` = ``ae`` | ``vae``): :mod:`.model` (MONAI ``AutoEncoder`` /
``VarAutoEncoder``, reconstruction, loss, loading), :mod:`.maps` (residual map, top-k score),
:mod:`.training` (the stage task behind ``ldm-ood train ae|vae``) and :mod:`.pipeline`
(``calibrate_ae``, ``segment_ae``, ``calibrate_vae``, ``segment_vae``).
"""
