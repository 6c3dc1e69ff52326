"""burstkern ops: each a ``torch.library`` op with reference, Triton and CUDA kernels behind one switch."""

from .deform_conv import deform_conv2d

__all__ = ["deform_conv2d"]
