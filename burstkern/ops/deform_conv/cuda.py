"""The ``cuda`` backend of ``deform_conv2d``: thin glue from the registry to the compiled ``burstkern_C`` kernels.

Kernels: ``csrc/deform_conv/`` (element math in ``element.cuh``, shared by the CUDA kernels and the CPU build of
the same ``burstkern_C`` ops that the tests run without a GPU).

* forward: one implicit-GEMM launch, no column buffer: a block samples a ``[64 pixels, 32 (tap, channel)]`` tile
  (bilinear gather x mask) into shared memory and multiplies it with the weight tile on the tensor cores
  (fp16/bf16, fp32 accumulate) or with fp32 FMAs (float32, exact: no TF32); bias in the epilogue.
* backward: grad input / offset / mask in one launch (grad columns = grad_out x W^T per tile, grad offset and
  mask reduced per (pixel, offset group, tap) by the block that owns it, grad input atomically added in fp32, or
  under ``torch.use_deterministic_algorithms(True)`` collected and reduced with ``index_put_(accumulate=True)``);
  grad weight an implicit GEMM over pixels into a split fp32 workspace (deterministic); grad bias a sum.

Tensors go to the kernels with their own strides (contiguous, channels_last, strided views: no copies); outputs
come back in the layout of op.py's fake impls. float64 is the reference backend's job.

Registered only when ``burstkern._C`` is loaded and has these ops (see ``__init__.py``).
"""

from __future__ import annotations

import torch

from .. import _common as C
from ...backend import register_kernel
from . import op as O

_B = torch.ops.burstkern_C


def _check_dtype(input: torch.Tensor) -> None:
    if input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the cuda backend of deform_conv2d runs float32/float16/bfloat16 tensors (fp32 math), got "
                        f"input {C.describe(input)}; use the reference backend for float64")


@register_kernel(O.OP, "cuda")
def deform_conv2d_forward(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask):
    """``[N, Cout, Ho, Wo]``; arguments as the reference kernel (op.py checked them)."""
    _check_dtype(input)
    return _B.deform_conv2d(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask)


@register_kernel(O.OP_BWD, "cuda")
def deform_conv2d_backward(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask), placeholders for an absent bias / mask."""
    _check_dtype(input)
    grads = _B.deform_conv2d_backward(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask)
    layouts = O._backward_layouts(input, offset, weight, bias, mask)
    return tuple(C.match_layout(g, lay) for g, lay in zip(grads, layouts))
