"""The ``native`` backend of ``deform_conv2d``: the compiled ``burstkern_C`` ops of the same names and schemas.

Kernels (``csrc/deform_conv/``):

* CPU tensors (``deform_conv_cpu_kernels.cpp``): per sample and block of output pixels, each tap's corners and
  bilinear weights once per offset group, the modulated columns of the block sampled into a cache-sized buffer and
  multiplied with the weights by a tuned GEMM; every float dtype (fp64 in fp64); deterministic backward.
* CUDA tensors (``deform_conv_kernels.cuh``): one implicit-GEMM launch, no column buffer: a block samples a
  ``[64 pixels, 32 (tap, channel)]`` tile into shared memory and multiplies it with the weight tile on the tensor
  cores (fp16/bf16, fp32 accumulate) or with fp32 FMAs (float32, exact: no TF32); the fused backward reduces grad
  offset / mask per owner block and adds grad input atomically, or deterministically under
  ``torch.use_deterministic_algorithms(True)``. float32/float16/bfloat16.

Tensors go to the kernels with their own strides (contiguous, channels_last, strided views: no copies); outputs
come back in the layout of op.py's fake impls.
"""

from __future__ import annotations

import torch

from .. import _common as C
from ...registry import register_kernel
from . import op as O

_B = torch.ops.burstkern_C

_SUPPORTS = C.native_supports("deform_conv")
# _B is looked up per call: tests spy on it
register_kernel(O.OP, "native", lambda *args: _B.deform_conv2d(*args), supports=_SUPPORTS)


@register_kernel(O.OP_BWD, "native", supports=_SUPPORTS)
def deform_conv2d_backward(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask):
    grads = _B.deform_conv2d_backward(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask)
    return tuple(C.match_layout(g, lay) for g, lay in zip(grads, O._backward_layouts(input, offset, weight, bias,
                                                                                   mask)))
