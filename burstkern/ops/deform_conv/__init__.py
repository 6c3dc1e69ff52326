"""``deform_conv2d`` (modulated DCNv2): reference (the spec), Triton and native kernels, the op's declaration."""

from ... import _extension
from .op import deform_conv2d

if _extension.triton_error() is None:
    from . import triton  # noqa: F401  (registers the Triton kernels)
if _extension.has_ops("deform_conv2d", "deform_conv2d_backward"):
    from . import native  # noqa: F401  (registers the compiled kernels)

__all__ = ["deform_conv2d"]
