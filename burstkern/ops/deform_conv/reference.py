"""Modulated deformable convolution (DCNv2) in plain PyTorch: the spec every backend is pinned to.

Numerics equal ``torchvision.ops.deform_conv2d`` (forward and every gradient, in fp64): bilinear sampling
where each of the four corners outside the image counts as zero. (torchvision also returns 0 for points with
y <= -1 or y >= H; with corners-as-zero that is already so, and at y == -1 exactly both give torchvision's
one-sided offset gradient.) fp16/bf16 inputs are computed in fp32 and rounded once at the end.

This is an im2col + grouped GEMM: clear, not fast; its column buffer is N*Cin*K*Ho*Wo elements, so it
processes the batch in chunks to bound memory.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._common import compute_dtype

# Column buffer elements per chunk (fp32: 256 MiB): bounds the reference's memory at large N.
_MAX_COLUMN_ELEMENTS = 1 << 26


def output_size(h: int, w: int, kh: int, kw: int, stride, padding, dilation) -> tuple:
    ho = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    return ho, wo


def bilinear_columns(inp: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor], kh: int, kw: int,
                     stride, padding, dilation) -> torch.Tensor:
    """Sampled (and masked) columns ``[N, Cin, K, Ho*Wo]`` in ``inp``'s dtype."""
    n, cin, h, w = inp.shape
    k = kh * kw
    og = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[2], offset.shape[3]
    dt, dev = inp.dtype, inp.device
    # base sampling grid per tap: [K, Ho, Wo]
    ki = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dilation[0]
    kj = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dilation[1]
    oy = torch.arange(ho, device=dev, dtype=dt) * stride[0] - padding[0]
    ox = torch.arange(wo, device=dev, dtype=dt) * stride[1] - padding[1]
    base_y = ki[:, None, None] + oy[None, :, None]
    base_x = kj[:, None, None] + ox[None, None, :]
    off = offset.view(n, og, k, 2, ho, wo)
    py = (base_y + off[:, :, :, 0]).reshape(n, og, 1, k * ho * wo)
    px = (base_x + off[:, :, :, 1]).reshape(n, og, 1, k * ho * wo)
    y0 = torch.floor(py)
    x0 = torch.floor(px)
    ly, lx = py - y0, px - x0
    img = inp.reshape(n, og, cin // og, h * w)
    cols = None
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yc, xc = y0 + dy, x0 + dx
            valid = (yc >= 0) & (yc <= h - 1) & (xc >= 0) & (xc <= w - 1)
            idx = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).long()
            v = torch.gather(img, 3, idx.expand(n, og, cin // og, idx.shape[-1]))
            term = v * (wy * wx * valid.to(dt))
            cols = term if cols is None else cols + term
    cols = cols.view(n, og, cin // og, k, ho * wo)
    if mask is not None:
        cols = cols * mask.reshape(n, og, 1, k, ho * wo)
    return cols.reshape(n, cin, k, ho * wo)


def _forward_chunk(inp, offset, weight, bias, stride, padding, dilation, mask):
    n = inp.shape[0]
    cout, cin_g, kh, kw = weight.shape
    groups = inp.shape[1] // cin_g
    ho, wo = offset.shape[2], offset.shape[3]
    cols = bilinear_columns(inp, offset, mask, kh, kw, stride, padding, dilation)
    cols = cols.reshape(n, groups, cin_g * kh * kw, ho * wo)
    wmat = weight.reshape(groups, cout // groups, cin_g * kh * kw)
    out = torch.einsum("gok,ngkl->ngol", wmat, cols).reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + bias.view(1, cout, 1, 1)
    return out


def deform_conv2d(inp: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
                  mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``[N, Cout, Ho, Wo]`` in ``inp``'s dtype; arguments as ``torchvision.ops.deform_conv2d`` (checked by op.py)."""
    stride, padding, dilation = (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w)
    cd = compute_dtype(inp.dtype)
    up = lambda t: None if t is None else t.to(cd)  # noqa: E731
    n = inp.shape[0]
    cin, k = inp.shape[1], weight.shape[2] * weight.shape[3]
    per_sample = max(1, cin * k * offset.shape[2] * offset.shape[3])
    step = max(1, _MAX_COLUMN_ELEMENTS // per_sample)
    outs = []
    for s in range(0, max(n, 1), step):
        sl = slice(s, s + step)
        outs.append(_forward_chunk(up(inp[sl]), up(offset[sl]), up(weight), up(bias), stride, padding, dilation,
                                   None if mask is None else up(mask[sl])))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.to(inp.dtype)
