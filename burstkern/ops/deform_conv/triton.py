"""Triton kernels for ``deform_conv2d`` (modulated DCNv2): implicit GEMM, no column buffer.

Forward (``_deform_conv2d_fwd_kernel``): each program owns BLOCK_M output pixels (n, ho, wo flattened) x BLOCK_N
output channels of one weight group. It loops over the kh*kw taps and, inside, over BLOCK_K-channel chunks of
the group, builds the bilinearly sampled, modulated ``[BLOCK_M, BLOCK_K]`` tile on the fly and feeds it with the
weight tile ``[BLOCK_K, BLOCK_N]`` to ``tl.dot`` (fp32 accumulator). The im2col buffer of the reference
(N*Cin*K*Ho*Wo elements) never exists.

Backward, two kernels, neither with a buffer that grows with N*Cin*K*H*W:

* ``_deform_conv2d_bwd_kernel`` (grad input / offset / mask): one program per BLOCK_M pixels and offset group;
  per tap and channel chunk it forms grad_columns = grad_out x W^T with ``tl.dot``, reduces it against the
  sampled values (grad mask) and their y/x derivatives (grad offset) over the offset group's channels -- each
  (pixel, offset group, tap) is owned by one program, so these are plain stores -- and scatters it to the four
  corners of grad input with ``tl.atomic_add`` into an fp32 buffer. Under
  ``torch.use_deterministic_algorithms(True)`` it instead writes (index, value) per contribution for a bounded
  chunk of pixels and torch reduces them with ``index_put_(accumulate=True)`` (deterministic).
* ``_deform_conv2d_bwd_weight_kernel`` (grad weight): an implicit GEMM reducing over pixels (the sampled tile is
  recomputed, ``dot(tile^T, grad_out)``), split over pixel ranges into an fp32 workspace summed by torch
  (deterministic, no atomics).

grad bias is ``grad_out.sum((0, 2, 3))`` in fp32.

Numerics: fp32 inputs use ``input_precision="ieee"`` (fp32-accurate; no TF32). fp16/bf16 round the sampled tile to
the input dtype for the tensor-core dot (bf16 as hi + lo parts in the forward) and accumulate in fp32; see
``_dot_fp32`` for bf16 under the interpreter. These kernels take fp32/fp16/bf16 (the registry's float64 policy).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .. import _common as C
from ...registry import register_kernel, triton_interpreting
from . import op as _op

# Test hook: when True, every output the launchers allocate with torch.empty is NaN-filled first, so an
# element a kernel forgets to write shows up as an infinite error.
# Deterministic grad-input path: (index, value) contributions per launch chunk, at most this many (12 B each).
_MAX_CONTRIBUTIONS = 1 << 22


# ----------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _tap_geometry(off_ptr, msk_ptr, off_base, msk_base, ogi, tap, base_y, base_x, soc, smc, H, W, ok,
                  K: tl.constexpr, HAS_MASK: tl.constexpr):
    """Top-left corner (y0, x0) of the sample and the four bilinear weights times the modulation, zero for a
    corner outside the image. Shapes broadcast from ``off_base``/``ogi``/``ok``."""
    ch = 2 * (ogi * K + tap)
    dy = tl.load(off_ptr + off_base + ch * soc, mask=ok, other=0.0).to(tl.float32)
    dx = tl.load(off_ptr + off_base + (ch + 1) * soc, mask=ok, other=0.0).to(tl.float32)
    # clamp so floor() fits int32 for huge offsets: beyond [-2, H + 1] every corner is outside anyway
    py = tl.minimum(tl.maximum(base_y + dy, -2.0), H + 1.0)
    px = tl.minimum(tl.maximum(base_x + dx, -2.0), W + 1.0)
    y0f = tl.floor(py)
    x0f = tl.floor(px)
    ly = py - y0f
    lx = px - x0f
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    vy0 = (y0 >= 0) & (y0 < H)
    vy1 = (y0 >= -1) & (y0 < H - 1)
    vx0 = (x0 >= 0) & (x0 < W)
    vx1 = (x0 >= -1) & (x0 < W - 1)
    if HAS_MASK:
        m = tl.load(msk_ptr + msk_base + (ogi * K + tap) * smc, mask=ok, other=0.0).to(tl.float32)
    else:
        m = tl.full(ly.shape, 1.0, tl.float32)
    hy = (1.0 - ly) * m
    ly = ly * m
    w00 = tl.where(vy0 & vx0, hy * (1.0 - lx), 0.0)
    w01 = tl.where(vy0 & vx1, hy * lx, 0.0)
    w10 = tl.where(vy1 & vx0, ly * (1.0 - lx), 0.0)
    w11 = tl.where(vy1 & vx1, ly * lx, 0.0)
    return y0, x0, w00, w01, w10, w11


@triton.jit
def _gather(x_ptr, xb, y0, x0, w00, w01, w10, w11, sxh, sxw, ok):
    """The sampled tile: sum of the four corners times their weights (a zero weight skips its load)."""
    p00 = x_ptr + xb + y0 * sxh + x0 * sxw
    a = w00 * tl.load(p00, mask=ok & (w00 != 0.0), other=0.0).to(tl.float32)
    a += w01 * tl.load(p00 + sxw, mask=ok & (w01 != 0.0), other=0.0).to(tl.float32)
    a += w10 * tl.load(p00 + sxh, mask=ok & (w10 != 0.0), other=0.0).to(tl.float32)
    a += w11 * tl.load(p00 + sxh + sxw, mask=ok & (w11 != 0.0), other=0.0).to(tl.float32)
    return a


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _pixel(p, HO, WO):
    """(n, ho, wo) of flat output pixels p = (n * HO + ho) * WO + wo."""
    t = p // WO
    return t // HO, t % HO, p % WO


@triton.jit
def _deform_conv2d_fwd_kernel(
        x_ptr, off_ptr, msk_ptr, w_ptr, b_ptr, y_ptr,
        M, H, W, HO, WO, CIN_G, COUT_G, CPG,
        sxn, sxc, sxh, sxw, son, soc, soh, sow, smn, smc, smh, smw, swo, swi, swh, sww, syn, syc, syh, syw,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
        OG_UNIFORM: tl.constexpr, IEEE: tl.constexpr, SPLIT_BF16: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_tiles_n = tl.cdiv(COUT_G, BLOCK_N)
    g = pid_n // n_tiles_n
    co_l = (pid_n % n_tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co_l < COUT_G
    co = (g * COUT_G + co_l).to(tl.int64)

    # 64-bit pixel index: N*Ho*Wo times strides can pass 2^31
    p = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    p_ok = p < M
    n, ho, wo = _pixel(p, HO, WO)
    K: tl.constexpr = KH * KW
    off_base = (n * son + ho * soh + wo * sow)[:, None]
    msk_base = (n * smn + ho * smh + wo * smw)[:, None]
    by0 = (ho * stride_h - pad_h).to(tl.float32)[:, None]
    bx0 = (wo * stride_w - pad_w).to(tl.float32)[:, None]
    ok_p = p_ok[:, None]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(K):
        ki = tap // KW
        kj = tap - ki * KW
        base_y = by0 + ki * dil_h
        base_x = bx0 + kj * dil_w
        if OG_UNIFORM:
            # the whole weight group reads one offset group: geometry once per tap, reused by every chunk
            ogi = (g * CIN_G) // CPG
            y0, x0, w00, w01, w10, w11 = _tap_geometry(off_ptr, msk_ptr, off_base, msk_base, ogi, tap, base_y,
                                                       base_x, soc, smc, H, W, ok_p, K, HAS_MASK)
        for c0 in range(0, CIN_G, BLOCK_K):
            cl = c0 + tl.arange(0, BLOCK_K)
            c_ok = cl < CIN_G
            c = g * CIN_G + cl
            ok = ok_p & c_ok[None, :]
            if not OG_UNIFORM:
                # a chunk may straddle offset groups: per-channel offset-group index
                ogi_c = (c // CPG)[None, :]
                y0, x0, w00, w01, w10, w11 = _tap_geometry(off_ptr, msk_ptr, off_base, msk_base, ogi_c, tap,
                                                           base_y, base_x, soc, smc, H, W, ok, K, HAS_MASK)
            xb = (n * sxn)[:, None] + (c.to(tl.int64) * sxc)[None, :]
            a = _gather(x_ptr, xb, y0, x0, w00, w01, w10, w11, sxh, sxw, ok)
            wt = tl.load(w_ptr + co[None, :] * swo + cl[:, None] * swi + ki * swh + kj * sww,
                         mask=c_ok[:, None] & co_ok[None, :], other=0.0)
            # bf16 keeps 8 mantissa bits: the sampled tile goes in as hi + lo bf16 parts (two dots) so only the
            # output rounding is left (bf16 forward error 6e-3 -> 3e-3 at C=8,
            # the output rounding alone is ~2e-3); the gather, not the dot, bounds speed
            a_hi = a.to(wt.dtype)
            if IEEE:
                a_r = a_hi.to(tl.float32)
                if SPLIT_BF16:
                    a_r += (a - a_r).to(wt.dtype).to(tl.float32)
                acc = tl.dot(a_r, wt.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a_hi, wt, acc)
                if SPLIT_BF16:
                    acc = tl.dot((a - a_hi.to(tl.float32)).to(wt.dtype), wt, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    y_off = (n * syn + ho * syh + wo * syw)[:, None] + (co * syc)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=ok_p & co_ok[None, :])


# ----------------------------------------------------------------------------------------------
# backward: grad input, offset, mask
# ----------------------------------------------------------------------------------------------
@triton.jit
def _deform_conv2d_bwd_kernel(
        g_ptr, x_ptr, off_ptr, msk_ptr, w_ptr, gi_ptr, goff_ptr, gmsk_ptr, cidx_ptr, cval_ptr,
        p_start, p_end, H, W, HO, WO, CIN, CIN_G, COUT_G, CPG,
        sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, son, soc, soh, sow, smn, smc, smh, smw, swo, swi, swh, sww,
        sin_, sic, sih, siw, s2n, s2c, s2h, s2w, s3n, s3c, s3h, s3w,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, DETERMINISTIC: tl.constexpr,
        IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    o = tl.program_id(1)  # offset group: its (pixel, tap) sums are owned by this program alone
    p = p_start + pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    p_ok = p < p_end
    n, ho, wo = _pixel(p, HO, WO)
    K: tl.constexpr = KH * KW
    ok_p = p_ok[:, None]
    g_base = (n * sgn + ho * sgh + wo * sgw)[:, None]
    x_base = (n * sxn)[:, None]
    gi_base = (n * sin_)[:, None]

    for tap in range(K):
        ki = tap // KW
        kj = tap - ki * KW
        ch = 2 * (o * K + tap)
        o_off = n * son + ho * soh + wo * sow
        dy = tl.load(off_ptr + o_off + ch * soc, mask=p_ok, other=0.0).to(tl.float32)
        dx = tl.load(off_ptr + o_off + (ch + 1) * soc, mask=p_ok, other=0.0).to(tl.float32)
        py = tl.minimum(tl.maximum((ho * stride_h - pad_h + ki * dil_h).to(tl.float32) + dy, -2.0), H + 1.0)
        px = tl.minimum(tl.maximum((wo * stride_w - pad_w + kj * dil_w).to(tl.float32) + dx, -2.0), W + 1.0)
        y0f = tl.floor(py)
        x0f = tl.floor(px)
        ly = (py - y0f)[:, None]
        lx = (px - x0f)[:, None]
        hy = 1.0 - ly
        hx = 1.0 - lx
        y0 = y0f.to(tl.int32)[:, None]
        x0 = x0f.to(tl.int32)[:, None]
        vy0 = (y0 >= 0) & (y0 < H)
        vy1 = (y0 >= -1) & (y0 < H - 1)
        vx0 = (x0 >= 0) & (x0 < W)
        vx1 = (x0 >= -1) & (x0 < W - 1)
        if HAS_MASK:
            m = tl.load(msk_ptr + n * smn + ho * smh + wo * smw + (o * K + tap) * smc, mask=p_ok,
                        other=0.0).to(tl.float32)[:, None]
        else:
            m = tl.full((BLOCK_M, 1), 1.0, tl.float32)
        acc_m = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc_y = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc_x = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for c0 in range(0, CPG, BLOCK_K):
            cl = c0 + tl.arange(0, BLOCK_K)
            c_ok = cl < CPG
            c = o * CPG + cl
            ok = ok_p & c_ok[None, :]
            # grad columns = grad_out x W^T over the output channels of each channel's weight group; a chunk
            # can straddle weight groups, so loop over the groups it touches with the other channels masked
            gcol = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
            g_first = (o * CPG + c0) // CIN_G
            g_last = (o * CPG + tl.minimum(c0 + BLOCK_K, CPG) - 1) // CIN_G
            for gg in range(g_first, g_last + 1):
                in_g = c_ok & (c // CIN_G == gg)
                ci = c - gg * CIN_G
                for co0 in range(0, COUT_G, BLOCK_N):
                    col = co0 + tl.arange(0, BLOCK_N)
                    co_ok = col < COUT_G
                    co = (gg * COUT_G + col).to(tl.int64)
                    gt = tl.load(g_ptr + g_base + (co * sgc)[None, :], mask=ok_p & co_ok[None, :], other=0.0)
                    wt = tl.load(w_ptr + co[:, None] * swo + ci[None, :] * swi + ki * swh + kj * sww,
                                 mask=co_ok[:, None] & in_g[None, :], other=0.0)
                    if IEEE:
                        gcol = tl.dot(gt.to(wt.dtype).to(tl.float32), wt.to(tl.float32), gcol,
                                      input_precision="ieee")
                    else:
                        gcol = tl.dot(gt.to(wt.dtype), wt, gcol)
            p00 = x_ptr + x_base + (c.to(tl.int64) * sxc)[None, :] + y0 * sxh + x0 * sxw
            v00 = tl.load(p00, mask=ok & vy0 & vx0, other=0.0).to(tl.float32)
            v01 = tl.load(p00 + sxw, mask=ok & vy0 & vx1, other=0.0).to(tl.float32)
            v10 = tl.load(p00 + sxh, mask=ok & vy1 & vx0, other=0.0).to(tl.float32)
            v11 = tl.load(p00 + sxh + sxw, mask=ok & vy1 & vx1, other=0.0).to(tl.float32)
            top = hx * v00 + lx * v01
            bot = hx * v10 + lx * v11
            acc_m += tl.sum(gcol * (hy * top + ly * bot), axis=1)
            gc = gcol * m
            acc_y += tl.sum(gc * (bot - top), axis=1)
            acc_x += tl.sum(gc * (hy * (v01 - v00) + ly * (v11 - v10)), axis=1)
            # grad input: the four corners
            i00 = gi_base + (c.to(tl.int64) * sic)[None, :] + y0 * sih + x0 * siw
            c00 = gc * hy * hx
            c01 = gc * hy * lx
            c10 = gc * ly * hx
            c11 = gc * ly * lx
            if DETERMINISTIC:
                slot = ((((p - p_start)[:, None] * CIN + c[None, :]) * K + tap) * 4).to(tl.int64)
                tl.store(cval_ptr + slot, tl.where(vy0 & vx0, c00, 0.0), mask=ok)
                tl.store(cval_ptr + slot + 1, tl.where(vy0 & vx1, c01, 0.0), mask=ok)
                tl.store(cval_ptr + slot + 2, tl.where(vy1 & vx0, c10, 0.0), mask=ok)
                tl.store(cval_ptr + slot + 3, tl.where(vy1 & vx1, c11, 0.0), mask=ok)
                tl.store(cidx_ptr + slot, tl.where(vy0 & vx0, i00, 0), mask=ok)
                tl.store(cidx_ptr + slot + 1, tl.where(vy0 & vx1, i00 + siw, 0), mask=ok)
                tl.store(cidx_ptr + slot + 2, tl.where(vy1 & vx0, i00 + sih, 0), mask=ok)
                tl.store(cidx_ptr + slot + 3, tl.where(vy1 & vx1, i00 + sih + siw, 0), mask=ok)
            else:
                tl.atomic_add(gi_ptr + i00, c00, mask=ok & vy0 & vx0)
                tl.atomic_add(gi_ptr + i00 + siw, c01, mask=ok & vy0 & vx1)
                tl.atomic_add(gi_ptr + i00 + sih, c10, mask=ok & vy1 & vx0)
                tl.atomic_add(gi_ptr + i00 + sih + siw, c11, mask=ok & vy1 & vx1)
        q = n * s2n + ho * s2h + wo * s2w
        tl.store(goff_ptr + q + ch * s2c, acc_y.to(goff_ptr.dtype.element_ty), mask=p_ok)
        tl.store(goff_ptr + q + (ch + 1) * s2c, acc_x.to(goff_ptr.dtype.element_ty), mask=p_ok)
        if HAS_MASK:
            tl.store(gmsk_ptr + n * s3n + ho * s3h + wo * s3w + (o * K + tap) * s3c,
                     acc_m.to(gmsk_ptr.dtype.element_ty), mask=p_ok)


# ----------------------------------------------------------------------------------------------
# backward: grad weight
# ----------------------------------------------------------------------------------------------
@triton.jit
def _deform_conv2d_bwd_weight_kernel(
        g_ptr, x_ptr, off_ptr, msk_ptr, ws_ptr,
        M, PIX_PER_SPLIT, H, W, HO, WO, CIN_G, COUT, COUT_G, CPG,
        sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, son, soc, soh, sow, smn, smc, smh, smw,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, OG_UNIFORM: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    K: tl.constexpr = KH * KW
    n_tiles_n = tl.cdiv(COUT_G, BLOCK_N)
    n_tiles_k = tl.cdiv(CIN_G, BLOCK_K)
    g = pid_n // n_tiles_n
    co_l = (pid_n % n_tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co_l < COUT_G
    co = (g * COUT_G + co_l).to(tl.int64)
    tap = pid_k // n_tiles_k
    ki = tap // KW
    kj = tap - ki * KW
    cl = (pid_k % n_tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
    c_ok = cl < CIN_G
    c = g * CIN_G + cl

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    p_lo = pid_s.to(tl.int64) * PIX_PER_SPLIT
    p_hi = tl.minimum(p_lo + PIX_PER_SPLIT, M)
    for p0 in range(p_lo, p_hi, BLOCK_M):
        p = p0 + tl.arange(0, BLOCK_M)
        p_ok = p < p_hi
        n, ho, wo = _pixel(p, HO, WO)
        ok_p = p_ok[:, None]
        ok = ok_p & c_ok[None, :]
        off_base = (n * son + ho * soh + wo * sow)[:, None]
        msk_base = (n * smn + ho * smh + wo * smw)[:, None]
        base_y = (ho * stride_h - pad_h + ki * dil_h).to(tl.float32)[:, None]
        base_x = (wo * stride_w - pad_w + kj * dil_w).to(tl.float32)[:, None]
        if OG_UNIFORM:
            ogi = (g * CIN_G) // CPG
            y0, x0, w00, w01, w10, w11 = _tap_geometry(off_ptr, msk_ptr, off_base, msk_base, ogi, tap, base_y,
                                                       base_x, soc, smc, H, W, ok_p, K, HAS_MASK)
        else:
            y0, x0, w00, w01, w10, w11 = _tap_geometry(off_ptr, msk_ptr, off_base, msk_base, (c // CPG)[None, :],
                                                       tap, base_y, base_x, soc, smc, H, W, ok, K, HAS_MASK)
        xb = (n * sxn)[:, None] + (c.to(tl.int64) * sxc)[None, :]
        a = _gather(x_ptr, xb, y0, x0, w00, w01, w10, w11, sxh, sxw, ok)
        gt = tl.load(g_ptr + (n * sgn + ho * sgh + wo * sgw)[:, None] + (co * sgc)[None, :],
                     mask=ok_p & co_ok[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(tl.trans(a.to(gt.dtype).to(tl.float32)), gt.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(tl.trans(a.to(gt.dtype)), gt, acc)
    # workspace [SPLIT, COUT, CIN_G, K], contiguous
    ws = ws_ptr + pid_s.to(tl.int64) * COUT * CIN_G * K + (co * CIN_G * K)[None, :] + (cl * K + tap)[:, None]
    tl.store(ws, acc, mask=c_ok[:, None] & co_ok[None, :])


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def _pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, v))))


def _blocks(cin_g: int, cout_g: int, on_gpu: bool, dtype: torch.dtype = torch.float16):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): tl.dot needs every dim >= 16.

    GPU: 8 warps, and half-size tiles for float32 (its exact tl.dot runs on FMAs with both operand tiles in
    registers; the grad-weight kernel reduces over BLOCK_M pixels): with 4 warps, or full-size fp32 tiles, ptxas
    spills hundreds of bytes to 1.8 KB per thread in these kernels (compiled for sm_90 without a GPU by
    tests/triton_sm90_compile.py, which reports the stack sizes)."""
    if on_gpu:
        if dtype == torch.float32:
            return 32, _pow2(cout_g, 16, 64), _pow2(cin_g, 16, 16), 8
        return 64, _pow2(cout_g, 16, 64), _pow2(cin_g, 16, 32), 8
    # interpreter: fewer, larger programs run faster (numpy per op, not per element)
    return 64, _pow2(cout_g, 16, 64), _pow2(cin_g, 16, 64), 1


