"""Modulated deformable convolution (DCNv2) in plain PyTorch: the spec every backend is pinned to.

Numerics equal ``torchvision.ops.deform_conv2d`` (forward and every gradient, in fp64): bilinear sampling
where each of the four corners outside the image counts as zero. (torchvision also returns 0 for points with
y <= -1 or y >= H; with corners-as-zero that is already so, and at y == -1 exactly both give torchvision's
one-sided offset gradient.) fp16/bf16 inputs are computed in fp32 and rounded once at the end.

Non-finite offsets follow torchvision's CPU kernel: a point with y <= -1, y >= H, x <= -1 or x >= W (so any
+-inf coordinate) samples 0; a NaN coordinate otherwise samples NaN; no such point reaches grad input; its grad
offset is 0, except that the y-offset gradient is NaN when x is +-inf / NaN and the x-offset gradient is NaN
when y is (torchvision's coordinate weight multiplies a fractional part of inf / NaN). Corner indices are int64,
exact at any size (never computed in the float dtype).

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


def _corners(inp: torch.Tensor, offset: torch.Tensor, kh: int, kw: int, stride, padding, dilation):
    """The bilinear stencil of every sample point.

    Returns ``img`` ``[N, og, Cin/og, H*W]``; per corner, ``(idx, wy, wx, valid, sy, sx)`` of shape
    ``[N, og, 1, K*Ho*Wo]``: flat int64 corner index (clamped), the two 1-D weights, whether the corner lies in the
    image, and the signs of d(wy)/dy and d(wx)/dx (floor() is locally constant, so these are the derivatives);
    and ``(fill, nan_y, nan_x)`` of the same shape: added to the sampled value (NaN for a NaN point that is not
    outside, else 0) and to the y / x offset gradients (NaN where torchvision's is, see the module docstring).
    Only points with y in [-1, H) and x in [-1, W) keep their stencil; any other point has no valid corner.
    """
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
    real = (py >= -1) & (py < h) & (px >= -1) & (px < w)
    outside = (py <= -1) | (py >= h) | (px <= -1) | (px >= w)
    zero = torch.zeros((), dtype=dt, device=dev)
    nan = torch.full((), float("nan"), dtype=dt, device=dev)
    fill = torch.where(real | outside, zero, nan)
    nan_y = torch.where(real | torch.isfinite(px), zero, nan)
    nan_x = torch.where(real | torch.isfinite(py), zero, nan)
    py, px = torch.where(real, py, zero), torch.where(real, px, zero)
    y0 = torch.floor(py)
    x0 = torch.floor(px)
    ly, lx = py - y0, px - x0
    y0i, x0i = y0.long(), x0.long()
    corners = []
    for dy, wy, sy in ((0, 1 - ly, -1.0), (1, ly, 1.0)):
        for dx, wx, sx in ((0, 1 - lx, -1.0), (1, lx, 1.0)):
            yc, xc = y0i + dy, x0i + dx
            valid = real & (yc >= 0) & (yc <= h - 1) & (xc >= 0) & (xc <= w - 1)
            idx = yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)
            corners.append((idx, wy, wx, valid, sy, sx))
    return inp.reshape(n, og, cin // og, h * w), corners, (fill, nan_y, nan_x)


def _gather(img: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The corner values, 0 where the corner is outside the image. Selected, not multiplied by a 0/1 mask: an
    outside corner's clamped index reads a real pixel, and a NaN there must not leak (torchvision reads nothing)."""
    v = torch.gather(img, 3, idx.expand(*img.shape[:3], idx.shape[-1]))
    return torch.where(valid, v, torch.zeros((), dtype=v.dtype, device=v.device))


def _sample(img, corners, fill):
    return sum(_gather(img, idx, valid) * (wy * wx) for idx, wy, wx, valid, _, _ in corners) + fill


def bilinear_columns(inp: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor], kh: int, kw: int,
                     stride, padding, dilation) -> torch.Tensor:
    """Sampled (and masked) columns ``[N, Cin, K, Ho*Wo]`` in ``inp``'s dtype."""
    n, cin = inp.shape[:2]
    k = kh * kw
    og = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[2], offset.shape[3]
    img, corners, (fill, _, _) = _corners(inp, offset, kh, kw, stride, padding, dilation)
    cols = _sample(img, corners, fill)
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


