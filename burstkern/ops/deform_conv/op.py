"""``burstkern.ops.deform_conv2d``: public function, ``torch.library`` registration, fake impl, autograd.

Two ops, each declared once with ``define_op``: ``burstkern::deform_conv2d`` and its backward
``burstkern::deform_conv2d_backward`` (an op of its own so the backward stays traceable by torch.compile). The
native kernels are the ``burstkern_C`` ops of the same names (``native.py``), the Triton ones in ``triton.py``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _common as C
from .._define import define_op
from . import reference

OP = "deform_conv2d"
OP_BWD = "deform_conv2d_backward"


def _backward_layouts(input, offset, weight, bias, mask):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask) buffers laid out as every kernel returns them."""
    return (
        C.empty_like_format(input),
        C.empty_like_format(offset, fmt=C.memory_format_of(input)),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
        C.empty_grad(input) if bias is None else torch.empty_like(bias, memory_format=torch.contiguous_format),
        C.empty_grad(input) if mask is None else C.empty_like_format(mask, fmt=C.memory_format_of(input)),
    )


def _backward_signature(grad: Tensor, input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                        stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
                        mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask); empty [0] where bias / mask is None."""


def _reference_backward(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask):
    grads = reference.deform_conv2d_backward(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask)
    grads = tuple(C.empty_grad(input) if g is None else g for g in grads)
    layouts = _backward_layouts(input, offset, weight, bias, mask)
    return tuple(C.match_layout(g, lay) for g, lay in zip(grads, layouts))


BACKWARD = define_op(OP_BWD, _backward_signature, reference=_reference_backward,
                     fake=lambda grad, input, offset, weight, bias, *ints_mask: _backward_layouts(
                         input, offset, weight, bias, ints_mask[-1]))


def _signature(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], stride_h: int, stride_w: int,
               pad_h: int, pad_w: int, dil_h: int, dil_w: int, mask: Optional[Tensor]) -> Tensor:
    """[N, Cout, Ho, Wo], channels_last when input is (and is not also contiguous)."""


def _fake(input, offset, weight, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, mask):
    return C.empty_like_format(input, (input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


def _reference_forward(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask):
    out = reference.deform_conv2d(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask)
    return C.to_format(out, C.memory_format_of(input))


def _setup_context(ctx, inputs, output):
    input, offset, weight, bias, *ints, mask = inputs
    ctx.save_for_backward(input, offset, weight, bias, mask)
    ctx.ints = ints


def _backward(ctx, grad):
    input, offset, weight, bias, mask = ctx.saved_tensors
    gi, go, gw, gb, gm = BACKWARD(grad, input, offset, weight, bias, *ctx.ints, mask)
    return gi, go, gw, (None if bias is None else gb), None, None, None, None, None, None, (
        None if mask is None else gm)


# autocast "lower": like a convolution, compute in the autocast dtype
FORWARD = define_op(OP, _signature, fake=_fake, reference=_reference_forward, setup_context=_setup_context,
                    backward=_backward, autocast="lower")


# ----------------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------------
def _tensor(name: str, t, ndim: int, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise C.ArgumentTypeError(f"{name} must be a torch.Tensor {what}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise C.ArgumentError(f"{name} must be a {ndim}-D tensor {what}, got {C.describe(t)}")
    return t


def check_args(input, offset, weight, bias, stride, padding, dilation, mask):
    """Validate ``deform_conv2d`` arguments in torchvision's order (shapes before dtypes), with torchvision's
    wording first; returns (stride, padding, dilation) as pairs. Errors are :class:`~burstkern.ArgumentError`
    (a ``RuntimeError``, as torchvision raises, and a ``ValueError``)."""
    _tensor("input", input, 4, "[N, Cin, H, W]")
    _tensor("offset", offset, 4, "[N, 2*offset_groups*kh*kw, Ho, Wo]")
    _tensor("weight", weight, 4, "[Cout, Cin/groups, kh, kw]")
    if mask is not None:
        _tensor("mask", mask, 4, "[N, offset_groups*kh*kw, Ho, Wo]")
    if bias is not None:
        _tensor("bias", bias, 1, "[Cout]")
    for name, t in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
        if t is not None:
            C.check_same(name, t, "input", input, dtype=False)
    stride, padding, dilation = C.pair("stride", stride), C.pair("padding", padding), C.pair("dilation", dilation)
    n, cin, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    k = kh * kw
    if kh < 1 or kw < 1:
        raise C.ArgumentError(f"weight_h: {kh} weight_w: {kw}: the kernel must be at least 1x1 (weight "
                              f"{C.describe(weight)})")
    if min(stride) < 1:
        raise C.ArgumentError(f"stride_h: {stride[0]} stride_w: {stride[1]}: stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise C.ArgumentError(f"pad_h: {padding[0]} pad_w: {padding[1]}: padding must be >= 0, got {padding}")
    if min(dilation) < 1:
        raise C.ArgumentError(f"dilation_h: {dilation[0]} dilation_w: {dilation[1]}: dilation must be >= 1, got {dilation}")
    og = offset.shape[1] // (2 * k)
    if og == 0:
        raise C.ArgumentError(
            f"the shape of the offset tensor at dimension 1 is not valid. It should be a multiple of "
            f"2 * weight.size[2] * weight.size[3]. Got offset.shape[1]={offset.shape[1]}, while "
            f"2 * weight.size[2] * weight.size[3]={2 * k} (offset: {C.describe(offset)})")
    if cin_g < 1 or cin % cin_g != 0:
        raise C.ArgumentError(f"weight has {cin_g} input channels per group, which does not divide input's {cin} "
                              f"channels (input: {C.describe(input)}, weight: {C.describe(weight)})")
    groups = cin // cin_g
    if cout % groups != 0:
        raise C.ArgumentError(f"weight's {cout} output channels are not divisible by the {groups} groups implied by "
                              f"input ({cin} channels) and weight ({cin_g} per group)")
    if offset.shape[1] != og * 2 * k:
        raise C.ArgumentError(f"offset.shape[1] is not valid: got: {offset.shape[1]} expected: {og * 2 * k} "
                              f"(2*offset_groups*kh*kw; offset: {C.describe(offset)})")
    if mask is not None and mask.shape[1] != og * k:
        raise C.ArgumentError(f"mask.shape[1] is not valid: got: {mask.shape[1]} expected: {og * k} "
                              f"(offset_groups*kh*kw with {og} offset groups; mask: {C.describe(mask)})")
    if cin % og != 0:
        raise C.ArgumentError(f"input's {cin} channels are not divisible by the {og} offset groups implied by offset "
                              f"({C.describe(offset)})")
    ho, wo = reference.output_size(h, w, kh, kw, stride, padding, dilation)
    for name, t, per_pixel in (("offset", offset, 2 * og * k), ("mask", mask, og * k)):
        if t is None:
            continue
        if t.shape[0] != n:
            raise C.ArgumentError(f"invalid batch size of {name}: got {t.shape[0]}, expected input's {n} "
                                  f"({name}: {C.describe(t)})")
        if ho >= 1 and wo >= 1 and tuple(t.shape[2:]) != (ho, wo):
            raise C.ArgumentError(f"{name} output dims: ({t.shape[2]}, {t.shape[3]}) - computed output dims: "
                                  f"({ho}, {wo}) ({name} must be {(n, per_pixel, ho, wo)}, got {C.describe(t)})")
    if ho < 1 or wo < 1:
        raise C.ArgumentError(f"Calculated output size too small - out_h: {ho} out_w: {wo}: the output would be empty (input "
                              f"{C.describe(input)}, kernel {kh}x{kw}, stride {stride}, padding {padding}, "
                              f"dilation {dilation})")
    if bias is not None and bias.shape[0] != cout:
        raise C.ArgumentError(f"bias must have shape ({cout},), got {C.describe(bias)}")
    # dtypes last, as torchvision (whose kernels check them when they run)
    C.check_tensor("input", input)
    for name, t in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
        if t is not None:
            C.check_same(name, t, "input", input)
    return stride, padding, dilation


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask: Optional[Tensor] = None) -> Tensor:
    """Modulated deformable convolution (DCNv2), a drop-in for ``torchvision.ops.deform_conv2d``.

    Args:
        input: ``[N, Cin, H, W]``; N is typically batch x burst frames, all aligned in one call.
        offset: ``[N, 2*og*kh*kw, Ho, Wo]``, per offset group and tap the pair (dy, dx).
        weight: ``[Cout, Cin/groups, kh, kw]`` (weight groups are inferred).
        bias: ``[Cout]`` or None.
        stride, padding, dilation: int or (h, w).
        mask: ``[N, og*kh*kw, Ho, Wo]`` modulation, or None (DCNv1).

    Returns:
        ``[N, Cout, Ho, Wo]``, channels_last when ``input`` is. fp16/bf16 compute in fp32.

    Example::

        >>> x = torch.randn(8, 64, 96, 96)
        >>> off = torch.randn(8, 2 * 8 * 9, 96, 96)
        >>> m = torch.rand(8, 8 * 9, 96, 96)
        >>> w = torch.randn(64, 64, 3, 3)
        >>> deform_conv2d(x, off, w, padding=1, mask=m).shape
        torch.Size([8, 64, 96, 96])
    """
    input, offset, weight, bias, mask = FORWARD.cast(input, offset, weight, bias, mask)
    stride, padding, dilation = check_args(input, offset, weight, bias, stride, padding, dilation, mask)
    return FORWARD(input, offset, weight, bias, stride[0], stride[1], padding[0], padding[1], dilation[0],
                          dilation[1], mask)
