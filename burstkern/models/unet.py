"""SFT-conditioned U-Net denoiser (the raw network F of EDM's preconditioning).

ADM-style U-Net at library scale: a timestep embedding of ``c_noise``; residual blocks whose first norm is a
:class:`burstkern.nn.SPADEGroupNorm` conditioned on the burst features (bicubic-resized to the block's
resolution: BSRD / E-BSRD's ``GroupNorm32(h) * (1 + gamma) + beta``) and whose second norm is a
:class:`burstkern.nn.ScaleShiftGroupNorm` driven by the timestep embedding (ADM's scale-shift norm); both fuse
their activation. Stride-2 conv downsampling, nearest + conv upsampling, skip concatenation, zero-initialised
output convs. ``forward(x_in, c_noise, cond)`` returns F; EDM preconditioning lives in the samplers' fused ops.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import ScaleShiftGroupNorm, SPADEGroupNorm
from ..profiling import nvtx_range


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_features(c_noise: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[N, dim]`` of the per-sample noise level ``c_noise`` ``[N]`` (or a scalar)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
    # EDM's c_noise = ln(sigma)/4 is O(1): scale like ADM's integer timesteps so the features are informative
    args = (c_noise.float().reshape(-1, 1) * 1000.0) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class PointwiseConv(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (same parameters and state dict) that, on channels_last CPU tensors in eager mode, runs
    as one GEMM over the pixels. Why: ATen sends a 1x1 convolution of a batch below 16 at one thread to its
    unblocked ``_slow_conv2d_forward`` instead of oneDNN (ConvUtils ``use_mkldnn``); measured 15 ms for the five
    skip convs of one EBSRD("tiny") one-step call, 3% of it. Differentiable (a linear layer), so training and
    inference compute the same values."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dim() == 4 and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling() and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)  # [N, H, W, Cout]
            return y.permute(0, 3, 1, 2)  # channels_last strides, as the convolution would return
        return super().forward(x)


class SFTResBlock(nn.Module):
    """SPADE(burst) norm + SiLU → conv → time scale-shift norm + SiLU → conv, plus a skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, cond_ch: int, num_groups: int = 32, hidden: int = 128):
        super().__init__()
        self.norm1 = SPADEGroupNorm(cin, cond_ch, hidden_channels=hidden, num_groups=num_groups, act="silu")
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = ScaleShiftGroupNorm(cout, emb_dim, num_groups=num_groups, act="silu")
        self.conv2 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = PointwiseConv(cin, cout) if cin != cout else nn.Identity()

    def forward(self, x, emb, cond):
        h = self.conv1(self.norm1(x, cond))
        h = self.conv2(self.norm2(h, emb))
        return self.skip(x) + h


class SFTUNet(nn.Module):
    """U-Net denoiser F(x_in, c_noise, cond).

    Args:
        in_ch / out_ch: image channels (3).
        ch: base width (128 in the ``paper`` preset).
        mults: width multiplier per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        cond_ch: channels of the burst condition features.
        num_groups: GroupNorm groups (32, as GroupNorm32; must divide every width).
        spade_hidden: hidden width of each SPADE norm's shared conv.

    Example::

        >>> net = SFTUNet(ch=32, mults=(1, 2), num_res_blocks=1, cond_ch=16, num_groups=8, spade_hidden=16)
        >>> net(torch.randn(2, 3, 32, 32), torch.zeros(2), torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ch: int = 128, mults: Sequence[int] = (1, 1, 2, 2),
                 num_res_blocks: int = 2, cond_ch: int = 64, num_groups: int = 32, spade_hidden: int = 128):
        super().__init__()
        self.ch = ch
        emb_dim = 4 * ch
        self.emb = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        block = lambda a, b: SFTResBlock(a, b, emb_dim, cond_ch, num_groups, spade_hidden)  # noqa: E731
        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        for lvl, m in enumerate(mults):
            for _ in range(num_res_blocks):
                self.down.append(block(cur, ch * m))
                cur = ch * m
                skips.append(cur)
            if lvl != len(mults) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid = nn.ModuleList([block(cur, cur), block(cur, cur)])
        self.up = nn.ModuleList()
        for lvl, m in reversed(list(enumerate(mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(cur + skips.pop(), ch * m))
                cur = ch * m
            if lvl != 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cur, cur, 3, padding=1)))
        self.norm_out = nn.GroupNorm(num_groups, cur)
        self.conv_out = zero_init(nn.Conv2d(cur, out_ch, 3, padding=1))
        self.levels = len(mults)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        div = 2 ** (self.levels - 1)
        if x_in.shape[-1] % div or x_in.shape[-2] % div:
            raise ValueError(f"x_in height and width must be divisible by {div}, got {tuple(x_in.shape[-2:])}")
        with nvtx_range("denoise"):
            c_noise = c_noise.reshape(-1).expand(x_in.shape[0])
            emb = self.emb(timestep_features(c_noise, self.ch).to(x_in.dtype))
            # channels_last through the trunk: oneDNN's CPU convolutions at these widths (16-96 channels) run
            # 1.4-2.2x faster in NHWC than in NCHW (measured at 384², one core), and every op here keeps the layout
            fmt = torch.channels_last if x_in.device.type == "cpu" else torch.contiguous_format
            h = self.conv_in(x_in.contiguous(memory_format=fmt))
            # the condition resized to each level once, not once per SPADE norm (SPADEGroupNorm skips equal sizes)
            sized = {}

            def cond_at(t):
                size = tuple(t.shape[-2:])
                if size not in sized:
                    c = cond if tuple(cond.shape[-2:]) == size else SPADEGroupNorm.resize(cond, list(size))
                    sized[size] = c.contiguous(memory_format=fmt)
                return sized[size]

            hs = [h]
            for layer in self.down:
                h = layer(h, emb, cond_at(h)) if isinstance(layer, SFTResBlock) else layer(h)
                hs.append(h)
            for layer in self.mid:
                h = layer(h, emb, cond_at(h))
            for layer in self.up:
                if isinstance(layer, SFTResBlock):
                    h = torch.cat([h, hs.pop()], 1)
                    h = layer(h, emb, cond_at(h))
                else:
                    h = layer(h)
            return self.conv_out(F.silu(self.norm_out(h))).contiguous()
