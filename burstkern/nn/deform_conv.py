"""Deformable-convolution modules on ``burstkern.ops.deform_conv2d`` (whichever backend is active).

* :class:`DeformConv2d` -- drop-in for ``torchvision.ops.DeformConv2d``: same constructor, parameters, init and
  ``state_dict`` keys (``weight``, ``bias``); ``forward(input, offset, mask=None)``.
* :class:`ModulatedDeformConv2d` -- DCNv2 with its own offset/mask conv, as mmcv's ``ModulatedDeformConv2dPack`` and
  BasicSR's ``DCNv2Pack``: ``conv_offset`` predicts ``3 * deform_groups * kh * kw`` channels, split in three
  (``o1, o2, mask``), offset = ``cat(o1, o2)``, mask = ``sigmoid``. State dict keys ``weight``, ``bias``,
  ``conv_offset.weight``, ``conv_offset.bias``, so mmcv / BasicSR checkpoints load as they are.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import init
from torch.nn.modules.utils import _pair

from ..ops._common import ArgumentError
from ..ops.deform_conv import deform_conv2d


@torch.jit.unused
def _eager(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Tuple[int, int],
           padding: Tuple[int, int], dilation: Tuple[int, int], mask: Optional[Tensor]) -> Tensor:
    return deform_conv2d(input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


def _deform(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Tuple[int, int],
            padding: Tuple[int, int], dilation: Tuple[int, int], mask: Optional[Tensor]) -> Tensor:
    """The public function in Python (argument checks, autocast); under ``torch.jit.script`` the op itself, which
    resolves its kernel at run time like any call."""
    if torch.jit.is_scripting():
        return torch.ops.burstkern.deform_conv2d(input, offset, weight, bias, stride[0], stride[1], padding[0],
                                                 padding[1], dilation[0], dilation[1], mask)
    return _eager(input, offset, weight, bias, stride, padding, dilation, mask)


def _kernel_pair(name: str, v, minimum: int) -> Tuple[int, int]:
    p = _pair(v)
    if len(p) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in p):
        raise ArgumentError(f"{name} must be an int or a pair of ints >= {minimum}, got {v!r}")
    return (int(p[0]), int(p[1]))


def _check_channels(in_channels: int, out_channels: int, groups: int) -> None:
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ArgumentError(f"{name} must be a positive int, got {v!r}")
    if in_channels % groups != 0:
        raise ArgumentError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
    if out_channels % groups != 0:
        raise ArgumentError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")


def _init_conv(m: nn.Module, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias) -> None:
    """The attributes and parameters torchvision's DeformConv2d and mmcv's DCNv2 pack share (same names)."""
    _check_channels(in_channels, out_channels, groups)
    m.in_channels = in_channels
    m.out_channels = out_channels
    m.kernel_size = _kernel_pair("kernel_size", kernel_size, 1)
    m.stride = _kernel_pair("stride", stride, 1)
    m.padding = _kernel_pair("padding", padding, 0)
    m.dilation = _kernel_pair("dilation", dilation, 1)
    m.groups = groups
    m.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *m.kernel_size))
    if bias:
        m.bias = nn.Parameter(torch.empty(out_channels))
    else:
        m.register_parameter("bias", None)


class DeformConv2d(nn.Module):
    """Deformable convolution (DCNv1, or DCNv2 when a ``mask`` is given), a drop-in for
    ``torchvision.ops.DeformConv2d`` (same arguments, parameters, initialisation and state dict).

    Args:
        in_channels, out_channels: channels of the input / output.
        kernel_size, stride, padding, dilation: int or (h, w), as ``nn.Conv2d``.
        groups: weight groups.
        bias: learn an additive bias.

    Shapes:
        input ``[N, in_channels, H, W]``; offset ``[N, 2*og*kh*kw, Ho, Wo]``; mask ``[N, og*kh*kw, Ho, Wo]`` or None;
        output ``[N, out_channels, Ho, Wo]``.

    Example::

        >>> conv = DeformConv2d(64, 64, 3, padding=1)
        >>> conv.load_state_dict(torchvision.ops.DeformConv2d(64, 64, 3, padding=1).state_dict())
        >>> y = conv(x, offset)           # x [N, 64, H, W], offset [N, 18, H, W]
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        _init_conv(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchvision's init (that of nn.Conv2d)
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return _deform(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding}" if self.padding != (0, 0) else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        return s


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2) that predicts its own offsets and mask, state-dict compatible
    with mmcv's ``ModulatedDeformConv2dPack`` and BasicSR's ``DCNv2Pack``.

    ``conv_offset = Conv2d(offset_in_channels, 3*deform_groups*kh*kw, kernel_size, stride, padding, dilation)``
    starts at zero (offsets 0, mask 0.5), so a fresh layer is a plain conv scaled by 0.5.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as ``nn.Conv2d``.
        deform_groups: offset groups (mmcv's name; BasicSR's ``deformable_groups`` is accepted too).
        offset_in_channels: channels of the feature the offset conv reads (default ``in_channels``).
        offset_warn_threshold: if set, warn when the mean absolute offset exceeds it (BasicSR warns at 50;
            off by default because it reads the mean back to the host every call).

    Shapes:
        ``forward(x)``: the offset conv reads ``x`` (mmcv). ``forward(x, feat)``: it reads ``feat`` (BasicSR's
        ``DCNv2Pack``, where ``feat`` is the alignment feature). ``x [N, in_channels, H, W]``,
        ``feat [N, offset_in_channels, H, W]`` -> ``[N, out_channels, Ho, Wo]``.

    Example::

        >>> dcn = ModulatedDeformConv2d(64, 64, 3, padding=1, deform_groups=8)
        >>> dcn.load_state_dict(basicsr_dcn_pack.state_dict())
        >>> aligned = dcn(neighbour_feat, offset_feat)
    """

    _version = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = True, *,
                 deformable_groups: Optional[int] = None, offset_in_channels: Optional[int] = None,
                 offset_warn_threshold: Optional[float] = None):
        super().__init__()
        if deformable_groups is not None:
            deform_groups = deformable_groups
        _init_conv(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if not isinstance(deform_groups, int) or deform_groups < 1 or in_channels % deform_groups != 0:
            raise ArgumentError(f"deform_groups must be a positive int dividing in_channels ({in_channels}), "
                                f"got {deform_groups!r}")
        self.deform_groups = deform_groups
        self.offset_warn_threshold = offset_warn_threshold
        self.conv_offset = nn.Conv2d(offset_in_channels or in_channels,
                                     deform_groups * 3 * self.kernel_size[0] * self.kernel_size[1],
                                     kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, bias=True)
        self.init_weights()

    @property
    def deformable_groups(self) -> int:  # BasicSR's attribute name
        return self.deform_groups

    def init_weights(self) -> None:
        # mmcv / BasicSR: weight U(-1/sqrt(n), 1/sqrt(n)) with n = in_channels * kh * kw, bias 0, offset conv 0
        n = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        stdv = 1.0 / math.sqrt(n)
        with torch.no_grad():
            self.weight.uniform_(-stdv, stdv)
            if self.bias is not None:
                self.bias.zero_()
            self.conv_offset.weight.zero_()
            self.conv_offset.bias.zero_()

    def offset_and_mask(self, feat: Tensor):
        """(offset ``[N, 2*og*kh*kw, Ho, Wo]``, mask ``[N, og*kh*kw, Ho, Wo]``) predicted from ``feat``."""
        out = self.conv_offset(feat)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(mask)

    def forward(self, x: Tensor, feat: Optional[Tensor] = None) -> Tensor:
        offset, mask = self.offset_and_mask(x if feat is None else feat)
        if self.offset_warn_threshold is not None:
            absmean = torch.mean(torch.abs(offset)).item()
            if absmean > self.offset_warn_threshold:
                warnings.warn(f"Offset abs mean is {absmean}, larger than {self.offset_warn_threshold}.",
                              RuntimeWarning, stacklevel=2)
        return _deform(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # mmcv version-1 checkpoints call the offset conv `conv_offset_mask`
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            for suffix in ("weight", "bias"):
                old = f"{prefix}conv_offset_mask.{suffix}"
                if old in state_dict and f"{prefix}conv_offset.{suffix}" not in state_dict:
                    state_dict[f"{prefix}conv_offset.{suffix}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding}" if self.padding != (0, 0) else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += f", deform_groups={self.deform_groups}" if self.deform_groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        return s


__all__ = ["DeformConv2d", "ModulatedDeformConv2d"]
