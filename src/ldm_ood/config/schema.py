"""The configuration schema: one pydantic model per stage (paper 000 §3.2, paper 001 §2.1/§3).

The fields mirror the constructor arguments of the MONAI building blocks they configure
(``spatial_dims``, ``channels``, ``num_inference_steps`` ...). Unknown fields are errors
(``extra="forbid"``); values are validated on assignment too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .score_settings import SCORE_SETTINGS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: ``auto``: bf16 only where a measured self-check on the run's own networks shows finite results that
#: agree with fp32 and run faster (``ldm_ood.precision``); ``fp32`` / ``bf16`` force one.
Precision = Literal["auto", "fp32", "bf16"]
#: ``ldm_ood.engines``: ``auto`` measures each network's engines on this machine (cached) and keeps the fastest that
#: matches PyTorch fp32 within its tolerance; the others force one (eager as a fallback, with a warning)
Engine = Literal["auto", "eager", "compile", "onnxruntime", "openvino"]

#: the image score of paper 000 (``methods.ldm.calibration.tail_score``): the signed mean z-score, or its absolute value
ScoreTails = Literal["one_sided", "two_sided"]

#: paper 001's segmentation variants: (a) reverse steps, (b) + masked residual, (c) masked healing (DDPM),
#: (d) masked healing with DDIM
Variant = Literal["a", "b", "c", "d"]


class _HasPrecision(_Strict):
    """Accepts the older boolean ``bf16`` field (configs saved before ``precision``) as a precision."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_bf16(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bf16" in data:
            data = dict(data)
            legacy = data.pop("bf16")
            if "precision" not in data and isinstance(legacy, bool):
                data["precision"] = "bf16" if legacy else "fp32"
            elif not isinstance(legacy, bool):
                raise ValueError(f"bf16 must be true or false (or use precision: auto | fp32 | bf16), got {legacy!r}")
        return data


class DataConfig(_Strict):
    """Preprocessing of paper 000 §3.1: orientation, spacing, crop/pad to a grid, intensity."""

    spatial_dims: Literal[2, 3] = 3
    grid: tuple[int, ...] = (64, 64, 64)
    spacing: tuple[float, ...] | None = Field(default=None, description="mm; None keeps the input spacing")
    orientation: str = "RAS"
    modality: Literal["ct", "other"] = "ct"
    ct_window: tuple[float, float] = (-15.0, 100.0)
    manifest: Path | None = Field(default=None, description="manifest CSV with train/val splits")

    @model_validator(mode="after")
    def _grid_matches_dims(self) -> "DataConfig":
        if len(self.grid) != self.spatial_dims:
            raise ValueError(f"grid {self.grid} has {len(self.grid)} dims but spatial_dims={self.spatial_dims}")
        if any(g <= 0 for g in self.grid):
            raise ValueError(f"grid sizes must be positive, got {self.grid}")
        if self.spacing is not None and len(self.spacing) != self.spatial_dims:
            raise ValueError(f"spacing {self.spacing} must have {self.spatial_dims} values")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window must be increasing, got {self.ct_window}")
        return self


class OptimConfig(_HasPrecision):
    """Optimisation and early stopping of one training stage."""

    lr: float = Field(gt=0)
    batch_size: int = Field(default=2, ge=1)
    max_epochs: int = Field(default=100, ge=1)
    patience: int = Field(default=15, ge=1, description="early stopping: epochs without val improvement")
    val_every: int = Field(default=1, ge=1)
    preview_every: int = Field(default=5, ge=1)
    precision: Precision = Field(default="auto", description="training precision: auto | fp32 | bf16")
    grad_clip_norm: float | None = Field(
        default=None, gt=0, description="clip the global gradient norm of every optimizer step to this value"
    )
    num_workers: int = Field(default=0, ge=0)
    seed: int = 0
    samples_per_epoch: int | None = Field(default=None, ge=1, description="cap on training samples per epoch")


