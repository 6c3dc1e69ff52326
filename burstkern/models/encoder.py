"""Burst encoder with deformable alignment, and the deterministic initial burst-SR head.

RAW burst ``[B, T, 4, h, w]`` (RGGB packed) → per-frame features → pyramid (coarse-to-fine) offset prediction
with a cascade, modulated deformable alignment of every frame to frame 0 (all B·T frames in ONE
``deform_conv2d`` call per level: N = B·T) → attention-weighted fusion across frames → condition features
``[B, C, h, w]``. The head turns them into the initial SR image ``x_init`` ``[B, 3, 8h, 8w]`` (pixel shuffle ×8:
×2 for the RGGB packing, ×4 for the super-resolution).

The structure follows the PCD alignment of EDVR / BIPNet / Burstormer at library scale. Every deformable conv is
a :class:`burstkern.nn.ModulatedDeformConv2d`, so the active burstkern backend decides which kernels run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import ModulatedDeformConv2d
from ..profiling import nvtx_range


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


class ResBlock(nn.Module):
    """conv → LeakyReLU → conv, plus the input."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = conv3x3(ch, ch)
        self.conv2 = conv3x3(ch, ch)

    def forward(self, x):
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.1))


class PyramidAlign(nn.Module):
    """Coarse-to-fine deformable alignment of each frame's features to the reference frame's, plus a cascade.

    Offsets at level l are predicted from [frame, reference] features and the ×2-upsampled offset features of
    level l+1; the aligned features of level l+1 are merged in as well (EDVR's PCD).
    """

    def __init__(self, ch: int, levels: int = 3, deform_groups: int = 8):
        super().__init__()
        self.levels = levels
        self.offset_in = nn.ModuleList(conv3x3(2 * ch, ch) for _ in range(levels))
        self.offset_merge = nn.ModuleList(conv3x3(2 * ch, ch) for _ in range(levels - 1))
        self.dcn = nn.ModuleList(ModulatedDeformConv2d(ch, ch, 3, padding=1, deform_groups=deform_groups)
                                 for _ in range(levels))
        self.feat_merge = nn.ModuleList(conv3x3(2 * ch, ch) for _ in range(levels - 1))
        self.cascade_offset = nn.Sequential(conv3x3(2 * ch, ch), nn.LeakyReLU(0.1), conv3x3(ch, ch))
        self.cascade_dcn = ModulatedDeformConv2d(ch, ch, 3, padding=1, deform_groups=deform_groups)

    def forward(self, feats, refs):
        """``feats``/``refs``: per level (fine first) ``[B*T, C, h_l, w_l]``; returns aligned ``[B*T, C, h, w]``."""
        up_offset = up_feat = None
        for lvl in reversed(range(self.levels)):
            off = F.leaky_relu(self.offset_in[lvl](torch.cat([feats[lvl], refs[lvl]], 1)), 0.1)
            if up_offset is not None:
                off = F.leaky_relu(self.offset_merge[lvl](torch.cat([off, up_offset * 2], 1)), 0.1)
            aligned = self.dcn[lvl](feats[lvl], off)
            if up_feat is not None:
                aligned = self.feat_merge[lvl](torch.cat([aligned, up_feat], 1))
            aligned = F.leaky_relu(aligned, 0.1)
            if lvl > 0:
                up_offset = F.interpolate(off, scale_factor=2, mode="bilinear", align_corners=False)
                up_feat = F.interpolate(aligned, scale_factor=2, mode="bilinear", align_corners=False)
        off = self.cascade_offset(torch.cat([aligned, refs[0]], 1))
        return F.leaky_relu(self.cascade_dcn(aligned, off), 0.1)


class BurstEncoder(nn.Module):
    """RAW burst ``[B, T, 4, h, w]`` → fused condition features ``[B, ch, h, w]``.

    Args:
        in_ch: channels per RAW frame (4 for packed RGGB).
        ch: feature channels (48 or 64 in the papers).
        num_blocks: residual blocks of the per-frame feature extractor.
        levels: pyramid levels of the alignment (h and w must be divisible by 2**(levels-1)).
        deform_groups: offset groups of every deformable conv (must divide ch).

    Example::

        >>> enc = BurstEncoder(ch=16, deform_groups=4)
        >>> enc(torch.rand(2, 8, 4, 16, 16)).shape
        torch.Size([2, 16, 16, 16])
    """

    def __init__(self, in_ch: int = 4, ch: int = 64, num_blocks: int = 2, levels: int = 3, deform_groups: int = 8):
        super().__init__()
        self.levels = levels
        self.head = nn.Sequential(conv3x3(in_ch, ch), nn.LeakyReLU(0.1), *[ResBlock(ch) for _ in range(num_blocks)])
        self.down = nn.ModuleList(nn.Sequential(conv3x3(ch, ch, 2), nn.LeakyReLU(0.1), conv3x3(ch, ch),
                                                nn.LeakyReLU(0.1)) for _ in range(levels - 1))
        self.align = PyramidAlign(ch, levels, deform_groups)
        self.attn = nn.Sequential(conv3x3(2 * ch, ch), nn.LeakyReLU(0.1), conv3x3(ch, 1))
        self.fuse = nn.Sequential(conv3x3(ch, ch), nn.LeakyReLU(0.1), ResBlock(ch))

    def forward(self, burst: torch.Tensor) -> torch.Tensor:
        if burst.dim() != 5:
            raise ValueError(f"burst must be [B, T, C, h, w], got shape {tuple(burst.shape)}")
        b, t, c, h, w = burst.shape
        if h % 2 ** (self.levels - 1) or w % 2 ** (self.levels - 1):
            raise ValueError(f"burst height and width must be divisible by {2 ** (self.levels - 1)} "
                             f"({self.levels} pyramid levels), got {h}x{w}")
        with nvtx_range("encode"):
            feat = self.head(burst.reshape(b * t, c, h, w))
            feats = [feat]
            for down in self.down:
                feats.append(down(feats[-1]))

        def reference(f):  # frame 0 of each burst, repeated for all its frames
            f5 = f.view(b, t, *f.shape[1:])
            return f5[:, :1].expand_as(f5).reshape_as(f)

        with nvtx_range("align"):
            aligned = self.align(feats, [reference(f) for f in feats])
        with nvtx_range("fuse"):
            ref = reference(feats[0])
            logits = self.attn(torch.cat([aligned, ref], 1)).view(b, t, 1, h, w)
            weights = torch.softmax(logits, dim=1)
            fused = (weights * aligned.view(b, t, -1, h, w)).sum(1)
            return self.fuse(fused)


class InitialSRHead(nn.Module):
    """Fused features ``[B, ch, h, w]`` → initial SR image ``[B, 3, scale·h, scale·w]`` (pixel shuffle)."""

    def __init__(self, ch: int = 64, scale: int = 8, num_blocks: int = 2, out_ch: int = 3):
        super().__init__()
        self.body = nn.Sequential(*[ResBlock(ch) for _ in range(num_blocks)])
        self.to_pixels = conv3x3(ch, out_ch * scale * scale)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        with nvtx_range("initial_sr"):
            return self.shuffle(self.to_pixels(self.body(feat)))
