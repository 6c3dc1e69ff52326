"""The aligned single-frame baseline and the reference-frame interpolation that the initial SR head builds on.

DESIGN.md "Output quality protocol": frame 0 of the burst demosaiced bilinearly, then upsampled bicubically x4 at
the synthetic pipeline's true phase (low-res pixel ``i`` sits on high-res pixel ``4i``: frame 0 carries only the
downsampling-centring shift, see :mod:`burstkern.data.burst`).

- :func:`demosaic_bilinear`: packed RGGB ``[..., 4, h, w]`` -> RGB ``[..., 3, 2h, 2w]`` (normalised convolution,
  so the borders are bilinear over the samples that exist).
- :func:`upsample_true_phase`: bicubic (a = -0.75) with LR pixel ``i`` on HR pixel ``factor * i``.
- :func:`aligned_baseline`: the two on frame 0, clamped to [0, 1]: burst ``[B, T, 4, h, w]`` -> ``[B, 3, 8h, 8w]``.

Example::

    >>> burst = torch.rand(2, 4, 4, 16, 16)
    >>> aligned_baseline(burst).shape
    torch.Size([2, 3, 128, 128])
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.resample import cubic_matrix, resample_separable, separable_applies

__all__ = ["demosaic_bilinear", "upsample_true_phase", "aligned_baseline", "register_translations",
           "merge_burst"]

_K_G = ((0.0, 0.25, 0.0), (0.25, 1.0, 0.25), (0.0, 0.25, 0.0))
_K_RB = ((0.25, 0.5, 0.25), (0.5, 1.0, 0.5), (0.25, 0.5, 0.25))


def demosaic_bilinear(raw: Tensor) -> Tensor:
    """Bilinear demosaicking of packed RGGB ``[..., 4, h, w]`` (R, Gr, Gb, B) -> RGB ``[..., 3, 2h, 2w]``."""
    if raw.dim() < 3 or raw.shape[-3] != 4:
        raise ValueError(f"demosaic_bilinear: expected packed RGGB [..., 4, h, w], got shape {tuple(raw.shape)}")
    *lead, _, h, w = raw.shape
    x = raw.reshape(-1, 4, h, w)
    n = x.shape[0]
    full = torch.zeros(n, 3, 2 * h, 2 * w, dtype=x.dtype, device=x.device)
    mask = torch.zeros(1, 3, 2 * h, 2 * w, dtype=x.dtype, device=x.device)
    full[:, 0, 0::2, 0::2] = x[:, 0]
    full[:, 1, 0::2, 1::2] = x[:, 1]
    full[:, 1, 1::2, 0::2] = x[:, 2]
    full[:, 2, 1::2, 1::2] = x[:, 3]
    mask[:, 0, 0::2, 0::2] = 1
    mask[:, 1, 0::2, 1::2] = 1
    mask[:, 1, 1::2, 0::2] = 1
    mask[:, 2, 1::2, 1::2] = 1
    k = torch.tensor((_K_RB, _K_G, _K_RB), dtype=x.dtype, device=x.device)[:, None]
    num = F.conv2d(full, k, padding=1, groups=3)
    den = F.conv2d(mask, k, padding=1, groups=3)
    return (num / den).reshape(*lead, 3, 2 * h, 2 * w)


def upsample_true_phase(img: Tensor, factor: int = 4) -> Tensor:
    """Bicubic upsampling ``[..., C, H, W]`` -> ``[..., C, factor*H, factor*W]`` with LR pixel ``i`` on HR pixel
    ``factor * i`` (border pixels replicated beyond the last sample); not clamped."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"upsample_true_phase: factor must be an int >= 1, got {factor!r}")
    *lead, c, h, w = img.shape
    x = img.reshape(-1, c, h, w)
    if factor == 1:
        return img

    def lr_pos(n_lr: int, dtype: torch.dtype) -> Tensor:  # the LR coordinate of every HR pixel
        return torch.arange(factor * n_lr, dtype=dtype, device=img.device) / factor

    if separable_applies(x):  # the same bicubic taps as grid_sample below, as two GEMMs (burstkern.nn.resample)
        wy, wx = (cubic_matrix(lr_pos(n, torch.float64), n) for n in (h, w))
        return resample_separable(x, wy, wx).reshape(*lead, c, factor * h, factor * w)

    def coords(n_lr: int) -> Tensor:
        return 2.0 * lr_pos(n_lr, torch.float32) / max(n_lr - 1, 1) - 1.0  # align_corners=True

    gy, gx = coords(h), coords(w)
    grid = torch.stack((gx[None, :].expand(len(gy), -1), gy[:, None].expand(-1, len(gx))), dim=-1)
    grid = grid[None].expand(x.shape[0], -1, -1, -1).to(x.dtype)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=True)
    return out.reshape(*lead, c, factor * h, factor * w)