class FirstStageConfig(_Strict):
    """VQ-GAN (paper 000 §2.1/§3.2) or VQ-VAE with EMA codebook (paper 001 §2.1), via MONAI ``VQVAE``."""

    kind: Literal["vqgan", "vqvae"] = "vqgan"
    levels: int = Field(default=3, ge=1, le=5, description="downsampling levels l; latent = input / 2**l")
    channels: int = Field(default=128, ge=1)
    num_res_layers: int = Field(default=3, ge=0)
    num_res_channels: int = Field(default=128, ge=1)
    embedding_dim: int = Field(default=64, ge=1)
    num_embeddings: int = Field(default=256, ge=2)
    commitment_cost: float = Field(default=0.25, ge=0)
    decay: float = Field(default=0.99, gt=0, lt=1, description="EMA decay of the codebook")
    codebook_restart_every: int = Field(
        default=0, ge=0, description="beyond the papers: every this many training steps, codes whose EMA cluster size "
        "is below codebook_restart_threshold restart at random encoder outputs (0 = never; training/codebook_restart.py)",
    )
    codebook_restart_threshold: float = Field(default=0.01, gt=0)
    reconstruction_loss: Literal["l2", "l1"] = "l2"
    perceptual_weight: float = Field(default=0.001, ge=0)
    adversarial_weight: float = Field(default=0.01, ge=0)
    spectral_weight: float = Field(default=1.0, ge=0)
    disc_channels: int = Field(default=64, ge=1)
    disc_layers: int = Field(default=3, ge=1)
    disc_lr: float = Field(default=3e-4, gt=0)
    adversarial_warmup_epochs: int = Field(default=0, ge=0)
    train_patch: tuple[int, ...] | None = Field(
        default=None,
        description="beyond the paper: train on random crops of this size (fully convolutional; CPU budgets)",
    )
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=3e-4))

    @property
    def downsampling_factor(self) -> int:
        return 2**self.levels

    @model_validator(mode="after")
    def _patch_divisible(self) -> "FirstStageConfig":
        f = 2**self.levels
        if self.train_patch is not None and any(p <= 0 or p % f for p in self.train_patch):
            raise ValueError(f"train_patch {self.train_patch} must be positive multiples of 2**levels = {f}")
        return self


class DiffusionConfig(_Strict):
    """Latent DDPM (paper 000 §3.2): time-conditioned UNet, scaled-linear β, ε-prediction."""

    channels: tuple[int, ...] = (128, 256, 256)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = Field(default=1, ge=1)
    num_head_channels: int = Field(default=32, ge=1)
    norm_num_groups: int = Field(default=32, ge=1)
    num_train_timesteps: int = Field(default=1000, ge=2)
    schedule: str = "scaled_linear_beta"
    beta_start: float = Field(default=0.0015, gt=0)
    beta_end: float = Field(default=0.0195, gt=0)
    schedule_shift: float | None = Field(
        default=None, gt=0, description="beyond the paper: SNR shift of the schedule for large latents"
    )
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=2.5e-5))

    @model_validator(mode="after")
    def _levels_consistent(self) -> "DiffusionConfig":
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels must have one entry per level of channels")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"every channel count {self.channels} must be divisible by norm_num_groups")
        if self.beta_end <= self.beta_start:
            raise ValueError("beta_end must exceed beta_start")
        return self


class TransformerConfig(_Strict):
    """Latent Transformer Model baseline (paper 000 §3.2): decoder-only over VQ token indices."""

    num_layers: int = Field(default=22, ge=1)
    dim: int = Field(default=256, ge=8)
    heads: int = Field(default=8, ge=1)
    ordering: str = Field(default="raster_scan", description="MONAI OrderingType value")
    ensemble_orderings: tuple[str, ...] = ()
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4))

    @model_validator(mode="after")
    def _heads_divide(self) -> "TransformerConfig":
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        return self


