"""burstkern.models: the E-BSRD pipeline at library scale (burst encoder, SFT U-Net denoiser, samplers)."""

from .samplers import consistency_sample, edm_heun_sampler  # noqa: F401
from .encoder import BurstEncoder, InitialSRHead  # noqa: E402,F401
from .unet import SFTUNet  # noqa: E402,F401
from .ebsrd import EBSRD, EBSRDConfig, PRESETS, CheckpointError, config_from_dict  # noqa: E402,F401
from .baseline import aligned_baseline, demosaic_bilinear, upsample_true_phase  # noqa: E402,F401
from .dpir import DPIR, DPIRConfig, dpir_sample  # noqa: E402,F401
