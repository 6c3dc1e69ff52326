"""``deform_conv2d`` (modulated DCNv2): reference (the spec), Triton kernels, op registration."""

from ... import _extension
from .op import deform_conv2d

if _extension.triton_error() is None:
    from . import triton  # noqa: F401  (registers the triton kernels)

__all__ = ["deform_conv2d"]