class ScoreConfig(_HasPrecision):
    """Paper 000 §2.2–2.3 scoring: multi-start reconstructions, similarity metrics, maps, calibration.

    ``setting`` (``paper`` | ``default`` | ``fast``, :data:`SCORE_SETTINGS`) sets the fields it names,
    over any value given for them (a preset's included); leave it unset (null) to choose them one by one.
    """

    setting: Literal["paper", "default", "fast"] | None = Field(
        default=None, description="named setting: paper | default | fast (sets num_t_values, t_values, "
        "num_inference_steps, sampler, sequential, precision); null: those fields as given")
    num_t_values: int = Field(default=50, ge=1, description="starts evenly spaced over [0, T]")
    t_values: tuple[int, ...] | None = Field(default=None, description="explicit starts; overrides num_t_values")
    num_inference_steps: int = Field(default=100, ge=1)
    sampler: Literal["plms", "ddim", "dpmpp_2m", "one_step"] = Field(
        default="plms", description="plms | ddim | dpmpp_2m (DPM-Solver++(2M)) | one_step (x̂0 from one UNet call "
        "per start; num_inference_steps does not apply)")
    metrics: tuple[Literal["mse", "lpips"], ...] = ("mse", "lpips")
    map_t_values: tuple[int, ...] = (100, 200, 300, 400)
    map_error: Literal["absolute", "missing"] = Field(
        default="absolute", description="the §2.3 map's error per t before its z-score: absolute |x − x̂_t| "
        "(paper 000) | missing max(x̂_t − x, 0), the tissue the reconstruction puts back where the input has "
        "less (removed tissue: chunks, skull stripping; benchmarks/bench_localisation.py)")
    batch_size: int = Field(default=1, ge=1, description="scans per batched reconstruction")
    precision: Precision = Field(default="auto", description="inference precision: auto | fp32 | bf16")
    engine: Engine = Field(
        default="auto", description="inference engine per network (first-stage encoder/decoder, UNet, LPIPS trunk): "
        "auto (the fastest measured on this machine among those matching PyTorch fp32) | eager | compile | "
        "onnxruntime | openvino")
    sequential: bool = Field(default=False, description="one chain at a time, as the reference code")
    requantize: bool = Field(
        default=True, description="snap denoised latents to the codebook before decoding (reference code)"
    )
    fpr: float = Field(default=0.05, gt=0, lt=1, description="operating point on validation")
    tails: ScoreTails = Field(
        default="two_sided", description="image score of the mean z-score s: one_sided = s (paper 000 §2.2, "
        "higher = more OOD); two_sided = |s|, so a scan reconstructed abnormally well (simpler than the training "
        "scans: smoother, less tissue) is flagged as well as one reconstructed abnormally badly; the LTM's NLL likewise "
        "(|NLL − mean| / std over validation). A calibration records its tails")
    seed: int = 0

    @field_validator("metrics")
    @classmethod
    def _nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one metric is required")
        return v

    @model_validator(mode="before")
    @classmethod
    def _expand_setting(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("setting") is not None:
            if data["setting"] not in SCORE_SETTINGS:
                raise ValueError(f"unknown score setting {data['setting']!r}; one of {', '.join(SCORE_SETTINGS)}")
            data = {k: v for k, v in data.items() if k != "bf16"} | SCORE_SETTINGS[data["setting"]]
        return data


class SegmentConfig(_HasPrecision):
    """Paper 001 §3: KL maps over t in [400, 600], percentile thresholds, masked healing, residuals."""

    kl_t_range: tuple[int, int] = (400, 600)
    kl_num_t: int | None = Field(default=None, ge=1, description="None: every t in range (DDPM); 50 for (d)")
    percentile: float = Field(default=97.5, gt=0, lt=100)
    start_t: int = Field(default=500, ge=1)
    variant: Variant = "c"
    ddim_steps: int = Field(default=50, ge=1)
    healing: Literal["paper", "repaint"] = "paper"
    gaussian_sigma: float = Field(default=1.0, ge=0, description="in latent voxels, for the upsampled mask")
    score_num_t: int | None = Field(
        default=None, ge=1,
        description="image-level score (§4.1): None = every t of the Markov chain [1, T-1] (the paper); "
        "else this many evenly spaced t",
    )
    score_subsample_num_t: int | None = Field(
        default=50, ge=1,
        description="also report the image-level score on this many evenly spaced t of the same draws "
        "(pred_score_subsample; needs them among score_num_t's); None = not reported",
    )
    fpr: float = Field(default=0.05, gt=0, lt=1)
    batch_size: int = Field(default=16, ge=1)
    precision: Precision = Field(default="auto", description="inference precision: auto | fp32 | bf16")
    seed: int = 0


class SynthConfig(_Strict):
    """Built-in synthetic head-CT benchmark (DESIGN.md) sizes."""

    grid: tuple[int, int, int] = (64, 64, 64)
    spacing_mm: float = Field(default=3.2, gt=0)
    n_train: int = Field(default=48, ge=1)
    n_val: int = Field(default=12, ge=1)
    n_test: int = Field(default=12, ge=1)
    n_far_per_class: int = Field(default=8, ge=1)
    slice_size: int = Field(default=64, ge=8)
    n_train_2d: int = Field(default=800, ge=1)
    n_val_2d: int = Field(default=100, ge=1)
    n_test_2d: int = Field(default=100, ge=1)
    seed: int = 0


class FanoganConfig(_Strict):
    """f-AnoGAN baseline of paper 001 Table 1 (Schlegl et al. 2019, §2): a WGAN-GP, then an izi_f encoder.

    One stage (``ldm-ood train fanogan``) trains ``gan_epochs`` epochs of the WGAN-GP (``n_critic`` critic
    updates per generator update, gradient penalty ``gp_weight``, Adam ``optim.lr`` with ``betas``), then
    ``encoder_epochs`` epochs of the encoder with G and the critic frozen (izi_f loss, feature weight
    ``kappa``; ``encoder_optimizer`` with ``encoder_lr``). ``optim`` holds the batch size, seed, precision,
    validation and early-stopping settings of both phases; its ``max_epochs`` is not read (the stage runs
    ``gan_epochs + encoder_epochs`` epochs) and early stopping (``optim.patience``) acts in the encoder phase
    only. Networks (2D only): DCGAN-style, ``channels`` wide at full resolution, doubled per halving up to
    8x, halving until the smaller side is 4 to 7 pixels.
    """

    latent_dim: int = Field(default=128, ge=1, description="z ~ N(0, I) of this dimension")
    channels: int = Field(default=64, ge=1, description="width of the first (full-resolution) convolution")
    n_critic: int = Field(default=5, ge=1, description="critic updates per generator update")
    gp_weight: float = Field(default=10.0, ge=0, description="lambda of the WGAN-GP gradient penalty")
    kappa: float = Field(default=1.0, ge=0, description="weight of the critic-feature residual (izi_f)")
    gan_epochs: int = Field(default=200, ge=1)
    encoder_epochs: int = Field(default=350, ge=1)
    betas: tuple[float, float] = Field(default=(0.0, 0.9), description="Adam betas of G and the critic (WGAN-GP)")
    encoder_optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    encoder_lr: float = Field(default=5e-5, gt=0)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4, batch_size=64))

    @property
    def epochs(self) -> int:
        """Epochs of the whole stage: the GAN phase, then the encoder phase."""
        return self.gan_epochs + self.encoder_epochs


