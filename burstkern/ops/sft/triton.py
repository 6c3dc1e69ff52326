"""Triton kernels for SFT feature modulation, registered as the ``triton`` backend of the four sft ops.

Layout: every tensor is addressed as ``[N, C, HW]`` with its own (sN, sC, sHW) strides, so NCHW, channels_last,
channel-sliced views and the two halves of a merged ``[N, 2C, ...]`` gamma|beta tensor are all read in place
(the halves are views; nothing is chunk-copied). Per-channel gamma/beta (``[N, C, 1, 1]``) have sHW = 0 and
are loaded once per channel. The one copy made is for a tensor whose H and W cannot be merged into one index
(a spatially sliced view such as ``x[..., 1:, :-1]``): it is made contiguous first (never the case for
contiguous, channels_last or channel-sliced tensors). Tiles are ``[BLOCK_C, BLOCK_HW]``; Triton specialises
stride 1 arguments, so the tile is coalesced along HW for NCHW and along C for channels_last.

Kernels:

* ``_sft_modulate_fwd_kernel`` / ``_sft_modulate_bwd_kernel``: one elementwise pass each. Gradients of
  per-channel gamma/beta are per-tile row sums written to a ``[N, C, n_hw_tiles]`` buffer and then reduced once
  (deterministic, no atomics).
* ``_sft_group_norm_stats_kernel``: per (sample, group, HW chunk) count/mean/M2 in fp32 (fp64 for fp64), tiles
  merged with Chan's parallel formula (robust for large means, unlike sum/sum-of-squares). NCHW: one group per
  program; channels_last: several whole groups per program, so each pixel's channels are read together.
* ``_sft_group_norm_fwd_kernel``: merges the chunk statistics of its channels' groups, then
  normalise + affine + modulate + act in one pass; also writes mean/rstd ``[N, G]`` for the backward.
* ``_sft_group_norm_bwd_kernel``: STAGE 1 recomputes the normalised value from x, mean, rstd, writes spatial
  dgamma/dbeta and per-tile partial sums (dweight, dbias, per-channel dgamma/dbeta, and the two per-group
  sums of the GroupNorm backward); ``_sft_group_norm_bwd_reduce_kernel`` reduces them in a fixed order (one
  program per group); STAGE 2 recomputes again and writes dx. No normalised tensor is stored.

Launches: sft_modulate 1 forward, 1 backward (+ a torch sum per per-channel gradient); sft_group_norm 2 forward,
3 backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _common as C
from ...registry import register_kernel
from .op import OP_GN, OP_GN_BWD, OP_MOD, OP_MOD_BWD

# Tile sizes (elements per program ~ TILE) and the chunk cap of the statistics pass. Tests shrink them to
# reach every loop and merge path on small inputs.
_TUNE = {"TILE": 4096, "MAX_BLOCK_C": 64, "MAX_BLOCK_HW": 1024, "STAT_PROGRAMS": 1024, "MAX_CHUNKS": 32,
         "REDUCE_TILE": 4096}


def _new(*args, **kwargs) -> torch.Tensor:
    """Every buffer the kernels write is allocated here (NaN-filled when tests turn output poisoning on)."""
    return C.poisoned(torch.empty(*args, **kwargs))


def _new_like_format(like: torch.Tensor, shape, dtype, fmt) -> torch.Tensor:
    if len(shape) != 4:
        fmt = torch.contiguous_format
    return _new(tuple(shape), dtype=dtype, device=like.device, memory_format=fmt)


# ----------------------------------------------------------------------------------------------
# shared jit helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _sigmoid(u):
    # exp of -|u| only: never overflows (1 / (1 + exp(-u)) hits inf for u < -88 in fp32)
    e = tl.exp(-tl.abs(u))
    r = 1.0 / (1.0 + e)
    return tl.where(u >= 0, r, e * r)


@triton.jit
def _act_linear(u, a, ACT: tl.constexpr, slope):
    """a times the slope at u of a piecewise-linear ACT (relu, leaky_relu, none): act(u) for a = u, dy * act'(u)
    for a = dy; at u == 0 relu/leaky_relu take the left slope, as torch does."""
    if ACT == 2:
        r = tl.where(u > 0, a, 0.0)
    elif ACT == 3:
        r = tl.where(u > 0, a, a * slope)
    else:
        r = a
    return r


@triton.jit
def _act_fwd(u, ACT: tl.constexpr, slope):
    # ACT: 0 none, 1 silu, 2 relu, 3 leaky_relu(slope) (codes of reference.ACT_CODES)
    if ACT == 1:
        y = u * _sigmoid(u)
    else:
        y = _act_linear(u, u, ACT, slope)
    return y


@triton.jit
def _act_grad(u, dy, ACT: tl.constexpr, slope):
    """dy * act'(u)."""
    if ACT == 1:
        s = _sigmoid(u)
        du = dy * (s * (1.0 + u * (1.0 - s)))
    else:
        du = _act_linear(u, dy, ACT, slope)
    return du


