"""EDM / consistency denoise updates: scalings, combine, Euler/Heun steps, noise, consistency output, loss."""

from ..._extension import triton_error
from . import rng
from .op import (add_noise, cm_scalings, cm_update, denoise_combine, edm_euler_update, edm_heun_update, edm_loss,
                 edm_scalings, karras_schedule)

if triton_error() is None:
    from . import triton  # noqa: F401  (registers the Triton kernels)
from ... import _extension as _ext  # noqa: E402
if _ext.cuda_extension_error() is None and hasattr(_ext.torch.ops.burstkern_C, "denoise_combine"):
    from . import cuda  # noqa: F401  (registers the compiled CUDA kernels)

__all__ = ["edm_scalings", "cm_scalings", "karras_schedule", "denoise_combine", "edm_euler_update",
           "edm_heun_update", "add_noise", "cm_update", "edm_loss", "rng"]