class AutoencoderConfig(_Strict):
    """Paper 001 Table 1's reconstruction baselines (Baur et al. 2021), MONAI ``AutoEncoder`` / ``VarAutoEncoder``.

    What the AE and the VAE share. The default network is Baur et al.'s unified architecture: four
    5×5 stride-2 convolutions with 32, 64, 128, 128 filters (batch norm), mirrored by transposed
    convolutions; L1 reconstruction; Adam with β1 = 0.5, lr 1e-4, batch 8, early stopping after 5
    epochs without improvement (their reference code). Anomaly map: ``|x - x̂|`` median-filtered
    (``median_size``, 1 = off); image score: mean of its ``top_k_fraction`` largest values.
    """

    channels: tuple[int, ...] = Field(default=(32, 64, 128, 128), description="encoder filters, top level first")
    strides: tuple[int, ...] = Field(default=(2, 2, 2, 2), description="one stride per entry of channels")
    kernel_size: int = Field(default=5, ge=1, description="odd; also the transposed convolutions' kernel")
    num_res_units: int = Field(default=0, ge=0, description="MONAI residual units per level (0: plain convolutions)")
    norm: Literal["batch", "instance"] = "batch"
    reconstruction_loss: Literal["l1", "l2"] = "l1"
    adam_betas: tuple[float, float] = (0.5, 0.999)
    top_k_fraction: float = Field(default=0.01, gt=0, le=1, description="image score: mean of this fraction of the "
                                  "largest map values (at least one)")
    median_size: int = Field(default=5, ge=1, description="median filter of the residual map, voxels per axis (1: off)")
    batch_size: int = Field(default=16, ge=1, description="images per batch when calibrating and segmenting")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4, batch_size=8, max_epochs=200, patience=5))

    @property
    def downsampling_factor(self) -> int:
        out = 1
        for s in self.strides:
            out *= s
        return out

    @model_validator(mode="after")
    def _levels_consistent(self) -> "AutoencoderConfig":
        if not self.channels or len(self.channels) != len(self.strides):
            raise ValueError(f"strides {self.strides} must have one entry per level of channels {self.channels}")
        if any(c < 1 for c in self.channels) or any(s < 1 for s in self.strides):
            raise ValueError("channels and strides must be positive")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        return self