def aligned_baseline(burst: Tensor, factor: int = 4) -> Tensor:
    """The aligned single-frame baseline: frame 0 of ``burst`` ``[B, T, 4, h, w]`` demosaiced bilinearly, then
    bicubic x ``factor`` at the true phase, clamped to [0, 1]: ``[B, 3, 2·factor·h, 2·factor·w]`` linear RGB."""
    if burst.dim() != 5 or burst.shape[2] != 4:
        raise ValueError(f"aligned_baseline: expected a packed RGGB burst [B, T, 4, h, w], got {tuple(burst.shape)}")
    return upsample_true_phase(demosaic_bilinear(burst[:, 0]), factor).clamp(0.0, 1.0)


def _sample(img: Tensor, gy: Tensor, gx: Tensor, mode: str = "bicubic") -> Tuple[Tensor, Tensor]:
    """Sample ``img`` ``[N, C, h, w]`` at pixel coordinates ``gy`` ``[N, H]``, ``gx`` ``[N, W]`` (separable grid);
    returns (values ``[N, C, H, W]``, validity ``[N, 1, H, W]``: inside the frame)."""
    n, c, h, w = img.shape
    if mode == "bicubic" and separable_applies(img):  # grid_sample's taps, as two GEMMs (burstkern.nn.resample)
        out = resample_separable(img, cubic_matrix(gy, h), cubic_matrix(gx, w))
    else:
        ny = 2.0 * gy / max(h - 1, 1) - 1.0
        nx = 2.0 * gx / max(w - 1, 1) - 1.0
        grid = torch.stack((nx[:, None, :].expand(n, ny.shape[1], nx.shape[1]),
                            ny[:, :, None].expand(n, ny.shape[1], nx.shape[1])), dim=-1).to(img.dtype)
        out = F.grid_sample(img, grid, mode=mode, padding_mode="border", align_corners=True)
    valid = ((gy >= 0) & (gy <= h - 1))[:, None, :, None] & ((gx >= 0) & (gx <= w - 1))[:, None, None, :]
    return out, valid.to(img.dtype)


