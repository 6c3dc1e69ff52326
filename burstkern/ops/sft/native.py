"""The ``native`` backend of the sft ops: the compiled ``burstkern_C`` ops of the same names and schemas.

CPU tensors: two fused passes over memory (statistics, then normalise + modulate + activation), every float dtype.
CUDA tensors (``csrc/sft/``): fp32 math and statistics for float32/float16/bfloat16 storage. CUDA launches:
``sft_modulate`` 1 forward, 1 backward (+1 finalize for per-channel gamma/beta gradients); ``sft_group_norm``
3 forward (statistics, finalize, apply), 3 backward (sums, finalize, dx). Reductions are fixed-order partial sums:
deterministic, no float atomics.

Layout: x and grad must be dense contiguous or channels_last; here they are brought to ``C.memory_format_of(x)``
(a no-op when already in it, a copy otherwise, e.g. a channel-sliced or cropped x, which becomes contiguous).
gamma/beta go to the kernels as they are when their H and W merge into one index (contiguous, channels_last,
per-channel ``[N, C, 1, 1]`` of any strides, channel slices such as the two halves of a merged ``[N, 2C, ...]``
tensor): the kernels read them in place through their strides. A spatially cropped gamma/beta view (H and W not
mergeable) is made contiguous in x's format first. Outputs take x's format, the rule of op.py's fake impls.

"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _common as C
from ...registry import register_kernel
from . import op as O

_B = torch.ops.burstkern_C


_SUPPORTS = C.native_supports("sft")


def _mergeable(t: torch.Tensor) -> bool:
    _, _, h, w = t.shape
    return h * w == 1 or w == 1 or h == 1 or t.stride(2) == w * t.stride(3)


def _mod(t: Optional[torch.Tensor], fmt) -> Optional[torch.Tensor]:
    """gamma/beta in place when the kernels can address them through strides, else a copy in x's format."""
    if t is None or _mergeable(t):
        return t
    return C.to_format(t, fmt)


def _prep(x, gamma, beta, grad=None):
    fmt = C.memory_format_of(x)
    return (C.to_format(x, fmt), _mod(gamma, fmt), _mod(beta, fmt),
            None if grad is None else C.to_format(grad, fmt))


@register_kernel(O.OP_MOD, "native", supports=_SUPPORTS)
def sft_modulate_forward(x, gamma, beta, act, slope):
    xc, g, b, _ = _prep(x, gamma, beta)
    return _B.sft_modulate(xc, g, b, act, slope)


@register_kernel(O.OP_MOD_BWD, "native", supports=_SUPPORTS)
def sft_modulate_backward(grad, x, gamma, beta, act, slope):
    xc, g, b, gr = _prep(x, gamma, beta, grad)
    return _B.sft_modulate_backward(gr, xc, g, b, act, slope)


@register_kernel(O.OP_GN, "native", supports=_SUPPORTS)
def sft_group_norm_forward(x, gamma, beta, num_groups, weight, bias, eps, act, slope):
    xc, g, b, _ = _prep(x, gamma, beta)
    return _B.sft_group_norm(xc, g, b, num_groups, weight, bias, eps, act, slope)


@register_kernel(O.OP_GN_BWD, "native", supports=_SUPPORTS)
def sft_group_norm_backward(grad, x, gamma, beta, num_groups, weight, bias, mean, rstd, eps, act, slope):
    xc, g, b, gr = _prep(x, gamma, beta, grad)
    return _B.sft_group_norm_backward(gr, xc, g, b, num_groups, weight, bias, mean.contiguous(), rstd.contiguous(),
                                      eps, act, slope)