@triton.jit
def _load_mod(p, n, c, hw, sn, sc, shw, c_mask, m, ACC: tl.constexpr, SPATIAL: tl.constexpr):
    """gamma or beta as a [BLOCK_C, BLOCK_HW] (spatial) or [BLOCK_C, 1] (per-channel) fp32 tile."""
    if SPATIAL:
        v = tl.load(p + n * sn + c[:, None] * sc + hw[None, :] * shw, mask=m, other=0.0).to(ACC)
    else:
        v = tl.load(p + n * sn + c * sc, mask=c_mask, other=0.0).to(ACC)[:, None]
    return v


@triton.jit
def _tile(NB, C, HW, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """This program's (sample n, spatial tile pid_hw, channels c [BLOCK_C], positions hw [BLOCK_HW], c_mask, tile
    mask m). The sample and the spatial tile are both on grid axis 0 (limit 2^31 - 1), so any batch size launches (axes 1 and 2 stop at
    65535, which N or N*G can pass: N = 4096, G = 32); the channel block is axis 1."""
    pid = tl.program_id(0)
    n, pid_hw = (pid // NB).to(tl.int64), pid % NB
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    hw = pid_hw.to(tl.int64) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_mask = c < C
    return n, pid_hw, c, hw, c_mask, c_mask[:, None] & (hw < HW)[None, :]


# ----------------------------------------------------------------------------------------------
# sft_modulate
# ----------------------------------------------------------------------------------------------
@triton.jit
def _sft_modulate_fwd_kernel(x_ptr, g_ptr, b_ptr, out_ptr, C, HW, NB,
                             sxn, sxc, sxhw, sgn, sgc, sghw, sbn, sbc, sbhw, son, soc, sohw, slope,
                             HAS_BETA: tl.constexpr, G_SPATIAL: tl.constexpr, B_SPATIAL: tl.constexpr,
                             ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    n, _, c, hw, c_mask, m = _tile(NB, C, HW, BLOCK_C, BLOCK_HW)
    x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
    g = _load_mod(g_ptr, n, c, hw, sgn, sgc, sghw, c_mask, m, ACC, G_SPATIAL)
    u = x * (1.0 + g)
    if HAS_BETA:
        u += _load_mod(b_ptr, n, c, hw, sbn, sbc, sbhw, c_mask, m, ACC, B_SPATIAL)
    y = _act_fwd(u, ACT, slope)
    tl.store(out_ptr + n * son + c[:, None] * soc + hw[None, :] * sohw, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sft_modulate_bwd_kernel(dy_ptr, x_ptr, g_ptr, b_ptr, dx_ptr, dg_ptr, db_ptr, part_ptr, N, C, HW, NB,
                             sdn, sdc, sdhw, sxn, sxc, sxhw, sgn, sgc, sghw, sbn, sbc, sbhw,
                             son, soc, sohw, sgon, sgoc, sgohw, sbon, sboc, sbohw, slope,
                             HAS_BETA: tl.constexpr, G_SPATIAL: tl.constexpr, B_SPATIAL: tl.constexpr,
                             ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    n, pid_hw, c, hw, c_mask, m = _tile(NB, C, HW, BLOCK_C, BLOCK_HW)
    dy = tl.load(dy_ptr + n * sdn + c[:, None] * sdc + hw[None, :] * sdhw, mask=m, other=0.0).to(ACC)
    x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
    g1 = 1.0 + _load_mod(g_ptr, n, c, hw, sgn, sgc, sghw, c_mask, m, ACC, G_SPATIAL)
    u = x * g1
    if HAS_BETA:
        u += _load_mod(b_ptr, n, c, hw, sbn, sbc, sbhw, c_mask, m, ACC, B_SPATIAL)
    du = tl.where(m, _act_grad(u, dy, ACT, slope), 0.0)
    tl.store(dx_ptr + n * son + c[:, None] * soc + hw[None, :] * sohw, (du * g1).to(dx_ptr.dtype.element_ty), mask=m)
    # partial sums of per-channel gradients: row sums of this tile into part[0|1, n, c, pid_hw]
    prow = (n * C + c) * NB + pid_hw
    if G_SPATIAL:
        tl.store(dg_ptr + n * sgon + c[:, None] * sgoc + hw[None, :] * sgohw, (du * x).to(dg_ptr.dtype.element_ty),
                 mask=m)
    else:
        tl.store(part_ptr + prow, tl.sum(du * x, axis=1), mask=c_mask)
    if HAS_BETA:
        if B_SPATIAL:
            tl.store(db_ptr + n * sbon + c[:, None] * sboc + hw[None, :] * sbohw, du.to(db_ptr.dtype.element_ty),
                     mask=m)
        else:
            tl.store(part_ptr + N.to(tl.int64) * C * NB + prow, tl.sum(du, axis=1), mask=c_mask)


# ----------------------------------------------------------------------------------------------
# sft_group_norm
# ----------------------------------------------------------------------------------------------
@triton.jit
def _sft_group_norm_stats_kernel(x_ptr, part_ptr, C, HW, Cg, G, CHUNK, NCHUNK, PLANE, sxn, sxc, sxhw,
                                 GB: tl.constexpr, GB_P2: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                                 BLOCK_HW: tl.constexpr):
    """part[0|1|2, n*G + g, chunk] = count, mean, M2 of the chunk's elements of group g of sample n, for the GB
    groups g0 .. g0+GB-1 of this program. GB > 1 (channels_last): one tile spans several whole groups, so a
    pixel's channels are read together (a lone group of 4 bf16 channels would use 8 bytes of each 32-byte
    sector); the per-group sums of a tile come from its per-channel row sums through a one-hot [GB, BLOCK_C]."""
    pid = tl.program_id(0)  # one axis: rows x chunks can pass CUDA's 65535 limit of the others
    chunk = pid % NCHUNK
    row_id = pid // NCHUNK
    gpn = tl.cdiv(G, GB)
    n = (row_id // gpn).to(tl.int64)
    g0 = (row_id % gpn) * GB
    hw_start = chunk.to(tl.int64) * CHUNK
    hw_end = tl.minimum(hw_start + CHUNK, HW)
    gl = tl.arange(0, GB_P2)
    span = GB * Cg
    cnt = tl.zeros((GB_P2,), dtype=ACC)
    mean = tl.zeros((GB_P2,), dtype=ACC)
    m2 = tl.zeros((GB_P2,), dtype=ACC)
    for c0 in range(0, span, BLOCK_C):
        cl = c0 + tl.arange(0, BLOCK_C)
        c = (g0 * Cg + cl).to(tl.int64)
        c_ok = (cl < span) & (c < C)
        onehot = ((cl // Cg)[None, :] == gl[:, None]) & c_ok[None, :]
        oh = onehot.to(ACC)
        for h0 in range(hw_start, hw_end, BLOCK_HW):
            hw = h0 + tl.arange(0, BLOCK_HW)
            m = c_ok[:, None] & (hw < hw_end)[None, :]
            x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
            # tile mean/M2 per group exactly, then Chan's merge: no catastrophic cancellation for large means
            t_cnt = tl.sum(oh * tl.sum(m.to(ACC), axis=1)[None, :], axis=1)
            t_mean = tl.sum(oh * tl.sum(x, axis=1)[None, :], axis=1) / tl.maximum(t_cnt, 1.0)
            mean_c = tl.sum(oh * t_mean[:, None], axis=0)
            d = tl.where(m, x - mean_c[:, None], 0.0)
            t_m2 = tl.sum(oh * tl.sum(d * d, axis=1)[None, :], axis=1)
            new_cnt = cnt + t_cnt
            delta = t_mean - mean
            frac = t_cnt / tl.maximum(new_cnt, 1.0)
            mean += delta * frac
            m2 += t_m2 + delta * delta * cnt * frac
            cnt = new_cnt
    g = g0 + gl
    ok = (gl < GB) & (g < G)
    row = (n * G + g) * NCHUNK + chunk
    tl.store(part_ptr + row, cnt, mask=ok)
    tl.store(part_ptr + PLANE + row, mean, mask=ok)
    tl.store(part_ptr + 2 * PLANE + row, m2, mask=ok)


@triton.jit
def _group_stats_of_channels(part_ptr, n, c, c_mask, Cg, G, NCHUNK, NGN, eps,
                             ACC: tl.constexpr, CHUNKS_P2: tl.constexpr):
    """Merge the chunk statistics of each channel's group: (mean, rstd) as [BLOCK_C] vectors."""
    k = tl.arange(0, CHUNKS_P2)
    row = (n * G + c // Cg) * NCHUNK
    mk = c_mask[:, None] & (k < NCHUNK)[None, :]
    p = part_ptr + row[:, None] + k[None, :]
    plane = NGN * NCHUNK
    cnt = tl.load(p, mask=mk, other=0.0)
    mu = tl.load(p + plane, mask=mk, other=0.0)
    m2 = tl.load(p + 2 * plane, mask=mk, other=0.0)
    tot = tl.maximum(tl.sum(cnt, axis=1), 1.0)
    mean = tl.sum(cnt * mu, axis=1) / tot
    d = mu - mean[:, None]
    var = (tl.sum(m2, axis=1) + tl.sum(cnt * d * d, axis=1)) / tot
    rstd = 1.0 / tl.sqrt(var + eps)
    return mean.to(ACC), rstd.to(ACC)


@triton.jit
def _sft_group_norm_fwd_kernel(x_ptr, g_ptr, b_ptr, w_ptr, bias_ptr, part_ptr, out_ptr, mean_ptr, rstd_ptr,
                               N, C, HW, Cg, G, NB, NCHUNK, eps, sxn, sxc, sxhw, sgn, sgc, sghw, sbn, sbc, sbhw,
                               son, soc, sohw, slope,
                               HAS_BETA: tl.constexpr, G_SPATIAL: tl.constexpr, B_SPATIAL: tl.constexpr,
                               HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                               CHUNKS_P2: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    n, pid_hw, c, hw, c_mask, m = _tile(NB, C, HW, BLOCK_C, BLOCK_HW)
    mean, rstd = _group_stats_of_channels(part_ptr, n, c, c_mask, Cg, G, NCHUNK, N * G, eps,
                                          ACC, CHUNKS_P2)
    if pid_hw == 0:
        # one writer per (n, group): the tile holding the group's first channel
        first = c_mask & (c % Cg == 0)
        tl.store(mean_ptr + n * G + c // Cg, mean, mask=first)
        tl.store(rstd_ptr + n * G + c // Cg, rstd, mask=first)
    # GroupNorm + affine folded into one multiply-add per element: h = x * a + s
    a = rstd
    if HAS_W:
        a = a * tl.load(w_ptr + c, mask=c_mask, other=0.0).to(ACC)
    s = -mean * a
    if HAS_BIAS:
        s += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
    h = x * a[:, None] + s[:, None]
    u = h * (1.0 + _load_mod(g_ptr, n, c, hw, sgn, sgc, sghw, c_mask, m, ACC, G_SPATIAL))
    if HAS_BETA:
        u += _load_mod(b_ptr, n, c, hw, sbn, sbc, sbhw, c_mask, m, ACC, B_SPATIAL)
    y = _act_fwd(u, ACT, slope)
    tl.store(out_ptr + n * son + c[:, None] * soc + hw[None, :] * sohw, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sft_group_norm_bwd_kernel(dy_ptr, x_ptr, g_ptr, b_ptr, w_ptr, bias_ptr, mean_ptr, rstd_ptr, coef_ptr,
                               dx_ptr, dg_ptr, db_ptr, part_ptr, N, C, HW, Cg, G, NB,
                               sdn, sdc, sdhw, sxn, sxc, sxhw, sgn, sgc, sghw, sbn, sbc, sbhw,
                               son, soc, sohw, sgon, sgoc, sgohw, sbon, sboc, sbohw, slope,
                               STAGE: tl.constexpr, HAS_BETA: tl.constexpr, G_SPATIAL: tl.constexpr,
                               B_SPATIAL: tl.constexpr, HAS_W: tl.constexpr, HAS_BIAS: tl.constexpr,
                               ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """STAGE 1: spatial dgamma/dbeta + partial sums part[k, n, c, tile] of
    k=0: dh*xhat, k=1: dh (dh = d(GroupNorm output)), k=2: du*h (per-channel dgamma), k=3: du (per-channel dbeta).
    STAGE 2: dx = rstd * (w*dh - coef1 - xhat*coef2), coef[0|1, n, g] from the reduced stage-1 sums."""
    n, pid_hw, c, hw, c_mask, m = _tile(NB, C, HW, BLOCK_C, BLOCK_HW)
    grp = n * G + c // Cg
    mean = tl.load(mean_ptr + grp, mask=c_mask, other=0.0).to(ACC)
    rstd = tl.load(rstd_ptr + grp, mask=c_mask, other=0.0).to(ACC)
    if HAS_W:
        w = tl.load(w_ptr + c, mask=c_mask, other=0.0).to(ACC)
    else:
        w = tl.full((BLOCK_C,), 1.0, ACC)
    x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + n * sdn + c[:, None] * sdc + hw[None, :] * sdhw, mask=m, other=0.0).to(ACC)
    xhat = (x - mean[:, None]) * rstd[:, None]
    h = xhat * w[:, None]
    if HAS_BIAS:
        h += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(ACC)[:, None]
    g1 = 1.0 + _load_mod(g_ptr, n, c, hw, sgn, sgc, sghw, c_mask, m, ACC, G_SPATIAL)
    u = h * g1
    if HAS_BETA:
        u += _load_mod(b_ptr, n, c, hw, sbn, sbc, sbhw, c_mask, m, ACC, B_SPATIAL)
    du = tl.where(m, _act_grad(u, dy, ACT, slope), 0.0)
    dh = du * g1
    if STAGE == 1:
        plane = N.to(tl.int64) * C * NB
        prow = (n * C + c) * NB + pid_hw
        tl.store(part_ptr + prow, tl.sum(dh * xhat, axis=1), mask=c_mask)
        tl.store(part_ptr + plane + prow, tl.sum(dh, axis=1), mask=c_mask)
        if G_SPATIAL:
            tl.store(dg_ptr + n * sgon + c[:, None] * sgoc + hw[None, :] * sgohw,
                     (du * h).to(dg_ptr.dtype.element_ty), mask=m)
        else:
            tl.store(part_ptr + 2 * plane + prow, tl.sum(du * h, axis=1), mask=c_mask)
        if HAS_BETA:
            if B_SPATIAL:
                tl.store(db_ptr + n * sbon + c[:, None] * sboc + hw[None, :] * sbohw,
                         du.to(db_ptr.dtype.element_ty), mask=m)
            else:
                tl.store(part_ptr + 3 * plane + prow, tl.sum(du, axis=1), mask=c_mask)
    else:
        ngroups = N.to(tl.int64) * G
        c1 = tl.load(coef_ptr + grp, mask=c_mask, other=0.0)
        c2 = tl.load(coef_ptr + ngroups + grp, mask=c_mask, other=0.0)
        dx = rstd[:, None] * (dh * w[:, None] - c1[:, None] - xhat * c2[:, None])
        tl.store(dx_ptr + n * son + c[:, None] * soc + hw[None, :] * sohw, dx.to(dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sft_group_norm_bwd_reduce_kernel(part_ptr, coef_ptr, w_ptr, dw_ptr, dbias_ptr, dg_ptr, db_ptr, N, C, Cg, G,
                                      NB, plane, inv_m, sgon, sgoc, sbon, sboc,
                                      HAS_W: tl.constexpr, WANT_DW: tl.constexpr, WANT_DBIAS: tl.constexpr,
                                      G_CHANNEL: tl.constexpr, B_CHANNEL: tl.constexpr, ACC: tl.constexpr,
                                      BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """One program per group: reduce the stage-1 tile sums (fixed order: deterministic, no atomics) into
    coef[0|1, n, g] = mean over the group of w*dh and w*dh*xhat, dweight, dbias and per-channel dgamma/dbeta.
    Replaces ~10 small torch launches between the two backward stages."""
    g = tl.program_id(0)
    cl = tl.arange(0, BLOCK_C)
    cm = cl < Cg
    c = (g * Cg + cl).to(tl.int64)
    if HAS_W:
        w = tl.load(w_ptr + c, mask=cm, other=0.0).to(ACC)
    else:
        w = tl.where(cm, 1.0, 0.0).to(ACC)
    acc_dw = tl.zeros((BLOCK_C,), dtype=ACC)
    acc_db = tl.zeros((BLOCK_C,), dtype=ACC)
    for n in range(0, N):
        s0 = tl.zeros((BLOCK_C,), dtype=ACC)
        s1 = tl.zeros((BLOCK_C,), dtype=ACC)
        s2 = tl.zeros((BLOCK_C,), dtype=ACC)
        s3 = tl.zeros((BLOCK_C,), dtype=ACC)
        row = (n * C + c) * NB
        for t0 in range(0, NB, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            m = cm[:, None] & (t < NB)[None, :]
            p = part_ptr + row[:, None] + t[None, :]
            s0 += tl.sum(tl.load(p, mask=m, other=0.0), axis=1)
            s1 += tl.sum(tl.load(p + plane, mask=m, other=0.0), axis=1)
            if G_CHANNEL:
                s2 += tl.sum(tl.load(p + 2 * plane, mask=m, other=0.0), axis=1)
            if B_CHANNEL:
                s3 += tl.sum(tl.load(p + 3 * plane, mask=m, other=0.0), axis=1)
        acc_dw += s0
        acc_db += s1
        tl.store(coef_ptr + n * G + g, tl.sum(w * s1, axis=0) * inv_m)
        tl.store(coef_ptr + N * G + n * G + g, tl.sum(w * s0, axis=0) * inv_m)
        if G_CHANNEL:
            tl.store(dg_ptr + n * sgon + c * sgoc, s2.to(dg_ptr.dtype.element_ty), mask=cm)
        if B_CHANNEL:
            tl.store(db_ptr + n * sbon + c * sboc, s3.to(db_ptr.dtype.element_ty), mask=cm)
    if WANT_DW:
        tl.store(dw_ptr + c, acc_dw.to(dw_ptr.dtype.element_ty), mask=cm)
    if WANT_DBIAS:
        tl.store(dbias_ptr + c, acc_db.to(dbias_ptr.dtype.element_ty), mask=cm)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _flat(t: torch.Tensor, fmt: torch.memory_format):
    """(tensor, (sN, sC, sHW)) addressing t as [N, C, H*W]; sHW = 0 for a per-channel [N, C, 1, 1] tensor.

    H and W merge into one index when sH == W * sW (contiguous, channels_last and channel-sliced tensors);
    anything else (a spatially sliced view) is copied once into ``fmt``.
    """
    _, _, h, w = t.shape
    if h * w == 1:
        return t, (t.stride(0), t.stride(1), 0)
    if w == 1:
        return t, (t.stride(0), t.stride(1), t.stride(2))
    if h == 1 or t.stride(2) == w * t.stride(3):
        return t, (t.stride(0), t.stride(1), t.stride(3))
    t = t.contiguous(memory_format=fmt)
    return t, (t.stride(0), t.stride(1), t.stride(3))


def _split(x: torch.Tensor, gamma: torch.Tensor, beta):
    c = x.shape[1]
    if beta is None and gamma.shape[1] == 2 * c:
        return gamma[:, :c], gamma[:, c:]
    return gamma, beta


def _blocks(c: int, hw: int, channels_last: bool, max_block_c: int = None):
    """[BLOCK_C, BLOCK_HW] tile: wide along the contiguous axis (HW for NCHW, C for channels_last)."""
    tile, mc, mhw = _TUNE["TILE"], _TUNE["MAX_BLOCK_C"], _TUNE["MAX_BLOCK_HW"]
    if max_block_c is not None:
        mc = min(mc, max_block_c)
    if channels_last:
        bc = min(triton.next_power_of_2(c), mc)
        bhw = min(triton.next_power_of_2(hw), mhw, max(1, tile // bc))
    else:
        bhw = min(triton.next_power_of_2(hw), mhw)
        bc = min(triton.next_power_of_2(c), mc, max(1, tile // bhw))
    return bc, bhw


def _warps(bc: int, bhw: int) -> int:
    return 8 if bc * bhw >= 4096 else 4


class _Mod:
    """gamma/beta of one call, flattened: tensors, strides, and whether each is spatial."""

    def __init__(self, x, gamma, beta, fmt):
        g, b = _split(x, gamma, beta)
        self.merged = g is not gamma
        self.g, self.gs = _flat(g, fmt)
        self.g_spatial = g.shape[2] * g.shape[3] > 1
        self.has_beta = b is not None
        if b is None:
            self.b, self.bs, self.b_spatial = self.g, (0, 0, 0), False
        else:
            self.b, self.bs = _flat(b, fmt)
            self.b_spatial = b.shape[2] * b.shape[3] > 1


def _grad_buffers(x, gamma, beta, fmt):
    """(dgamma, dbeta) buffers in gamma/beta's shapes laid out like x, and the views the kernel writes."""
    c = x.shape[1]
    dg = _new_like_format(x, gamma.shape, gamma.dtype, fmt)
    db = None if beta is None else _new_like_format(x, beta.shape, beta.dtype, fmt)
    if beta is None and gamma.shape[1] == 2 * c:
        return dg, db, dg[:, :c], dg[:, c:]
    return dg, db, dg, db


def _strides(t):
    return (t.stride(0), t.stride(1), t.stride(3)) if t is not None else (0, 0, 0)


MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2 (axis 0: 2^31 - 1)


def tile_grid(n: int, c: int, hw: int, bc: int, bhw: int):
    """(grid, spatial tiles per sample) of the element kernels: samples x spatial tiles on axis 0, channel blocks on
    axis 1, so the launch fits CUDA's limits for any batch size."""
    nb = triton.cdiv(hw, bhw)
    grid = (n * nb, triton.cdiv(c, bc), 1)
    if grid[0] >= 2 ** 31 or grid[1] > MAX_GRID_YZ:
        raise C.ArgumentError(f"sft: the launch grid {grid} passes CUDA's limits (x: N={n}, C={c}, H*W={hw})")
    return grid, nb


def stats_grid(rows: int, nchunk: int):
    """The GroupNorm statistics kernel's grid: one axis of (row of groups) x chunk programs."""
    grid = (rows * nchunk,)
    if grid[0] >= 2 ** 31:
        raise C.ArgumentError(f"sft_group_norm: {rows} x {nchunk} statistics programs pass CUDA's grid limit")
    return grid


def _geometry(x: torch.Tensor):
    """(n, c, h·w, memory format) of a 4-D x."""
    n, c, h, w = x.shape
    return n, c, h * w, C.memory_format_of(x)


def sft_modulate_forward(x, gamma, beta, act: int, slope: float):
    """``act(x * (1 + gamma) + beta)``; shapes as ``burstkern.ops.sft_modulate`` (4-D)."""
    n, c, hw, fmt = _geometry(x)
    out = _new_like_format(x, x.shape, x.dtype, fmt)
    if out.numel() == 0:
        return out
    xf, xs = _flat(x, fmt)
    mod = _Mod(x, gamma, beta, fmt)
    bc, bhw = _blocks(c, hw, fmt == torch.channels_last)
    grid, nb = tile_grid(n, c, hw, bc, bhw)
    _sft_modulate_fwd_kernel[grid](xf, mod.g, mod.b, out, c, hw, nb, *xs, *mod.gs, *mod.bs, *_strides(out), slope,
                                   HAS_BETA=mod.has_beta, G_SPATIAL=mod.g_spatial, B_SPATIAL=mod.b_spatial,
                                   ACT=act, ACC=_acc(x.dtype), BLOCK_C=bc, BLOCK_HW=bhw,
                                   num_warps=_warps(bc, bhw))
    return out


def _reduce_partials(part, k, dst):
    """dst[n, c, 0, 0] = sum over tiles of part[k, n, c, :] (one fixed-order reduction: deterministic)."""
    n, c = dst.shape[:2]
    dst.copy_(part[k].sum(-1).view(n, c, 1, 1))


def sft_modulate_backward(grad, x, gamma, beta, act: int, slope: float):
    """(dx, dgamma, dbeta) of ``sft_modulate``; dbeta is an empty placeholder when beta is None."""
    n, c, hw, fmt = _geometry(x)
    dx = _new_like_format(x, x.shape, x.dtype, fmt)
    dg, db, dgv, dbv = _grad_buffers(x, gamma, beta, fmt)
    if dx.numel() == 0:
        return dx, dg.zero_(), (C.empty_grad(x) if db is None else db.zero_())
    xf, xs = _flat(x, fmt)
    gf, gs = _flat(grad, fmt)
    mod = _Mod(x, gamma, beta, fmt)
    bc, bhw = _blocks(c, hw, fmt == torch.channels_last)
    grid, nb = tile_grid(n, c, hw, bc, bhw)
    need_part = (not mod.g_spatial) or (mod.has_beta and not mod.b_spatial)
    cd = C.compute_dtype(x.dtype)
    part = _new((2, n, c, nb), dtype=cd, device=x.device) if need_part else dx
    _sft_modulate_bwd_kernel[grid](gf, xf, mod.g, mod.b, dx, dgv, dgv if dbv is None else dbv, part, n, c, hw, nb,
                                   *gs, *xs, *mod.gs, *mod.bs, *_strides(dx), *_strides(dgv), *_strides(dbv),
                                   slope, HAS_BETA=mod.has_beta, G_SPATIAL=mod.g_spatial,
                                   B_SPATIAL=mod.b_spatial, ACT=act, ACC=_acc(x.dtype), BLOCK_C=bc,
                                   BLOCK_HW=bhw, num_warps=_warps(bc, bhw))
    if not mod.g_spatial:
        _reduce_partials(part, 0, dgv)
    if mod.has_beta and not mod.b_spatial:
        _reduce_partials(part, 1, dbv)
    return dx, dg, (C.empty_grad(x) if db is None else db)


def _stat_chunks(rows: int, hw: int, bhw: int):
    """(chunk length, number of chunks): enough (row of groups, chunk) programs to fill the GPU."""
    tiles = triton.cdiv(hw, bhw)
    want = max(1, min(tiles, _TUNE["MAX_CHUNKS"], triton.cdiv(_TUNE["STAT_PROGRAMS"], rows)))
    chunk = triton.cdiv(tiles, want) * bhw
    return chunk, triton.cdiv(hw, chunk)


def sft_group_norm_forward(x, gamma, beta, num_groups: int, weight, bias, eps: float, act: int, slope: float):
    """(out, mean [N, G], rstd [N, G]) of ``sft_group_norm`` (4-D)."""
    n, c, hw, fmt = _geometry(x)
    g = num_groups
    cg = c // g
    cd = C.compute_dtype(x.dtype)
    out = _new_like_format(x, x.shape, x.dtype, fmt)
    mean = _new((n, g), dtype=cd, device=x.device)
    rstd = _new((n, g), dtype=cd, device=x.device)
    if n == 0:
        return out, mean, rstd
    xf, xs = _flat(x, fmt)
    cl = fmt == torch.channels_last
    acc = _acc(x.dtype)
    # statistics: NCHW reads one group per program (its channels are contiguous planes); channels_last reads
    # several whole groups per program so each pixel's channels come in together
    gb = max(1, min(g, _TUNE["MAX_BLOCK_C"] // cg)) if cl else 1
    sbc, sbhw = _blocks(gb * cg, hw, cl)
    rows = n * triton.cdiv(g, gb)
    chunk, nchunk = _stat_chunks(rows, hw, sbhw)
    part = _new((3, n * g, nchunk), dtype=cd, device=x.device)
    _sft_group_norm_stats_kernel[stats_grid(rows, nchunk)](xf, part, c, hw, cg, g, chunk, nchunk, n * g * nchunk, *xs, GB=gb,
                                                 GB_P2=triton.next_power_of_2(gb), ACC=acc, BLOCK_C=sbc,
                                                 BLOCK_HW=sbhw, num_warps=_warps(sbc, sbhw))
    mod = _Mod(x, gamma, beta, fmt)
    bc, bhw = _blocks(c, hw, cl)
    grid, nb = tile_grid(n, c, hw, bc, bhw)
    _sft_group_norm_fwd_kernel[grid](xf, mod.g, mod.b, weight if weight is not None else xf,
                                     bias if bias is not None else xf, part, out, mean, rstd, n, c, hw, cg, g, nb,
                                     nchunk,
                                     eps, *xs, *mod.gs, *mod.bs, *_strides(out), slope, HAS_BETA=mod.has_beta,
                                     G_SPATIAL=mod.g_spatial, B_SPATIAL=mod.b_spatial, HAS_W=weight is not None,
                                     HAS_BIAS=bias is not None, ACT=act, ACC=acc,
                                     CHUNKS_P2=triton.next_power_of_2(nchunk), BLOCK_C=bc, BLOCK_HW=bhw,
                                     num_warps=_warps(bc, bhw))
    return out, mean, rstd


def sft_group_norm_backward(grad, x, gamma, beta, num_groups: int, weight, bias, mean, rstd, eps: float, act: int,
                            slope: float):
    """(dx, dgamma, dbeta, dweight, dbias) of ``sft_group_norm``; empty placeholders for absent inputs."""
    n, c, hw, fmt = _geometry(x)
    g = num_groups
    cg = c // g
    cd = C.compute_dtype(x.dtype)
    dx = _new_like_format(x, x.shape, x.dtype, fmt)
    dg, db, dgv, dbv = _grad_buffers(x, gamma, beta, fmt)
    if n == 0:
        return (dx, dg, (C.empty_grad(x) if db is None else db),
                C.empty_grad(x) if weight is None else torch.zeros_like(weight),
                C.empty_grad(x) if bias is None else torch.zeros_like(bias))
    xf, xs = _flat(x, fmt)
    gf, gs = _flat(grad, fmt)
    mod = _Mod(x, gamma, beta, fmt)
    bc, bhw = _blocks(c, hw, fmt == torch.channels_last)
    grid, nb = tile_grid(n, c, hw, bc, bhw)
    part = _new((4, n, c, nb), dtype=cd, device=x.device)
    wt = weight if weight is not None else xf
    bs = bias if bias is not None else xf
    mean, rstd = mean.contiguous(), rstd.contiguous()
    common = dict(HAS_BETA=mod.has_beta, G_SPATIAL=mod.g_spatial, B_SPATIAL=mod.b_spatial,
                  HAS_W=weight is not None, HAS_BIAS=bias is not None, ACT=act, ACC=_acc(x.dtype), BLOCK_C=bc,
                  BLOCK_HW=bhw, num_warps=_warps(bc, bhw))
    args = (*gs, *xs, *mod.gs, *mod.bs, *_strides(dx), *_strides(dgv), *_strides(dbv), slope)
    _sft_group_norm_bwd_kernel[grid](gf, xf, mod.g, mod.b, wt, bs, mean, rstd, part, dx, dgv,
                                     dgv if dbv is None else dbv, part, n, c, hw, cg, g, nb, *args, STAGE=1, **common)
    coef = _new((2, n, g), dtype=cd, device=x.device)
    dw = C.empty_grad(x) if weight is None else _new(weight.shape, dtype=weight.dtype, device=x.device)
    dbias = C.empty_grad(x) if bias is None else _new(bias.shape, dtype=bias.dtype, device=x.device)
    g_channel = not mod.g_spatial
    b_channel = mod.has_beta and not mod.b_spatial
    rbc = triton.next_power_of_2(cg)
    rbt = max(1, min(triton.next_power_of_2(nb), _TUNE["REDUCE_TILE"] // rbc))
    _sft_group_norm_bwd_reduce_kernel[(g,)](
        part, coef, wt, dw if weight is not None else part, dbias if bias is not None else part,
        dgv, dgv if dbv is None else dbv, n, c, cg, g, nb, n * c * nb, 1.0 / (cg * hw), dgv.stride(0), dgv.stride(1),
        *((dbv.stride(0), dbv.stride(1)) if dbv is not None else (0, 0)), HAS_W=weight is not None,
        WANT_DW=weight is not None, WANT_DBIAS=bias is not None, G_CHANNEL=g_channel, B_CHANNEL=b_channel,
        ACC=_acc(x.dtype), BLOCK_C=rbc, BLOCK_T=rbt, num_warps=4)
    _sft_group_norm_bwd_kernel[grid](gf, xf, mod.g, mod.b, wt, bs, mean, rstd, coef, dx, dgv,
                                     dgv if dbv is None else dbv, part, n, c, hw, cg, g, nb, *args, STAGE=2, **common)
    return dx, dg, (C.empty_grad(x) if db is None else db), dw, dbias


# ----------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------
for _op, _fn in ((OP_MOD, sft_modulate_forward), (OP_MOD_BWD, sft_modulate_backward),
                 (OP_GN, sft_group_norm_forward), (OP_GN_BWD, sft_group_norm_backward)):
    register_kernel(_op, "triton", _fn, supports=C.TRITON)