def _lerp_index(pos: Tensor, n: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Linear-interpolation taps of pixel positions ``pos`` on an axis of ``n`` pixels, clamped to [0, n-1] as
    grid_sample's border padding does: (lower index, upper index, weight of the upper)."""
    p = pos.clamp(0.0, n - 1)
    lo = p.floor()
    return lo.long(), (lo.long() + 1).clamp_max(n - 1), p - lo


def _shift_errors(mov: Tensor, ref: Tensor, cy: Tensor, cx: Tensor, min_overlap: float) -> Tensor:
    """Mean squared difference over the overlap between ``ref`` and ``mov`` shifted by every candidate (dy, dx) of
    the grid ``cy`` x ``cx``: ``mov``, ``ref`` ``[n, h, w]``; ``cy`` ``[n, Ky]``, ``cx`` ``[n, Kx]`` in pixels;
    returns ``[n, Ky * Kx]`` (row-major in (dy, dx)), inf where the overlap is below ``min_overlap``.

    The shifted frame is bilinear and separable: interpolated along x once per dx, then along y per dy, so the
    search costs two lerps per candidate pixel (no grid of coordinates, no copy of the frame per candidate), one
    dy row of candidates at a time (memory: Kx frames)."""
    n, h, w = mov.shape
    ys = torch.arange(h, dtype=mov.dtype, device=mov.device)
    xs = torch.arange(w, dtype=mov.dtype, device=mov.device)
    gx = xs[None, None, :] + cx[..., None]                                     # [n, Kx, w]
    gy = ys[None, None, :] + cy[..., None]                                     # [n, Ky, h]
    vx = ((gx >= 0) & (gx <= w - 1)).to(mov.dtype)
    vy = ((gy >= 0) & (gy <= h - 1)).to(mov.dtype)
    x0, x1, ax = _lerp_index(gx, w)
    kx = cx.shape[1]
    rows = mov[:, None].expand(n, kx, h, w)
    a = rows.gather(3, x0[:, :, None, :].expand(n, kx, h, w))
    xl = a + ax[:, :, None, :] * (rows.gather(3, x1[:, :, None, :].expand(n, kx, h, w)) - a)  # [n, Kx, h, w]
    y0, y1, ay = _lerp_index(gy, h)
    frames = []
    for i in range(n):  # whole rows per dy: index_select copies rows, a gather indexes every element
        xi, errs = xl[i], []                                                   # [Kx, h, w]
        for j in range(cy.shape[1]):
            top, bot = xi.index_select(1, y0[i, j]), xi.index_select(1, y1[i, j])
            v = top + ay[i, j][None, :, None] * (bot - top)
            d = (v - ref[i]).square_().mul_(vy[i, j][None, :, None]).mul_(vx[i][:, None, :])
            errs.append(d.sum((1, 2)))                                         # [Kx]
        frames.append(torch.stack(errs))
    err = torch.stack(frames) if frames else mov.new_zeros(0, cy.shape[1], kx)  # [n, Ky, Kx]
    cnt = vy.sum(-1)[:, :, None] * vx.sum(-1)[:, None, :]
    err = torch.where(cnt >= min_overlap * h * w, err / cnt.clamp_min(1.0), torch.full_like(err, float("inf")))
    return err.reshape(n, cy.shape[1] * kx)


@torch.no_grad()
def register_translations(lr: Tensor, max_shift: float = 8.0, fine_step: float = 0.125,
                          min_overlap: float = 0.25) -> Tensor:
    """Global translation of every frame relative to frame 0, by exhaustive search (integer, then ±1 px at
    ``fine_step``) of the mean squared difference of the green channels over the overlap (bilinear shifts;
    :func:`_shift_errors`).

    ``lr``: demosaiced frames ``[B, T, 3, H, W]``; returns ``[B, T, 2]`` (dy, dx) in LR pixels such that frame t at
    ``q + d_t`` shows what frame 0 shows at ``q`` (d_0 = 0)."""
    b, t, _, h, w = lr.shape
    g = lr[:, :, 1]                                                            # [B, T, H, W]
    ref = g[:, :1].expand(b, t - 1, h, w).reshape(-1, h, w)
    mov = g[:, 1:].reshape(-1, h, w)
    n = mov.shape[0]
    best = torch.zeros(n, 2, dtype=lr.dtype, device=lr.device)
    m = int(min(max_shift, h - 2, w - 2))
    for offsets in (torch.arange(-m, m + 1, dtype=lr.dtype, device=lr.device),
                    torch.arange(-1.0, 1.0 + 1e-6, fine_step, dtype=lr.dtype, device=lr.device)):
        k = offsets.numel()
        cy, cx = best[:, 0:1] + offsets[None], best[:, 1:2] + offsets[None]     # [n, K] each
        idx = _shift_errors(mov, ref, cy, cx, min_overlap).argmin(1)           # row-major (dy, dx)
        best = torch.stack((cy.gather(1, (idx // k)[:, None])[:, 0], cx.gather(1, (idx % k)[:, None])[:, 0]), 1)
    out = torch.zeros(b, t, 2, dtype=lr.dtype, device=lr.device)
    out[:, 1:] = best.view(b, t - 1, 2)
    return out


@torch.no_grad()
def merge_burst(burst: Tensor, factor: int = 4, robustness: float = 0.1) -> Tensor:
    """Classical multi-frame estimate (shift-and-add): every frame demosaiced bilinearly, registered to frame 0 by
    a global translation (:func:`register_translations`), sampled bicubically at the HR grid (LR pixel ``i`` of
    frame 0 on HR pixel ``factor·i``) and averaged where it is inside its frame and agrees with frame 0 within
    ``robustness`` (a Gaussian weight on the difference). Frame 0 alone is :func:`aligned_baseline`.

    burst ``[B, T, 4, h, w]`` in [0, 1] -> ``[B, 3, 2·factor·h, 2·factor·w]`` linear RGB in [0, 1]."""
    if burst.dim() != 5 or burst.shape[2] != 4:
        raise ValueError(f"merge_burst: expected a packed RGGB burst [B, T, 4, h, w], got {tuple(burst.shape)}")
    b, t = burst.shape[:2]
    lr = demosaic_bilinear(burst.float())                                      # [B, T, 3, H, W]
    base = upsample_true_phase(lr[:, 0], factor).clamp(0.0, 1.0)
    if t == 1:
        return base
    h, w = lr.shape[-2:]
    d = register_translations(lr)                                              # [B, T, 2]
    py = torch.arange(factor * h, dtype=lr.dtype, device=lr.device) / factor
    px = torch.arange(factor * w, dtype=lr.dtype, device=lr.device) / factor
    gy = py[None, None, :] + d[..., 0:1]                                       # [B, T, HH]
    gx = px[None, None, :] + d[..., 1:2]
    vals, valid = _sample(lr.reshape(b * t, 3, h, w), gy.reshape(b * t, -1), gx.reshape(b * t, -1))
    vals = vals.clamp(0.0, 1.0).view(b, t, 3, factor * h, factor * w)
    valid = valid.view(b, t, 1, factor * h, factor * w)
    agree = torch.exp(-0.5 * ((vals - base[:, None]).square().mean(2, keepdim=True)) / robustness ** 2)
    wgt = valid * agree
    wgt[:, 0] = 1.0
    return ((wgt * vals).sum(1) / wgt.sum(1)).clamp(0.0, 1.0).to(burst.dtype)
