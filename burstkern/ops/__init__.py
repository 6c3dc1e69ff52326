"""burstkern ops: each a ``torch.library`` op with reference, Triton and CUDA kernels behind one switch.

=====================  ===============================================================================
deformable alignment   :func:`deform_conv2d`
SFT modulation         :func:`sft_modulate`, :func:`sft_group_norm`
denoise update         :func:`denoise_combine`, :func:`edm_euler_update`, :func:`edm_heun_update`,
                       :func:`add_noise`, :func:`cm_update`, :func:`edm_loss`,
                       :func:`edm_scalings`, :func:`cm_scalings`, :func:`karras_schedule`
=====================  ===============================================================================
"""

from .deform_conv import deform_conv2d
from .denoise import (add_noise, cm_scalings, cm_update, denoise_combine, edm_euler_update, edm_heun_update,
                      edm_loss, edm_scalings, karras_schedule)
from .sft import sft_group_norm, sft_modulate

__all__ = ["deform_conv2d", "sft_modulate", "sft_group_norm", "denoise_combine", "edm_euler_update",
           "edm_heun_update", "add_noise", "cm_update", "edm_loss", "edm_scalings", "cm_scalings",
           "karras_schedule"]