def _chunks(inp: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor):
    """Batch slices whose column buffer stays under _MAX_COLUMN_ELEMENTS (at least one, also for N == 0)."""
    per_sample = max(1, inp.shape[1] * weight.shape[2] * weight.shape[3] * offset.shape[2] * offset.shape[3])
    step = max(1, _MAX_COLUMN_ELEMENTS // per_sample)
    return [slice(s, s + step) for s in range(0, max(inp.shape[0], 1), step)]


def deform_conv2d(inp: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
                  mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``[N, Cout, Ho, Wo]`` in ``inp``'s dtype; arguments as ``torchvision.ops.deform_conv2d`` (checked by op.py)."""
    stride, padding, dilation = (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w)
    cd = compute_dtype(inp.dtype)
    up = lambda t: None if t is None else t.to(cd)  # noqa: E731
    outs = [_forward_chunk(up(inp[sl]), up(offset[sl]), up(weight), up(bias), stride, padding, dilation,
                           None if mask is None else up(mask[sl]))
            for sl in _chunks(inp, weight, offset)]
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.to(inp.dtype)


def deform_conv2d_backward(grad: torch.Tensor, inp: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                           bias: Optional[torch.Tensor], stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                           dil_h: int, dil_w: int, mask: Optional[torch.Tensor]):
    """Closed-form gradients of :func:`deform_conv2d`: (grad_input, grad_offset, grad_weight, grad_bias, grad_mask),
    None for an absent bias/mask. Equal to autograd through the forward above (and to torchvision's backward).

    Written out rather than derived with torch.func inside the op, so the backward op also runs under
    opcheck's schema, fake and AOT modes.
    """
    stride, padding, dilation = (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w)
    cd = compute_dtype(inp.dtype)
    n, cin, h, w = inp.shape
    cout, cin_g, kh, kw = weight.shape
    groups, k = cin // cin_g, kh * kw
    og = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[2], offset.shape[3]
    wmat = weight.to(cd).reshape(groups, cout // groups, cin_g * k)
    g_input = torch.zeros(inp.shape, dtype=cd, device=inp.device)
    g_offset = torch.zeros(offset.shape, dtype=cd, device=inp.device)
    g_mask = None if mask is None else torch.zeros(mask.shape, dtype=cd, device=inp.device)
    g_weight = torch.zeros(wmat.shape, dtype=cd, device=inp.device)
    for sl in _chunks(inp, weight, offset):
        x, off = inp[sl].to(cd), offset[sl].to(cd)
        m = x.shape[0]
        if m == 0:
            continue
        img, corners, (fill, nan_y, nan_x) = _corners(x, off, kh, kw, stride, padding, dilation)
        sampled = _sample(img, corners, fill)
        sampled = sampled.view(m, og, cin // og, k, ho * wo)
        msk = None if mask is None else mask[sl].to(cd).reshape(m, og, 1, k, ho * wo)
        cols = sampled if msk is None else sampled * msk
        g_out = grad[sl].to(cd).reshape(m, groups, cout // groups, ho * wo)
        g_weight += torch.einsum("ngol,ngkl->gok", g_out, cols.reshape(m, groups, cin_g * k, ho * wo))
        g_cols = torch.einsum("gok,ngol->ngkl", wmat, g_out).reshape(m, og, cin // og, k, ho * wo)
        if msk is not None:
            g_mask[sl] = (g_cols * sampled).sum(2).reshape(m, og * k, ho, wo)
            g_cols = g_cols * msk
        g_cols = g_cols.reshape(m, og, cin // og, k * ho * wo)
        g_img = torch.zeros_like(img)
        g_y, g_x = nan_y, nan_x
        zero = torch.zeros((), dtype=cd, device=inp.device)
        for idx, wy, wx, valid, sy, sx in corners:
            g_img.scatter_add_(3, idx.expand_as(g_cols), torch.where(valid, g_cols * (wy * wx), zero))
            g_v = (g_cols * _gather(img, idx, valid)).sum(2, keepdim=True)
            g_y = g_y + torch.where(valid, g_v * (sy * wx), zero)
            g_x = g_x + torch.where(valid, g_v * (wy * sx), zero)
        g_input[sl] = g_img.reshape(m, cin, h, w)
        g_off = g_offset[sl].view(m, og, k, 2, ho, wo)
        g_off[:, :, :, 0] = g_y.reshape(m, og, k, ho, wo)
        g_off[:, :, :, 1] = g_x.reshape(m, og, k, ho, wo)
    g_bias = None if bias is None else grad.to(cd).sum((0, 2, 3)).to(bias.dtype)
    return (g_input.to(inp.dtype), g_offset.to(offset.dtype), g_weight.reshape(weight.shape).to(weight.dtype),
            g_bias, None if mask is None else g_mask.to(mask.dtype))
