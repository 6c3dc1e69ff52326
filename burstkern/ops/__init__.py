"""burstkern ops: each a ``torch.library`` op with reference, Triton and CUDA kernels behind one switch."""

from .deform_conv import deform_conv2d
from .denoise import add_noise, cm_scalings, cm_update, denoise_combine, edm_euler_update, edm_heun_update, edm_loss, edm_scalings, karras_schedule  # noqa: F401,E501
from .sft import sft_group_norm, sft_modulate  # noqa: F401

__all__ = ["deform_conv2d"]
