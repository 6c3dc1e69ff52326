"""EDM / consistency denoise updates: scalings, combine, Euler/Heun steps, noise, consistency output, loss."""

from ... import _extension
from . import rng
from .op import (add_noise, cm_scalings, cm_update, denoise_combine, edm_euler_update, edm_heun_update, edm_loss,
                 edm_scalings, karras_schedule)

if _extension.triton_error() is None:
    from . import triton  # noqa: F401  (registers the Triton kernels)
if _extension.has_ops("denoise_combine", "edm_heun_update"):
    from . import native  # noqa: F401  (registers the compiled kernels)

__all__ = ["edm_scalings", "cm_scalings", "karras_schedule", "denoise_combine", "edm_euler_update",
           "edm_heun_update", "add_noise", "cm_update", "edm_loss", "rng"]