class AEConfig(AutoencoderConfig):
    """AE (spatial): the bottleneck is the encoder's last feature map, ``channels[-1]`` × grid /
    ``prod(strides)`` (Baur et al. 2021's spatial bottleneck, no dense layer)."""


class VAEConfig(AutoencoderConfig):
    """VAE (dense): the last feature map is flattened to a dense Gaussian latent of ``latent_size``
    (Baur et al. 2021: a 1×1 convolution to 16 channels, then 128 dims; here the last level of
    ``channels`` is that reduction). Loss: reconstruction + ``kl_weight`` · KL per voxel."""

    channels: tuple[int, ...] = Field(default=(32, 64, 128, 128, 16), description="encoder filters, top level first")
    strides: tuple[int, ...] = Field(default=(2, 2, 2, 2, 1), description="one stride per entry of channels")
    latent_size: int = Field(default=128, ge=1)
    kl_weight: float = Field(default=1.0, ge=0, description="β of the KL term (1: Baur et al.'s L1 ELBO)")
#: paper 001 Table 1 "Ensemble" (Pinaya et al. 2021): eight views of one latent, raster and S-curve
#: each plain, transposed, reflected, transposed and reflected (``models.transformer.parse_ordering``)
ENSEMBLE_ORDERINGS: tuple[str, ...] = tuple(
    f"{k}{t}{r}" for k in ("raster_scan", "s_curve") for t in ("", "_transposed") for r in ("", "_reflected"))


class EnsembleConfig(_Strict):
    """Ensemble of latent transformers (paper 001 Table 1, after its reference 16): one decoder-only
    transformer per ordering of the first stage's tokens, trained one after another by
    ``ldm-ood train ensemble``. Its own architecture and optimisation (so the stage is self-contained:
    changing ``transformer`` does not touch it); the presets give it the ``transformer`` architecture."""

    orderings: tuple[str, ...] = ENSEMBLE_ORDERINGS
    num_layers: int = Field(default=22, ge=1)
    dim: int = Field(default=256, ge=8)
    heads: int = Field(default=8, ge=1)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4))

    @model_validator(mode="after")
    def _members(self) -> "EnsembleConfig":
        if not self.orderings:
            raise ValueError("orderings must name at least one ordering")
        if len(set(self.orderings)) != len(self.orderings):
            raise ValueError(f"orderings must be distinct, got {self.orderings}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        return self


class TokenHealingConfig(_HasPrecision):
    """Paper 001 Table 1 "Transformer" / "Ensemble" segmentation (Pinaya et al. 2021): tokens less
    likely than a threshold are resampled from the transformer and the healed latent decoded.

    The threshold is on the per-position log-likelihood (summed over the members of an ensemble):
    ``probability`` set: ``log(probability)`` per member (a fixed probability, as the reference);
    else the ``percentile`` of every validation position's value (the healthy validation split)."""

    percentile: float = Field(default=2.5, gt=0, lt=100, description="validation percentile of token log-likelihoods")
    probability: float | None = Field(default=None, gt=0, lt=1, description="fixed probability threshold instead")
    sampling: Literal["sample", "argmax"] = Field(default="sample", description="resampled token: a draw or the mode")
    heal_member: int = Field(default=0, ge=0, description="the ensemble member (index into ensemble.orderings) that heals")
    batch_size: int = Field(default=16, ge=1)
    precision: Precision = Field(default="auto", description="inference precision: auto | fp32 | bf16")
    seed: int = 0


class Config(_Strict):
    """All stages of one run."""

    preset: str = "custom"
    data: DataConfig = Field(default_factory=DataConfig)
    first_stage: FirstStageConfig = Field(default_factory=FirstStageConfig)
    ldm: DiffusionConfig = Field(default_factory=DiffusionConfig)
    transformer: TransformerConfig = Field(default_factory=TransformerConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    fanogan: FanoganConfig = Field(default_factory=FanoganConfig)
    ae: AEConfig = Field(default_factory=AEConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    token_healing: TokenHealingConfig = Field(default_factory=TokenHealingConfig)

    @model_validator(mode="after")
    def _first_stage_fits_grid(self) -> "Config":
        f = self.first_stage.downsampling_factor
        bad = [g for g in self.data.grid if g % f]
        if bad:
            raise ValueError(
                f"data.grid {self.data.grid} is not divisible by 2**first_stage.levels = {f}"
            )
        return self
