"""``deform_conv2d`` (modulated DCNv2): reference (the spec), Triton kernels, op registration."""

from ... import _extension
from .op import deform_conv2d

if _extension.triton_error() is None:
    from . import triton  # noqa: F401  (registers the triton kernels)
if _extension.cuda_extension_error() is None and hasattr(_extension.torch.ops.burstkern_C, "deform_conv2d"):
    from . import cuda  # noqa: F401  (registers the compiled CUDA kernels)

__all__ = ["deform_conv2d"]
