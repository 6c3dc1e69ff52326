"""burstkern.models: the E-BSRD pipeline at library scale (burst encoder, SFT U-Net denoiser, samplers)."""

from .samplers import consistency_sample, edm_heun_sampler  # noqa: F401