def _dot_fp32(dtype: torch.dtype) -> bool:
    """Whether tl.dot runs on fp32 operands with input_precision="ieee" (the IEEE constexpr).

    fp32 inputs: always (no TF32). bf16 under the Triton interpreter too: its bf16 tl.dot returns garbage
    (Triton 3.8, ~1e10 errors on a 16x16 product); the operands are still rounded to bf16 first, and a product
    of two bf16 values is exact in fp32, so the result equals a bf16 tensor-core dot with fp32 accumulation.
    """
    return dtype == torch.float32 or (dtype == torch.bfloat16 and triton_interpreting())


def _strides(t, n=4):
    return tuple(t.stride()) if t is not None else (0,) * n


def _dims(input, offset, weight):
    n, cin, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    og = offset.shape[1] // (2 * kh * kw)
    return n, cin, h, w, cout, cin_g, kh, kw, og, offset.shape[2], offset.shape[3]


def _device_ctx(t):
    # Triton launches on the current device: make it the tensors' one
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def deform_conv2d_forward(input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask):
    """``[N, Cout, Ho, Wo]`` in ``input``'s dtype and memory format (arguments checked by ``op.check_args``)."""
    n, cin, h, w, cout, cin_g, kh, kw, og, ho, wo = _dims(input, offset, weight)
    out = C.poisoned(C.empty_like_format(input, (n, cout, ho, wo)))
    m_total = n * ho * wo
    if out.numel() == 0:
        return out
    groups = cin // cin_g
    cout_g = cout // groups
    cpg = cin // og
    bm, bn, bk, nw = _blocks(cin_g, cout_g, input.is_cuda, input.dtype)
    grid = (triton.cdiv(m_total, bm), groups * triton.cdiv(cout_g, bn))
    msk = mask if mask is not None else offset  # a valid pointer; never read when HAS_MASK is False
    b = bias if bias is not None else weight
    with _device_ctx(input):
        _deform_conv2d_fwd_kernel[grid](
            input, offset, msk, weight, b, out,
            m_total, h, w, ho, wo, cin_g, cout_g, cpg,
            *input.stride(), *offset.stride(), *_strides(mask), *weight.stride(), *out.stride(),
            sh, sw, ph, pw, dh, dw,
            KH=kh, KW=kw, HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
            OG_UNIFORM=cpg % cin_g == 0, IEEE=_dot_fp32(input.dtype), SPLIT_BF16=input.dtype == torch.bfloat16,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
    return out


def _weight_splits(m_total: int, tiles: int, bm: int, on_gpu: bool) -> int:
    if not on_gpu:
        return 1
    # enough programs to fill the GPU (~4 waves of 132 SMs), each reducing at least 8 pixel blocks
    want = max(1, 528 // max(1, tiles))
    return max(1, min(want, triton.cdiv(m_total, 8 * bm)))


def deform_conv2d_backward(grad, input, offset, weight, bias, sh, sw, ph, pw, dh, dw, mask):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask), laid out as the fake impl says."""
    n, cin, h, w, cout, cin_g, kh, kw, og, ho, wo = _dims(input, offset, weight)
    k = kh * kw
    groups = cin // cin_g
    cout_g = cout // groups
    cpg = cin // og
    m_total = n * ho * wo
    dev = input.device
    ieee = _dot_fp32(input.dtype)
    _, g_off, g_w, g_b, g_m = _op._backward_layouts(input, offset, weight, bias, mask)
    C.poisoned(g_off), C.poisoned(g_m)
    if bias is not None:
        g_b = grad.sum((0, 2, 3), dtype=torch.float32).to(bias.dtype)
    bm, bn, bk, nw = _blocks(cin_g, cout_g, input.is_cuda, input.dtype)
    # fp32 accumulation buffer for grad input (atomics / index_put_ target), contiguous NCHW
    gi = torch.zeros((n, cin, h, w), dtype=torch.float32, device=dev)
    msk = mask if mask is not None else offset
    gmsk = g_m if mask is not None else g_off

    if m_total == 0:
        g_w = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        return C.match_layout(gi.to(input.dtype), C.empty_like_format(input)), g_off, g_w, g_b, g_m

    deterministic = torch.are_deterministic_algorithms_enabled()
    with _device_ctx(input):
        common = (h, w, ho, wo, cin, cin_g, cout_g, cpg,
                  *grad.stride(), *input.stride(), *offset.stride(), *_strides(mask), *weight.stride(),
                  *gi.stride(), *g_off.stride(), *gmsk.stride(), sh, sw, ph, pw, dh, dw)
        if deterministic:
            chunk = max(1, _MAX_CONTRIBUTIONS // (cin * k * 4))
        else:
            chunk = m_total
        gi_flat = gi.view(-1)
        for p0 in range(0, m_total, chunk):
            p1 = min(m_total, p0 + chunk)
            if deterministic:
                cnt = (p1 - p0) * cin * k * 4
                cidx = torch.zeros(cnt, dtype=torch.int64, device=dev)
                cval = torch.zeros(cnt, dtype=torch.float32, device=dev)
            else:
                cidx, cval = gi, gi  # unused pointers
            grid = (triton.cdiv(p1 - p0, bm), og)
            _deform_conv2d_bwd_kernel[grid](
                grad, input, offset, msk, weight, gi, g_off, gmsk, cidx, cval,
                p0, p1, *common,
                KH=kh, KW=kw, HAS_MASK=mask is not None, DETERMINISTIC=deterministic, IEEE=ieee,
                BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=min(bk, _pow2(cpg, 16, 64)), num_warps=nw)
            if deterministic:
                # torch's index_put_ with accumulate is deterministic under use_deterministic_algorithms
                gi_flat.index_put_((cidx,), cval, accumulate=True)

        tiles = groups * triton.cdiv(cout_g, bn) * k * triton.cdiv(cin_g, bk)
        splits = _weight_splits(m_total, tiles, bm, input.is_cuda)
        per_split = triton.cdiv(triton.cdiv(m_total, splits), bm) * bm
        splits = triton.cdiv(m_total, per_split)
        ws = C.poisoned(torch.empty((splits, cout, cin_g, k), dtype=torch.float32, device=dev))
        grid = (groups * triton.cdiv(cout_g, bn), k * triton.cdiv(cin_g, bk), splits)
        _deform_conv2d_bwd_weight_kernel[grid](
            grad, input, offset, msk, ws,
            m_total, per_split, h, w, ho, wo, cin_g, cout, cout_g, cpg,
            *grad.stride(), *input.stride(), *offset.stride(), *_strides(mask),
            sh, sw, ph, pw, dh, dw,
            KH=kh, KW=kw, HAS_MASK=mask is not None, OG_UNIFORM=cpg % cin_g == 0, IEEE=ieee,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw)
    g_w = ws.sum(0).view(cout, cin_g, kh, kw).to(weight.dtype)
    g_in = C.match_layout(gi.to(input.dtype), C.empty_like_format(input))
    return g_in, g_off, g_w, g_b, g_m


# ----------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------
register_kernel(_op.OP, "triton", deform_conv2d_forward, supports=C.TRITON)
register_kernel(_op.OP_BWD, "triton", deform_conv2d_backward, supports=C.TRITON)


__all__ = ["deform_conv2d_forward", "deform_conv2d_backward"]
