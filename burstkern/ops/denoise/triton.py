"""Triton kernels and launchers of the denoise ops (one launch per op; autograd lives in op.py).

All kernels are elementwise over the flattened output in its memory order (contiguous or channels_last, the
layout ``C.memory_format_of(x)`` picks; other inputs are brought to that layout first, a copy only when
they are not in it already). Math is fp32 for fp32/fp16/bf16 storage; fp64 is the reference backend's job.
Offsets are int64 (a 16x4x1024² batch is already 2^26 elements; bursts of large images pass 2^31).
σ is loaded per element from its sample's slot (``offs // M``, stride 0 for a scalar σ), so per-sample σ
costs one cached load and no host sync.

Reductions (``edm_loss`` forward, the σ gradient of ``denoise_combine``) run on a (sample, block) grid:
each program sums one block of one sample and writes a partial, and torch sums the ``[N, blocks]`` partials
(deterministic, unlike atomics; the partials are 1/1024 of the input's size).

In-kernel noise is ``tl.randn(seed, i)`` with ``i`` the element's logical row-major index (so a channels_last
tensor gets the same noise as its contiguous copy), the spec in rng.py; ``seed`` is loaded from a device
tensor so CUDA-graph replays see the fresh seed the generator wrote.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _common as C
from ...registry import register_kernel
from . import op as O

BLOCK = 1024
NUM_WARPS = 4


def _new(like: torch.Tensor, shape=None, dtype=None) -> torch.Tensor:
    return C.poisoned(C.empty_like_format(like, shape=shape, dtype=dtype))


def _fmt_inputs(x: torch.Tensor, *ts):
    fmt = C.memory_format_of(x)
    return fmt, [None if t is None else C.to_format(t, fmt) for t in (x,) + ts]


def _sstride(s: torch.Tensor) -> int:
    """Element stride between samples' σ: 0 for a scalar σ."""
    return s.stride(0) if s.dim() == 1 else 0


def _per_sample(x: torch.Tensor) -> int:
    return x.numel() // x.shape[0] if x.shape[0] > 0 else 0


def _grid(total: int):
    return (triton.cdiv(total, BLOCK),)


def _cl_dims(x: torch.Tensor, fmt) -> tuple:
    """(CHANNELS_LAST, C, H, W) for the logical-index computation of in-kernel noise."""
    if fmt == torch.channels_last and x.dim() == 4:
        return True, x.shape[1], x.shape[2], x.shape[3]
    return False, 1, 1, 1


# ----------------------------------------------------------------------------------------------
# shared device functions
# ----------------------------------------------------------------------------------------------
@triton.jit
def _shifted(sig, smin, IS_CM: tl.constexpr):
    """(e, shift) of the σ-parametrisation: CM's σ − σ_min and σ_min, EDM's σ and 0."""
    if IS_CM:
        e = sig - smin
        shift = smin
    else:
        e = sig
        shift = 0.0
    return e, shift


@triton.jit
def _coeffs(sig, sd, smin, IS_CM: tl.constexpr):
    """(c_skip, c_out, c_in) in fp32."""
    sd2 = sd * sd
    c_in = 1.0 / tl.sqrt_rn(sig * sig + sd2)
    e, _ = _shifted(sig, smin, IS_CM)
    c_skip = sd2 / (e * e + sd2)
    c_out = e * sd * c_in
    return c_skip, c_out, c_in


@triton.jit
def _coeff_derivs(sig, sd, smin, IS_CM: tl.constexpr):
    """(d c_skip/dσ, d c_out/dσ) in fp32."""
    sd2 = sd * sd
    den = sig * sig + sd2
    r3 = 1.0 / (den * tl.sqrt_rn(den))
    e, shift = _shifted(sig, smin, IS_CM)
    dm = e * e + sd2
    d_skip = -2.0 * e * sd2 / (dm * dm)
    d_out = sd * (sd2 + shift * sig) * r3  # = sd·(den − e·σ)·r3 without the fp32 cancellation for σ ≫ sd
    return d_skip, d_out


@triton.jit
def _derivative_coeffs(sig, sd, smin, IS_CM: tl.constexpr):
    """(a, b, da, db) of d = (x − D)/σ = a·x − b·F and their σ-derivatives (reference.derivative_coefficients):
    no 1 − c_skip by subtraction, no −dD/σ − (x − D)/σ² (both cancel in fp32 for σ ≪ sd)."""
    sd2 = sd * sd
    e, shift = _shifted(sig, smin, IS_CM)
    den = sig * sig + sd2
    dm = e * e + sd2
    s2 = sig * sig
    r = 1.0 / tl.sqrt_rn(den)
    a = e * e / (sig * dm)
    b = e * sd * r / sig
    da = e * ((sig + shift) * sd2 - e * e * e) / (s2 * dm * dm)
    db = sd * (shift * den - e * s2) * r / (s2 * den)
    return a, b, da, db


@triton.jit
def _offsets(total, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < total


@triton.jit
def _sample_offsets(total, M, BLOCK: tl.constexpr):
    """This program's flat offsets, their mask and their samples (M elements a sample)."""
    offs, mask = _offsets(total, BLOCK)
    return offs, mask, offs // M


@triton.jit
def _load_sigma(ptr, n, stride, mask):
    # other=1 keeps masked lanes finite (they divide by σ)
    return tl.load(ptr + n * stride, mask=mask, other=1.0).to(tl.float32)


@triton.jit
def _normal(seed_ptr, offs, CHANNELS_LAST: tl.constexpr, Cc, Hh, Ww):
    """tl.randn at the element's logical (row-major) index; memory order differs only for channels_last."""
    if CHANNELS_LAST:
        c = offs % Cc
        t = offs // Cc
        w = t % Ww
        t = t // Ww
        h = t % Hh
        nb = t // Hh
        lidx = ((nb * Cc + c) * Hh + h) * Ww + w
    else:
        lidx = offs
    seed = tl.load(seed_ptr)
    return tl.randn(seed, lidx)


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _denoise_scalings_fwd_kernel(sig_ptr, skip_ptr, out_ptr, in_ptr, noise_ptr, total, sd, smin,
                                 IS_CM: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = _offsets(total, BLOCK)
    sig = tl.load(sig_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    c_skip, c_out, c_in = _coeffs(sig, sd, smin, IS_CM)
    tl.store(skip_ptr + offs, c_skip, mask=mask)
    tl.store(out_ptr + offs, c_out, mask=mask)
    tl.store(in_ptr + offs, c_in, mask=mask)
    tl.store(noise_ptr + offs, tl.log(sig) * 0.25, mask=mask)


@triton.jit
def _denoise_combine_fwd_kernel(x_ptr, f_ptr, sig_ptr, D_ptr, d_ptr, total, M, s_stride, sd, smin,
                                IS_CM: tl.constexpr, RETURN_D: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = _offsets(total, BLOCK)
    sig = _load_sigma(sig_ptr, offs // M, s_stride, mask)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    f = tl.load(f_ptr + offs, mask=mask).to(tl.float32)
    c_skip, c_out, _ = _coeffs(sig, sd, smin, IS_CM)
    D = c_skip * x + c_out * f
    tl.store(D_ptr + offs, D.to(D_ptr.dtype.element_ty), mask=mask)
    if RETURN_D:
        tl.store(d_ptr + offs, ((x - D) / sig).to(d_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sample_block(M, nblk, BLOCK: tl.constexpr):
    """(sample n, flat offsets, mask) of a program of the (sample, block) grid: a block never spans two samples, so
    its partial sums belong to one."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // nblk
    o_in = (pid % nblk) * BLOCK + tl.arange(0, BLOCK)
    return n, n * M + o_in, o_in < M


@triton.jit
def _denoise_combine_bwd_kernel(gD_ptr, gd_ptr, x_ptr, f_ptr, sig_ptr, gx_ptr, gf_ptr, part_ptr, M, nblk,
                                s_stride, sd, smin, IS_CM: tl.constexpr, HAS_GD: tl.constexpr,
                                NEED_SIGMA: tl.constexpr, BLOCK: tl.constexpr):
    # (sample, block) grid so one program's σ-gradient partial belongs to one sample
    n, offs, mask = _sample_block(M, nblk, BLOCK)
    sig = tl.load(sig_ptr + n * s_stride).to(tl.float32)
    c_skip, c_out, _ = _coeffs(sig, sd, smin, IS_CM)
    gD = tl.load(gD_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gx = gD * c_skip
    gf = gD * c_out
    a, b, da, db = _derivative_coeffs(sig, sd, smin, IS_CM)
    if HAS_GD:
        gd = tl.load(gd_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gx += gd * a
        gf -= gd * b
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gf_ptr + offs, gf.to(gf_ptr.dtype.element_ty), mask=mask)
    if NEED_SIGMA:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d_skip, d_out = _coeff_derivs(sig, sd, smin, IS_CM)
        t = gD * (d_skip * x + d_out * f)
        if HAS_GD:
            t += gd * (da * x - db * f)
        tl.store(part_ptr + tl.program_id(0), tl.sum(tl.where(mask, t, 0.0), axis=0))


@triton.jit
def _edm_euler_update_fwd_kernel(x_ptr, f_ptr, sig_ptr, sn_ptr, xn_ptr, d_ptr, total, M, s_stride, sn_stride, sd,
                                 BLOCK: tl.constexpr):
    offs, mask, n = _sample_offsets(total, M, BLOCK)
    sig = _load_sigma(sig_ptr, n, s_stride, mask)
    sn = _load_sigma(sn_ptr, n, sn_stride, mask)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    f = tl.load(f_ptr + offs, mask=mask).to(tl.float32)
    c_skip, c_out, _ = _coeffs(sig, sd, 0.0, False)
    d = (x - (c_skip * x + c_out * f)) / sig
    tl.store(xn_ptr + offs, (x + (sn - sig) * d).to(xn_ptr.dtype.element_ty), mask=mask)
    tl.store(d_ptr + offs, d.to(d_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _edm_heun_update_fwd_kernel(xh_ptr, d_ptr, xn_ptr, fn_ptr, sh_ptr, sn_ptr, out_ptr, total, M, sh_stride,
                                sn_stride, sd, BLOCK: tl.constexpr):
    offs, mask, n = _sample_offsets(total, M, BLOCK)
    sh = _load_sigma(sh_ptr, n, sh_stride, mask)
    sn = _load_sigma(sn_ptr, n, sn_stride, mask)
    xh = tl.load(xh_ptr + offs, mask=mask).to(tl.float32)
    d = tl.load(d_ptr + offs, mask=mask).to(tl.float32)
    xn = tl.load(xn_ptr + offs, mask=mask).to(tl.float32)
    fn = tl.load(fn_ptr + offs, mask=mask).to(tl.float32)
    pos = sn > 0.0
    sn_safe = tl.where(pos, sn, 1.0)  # σ_next = 0 (last step): keep the Euler result, avoid 0/0
    c_skip, c_out, _ = _coeffs(sn_safe, sd, 0.0, False)
    d2 = (xn - (c_skip * xn + c_out * fn)) / sn_safe
    out = tl.where(pos, xh + (sn - sh) * (d + d2) * 0.5, xn)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_noise_fwd_kernel(x_ptr, sig_ptr, sb_ptr, noise_ptr, seed_ptr, out_ptr, total, M, s_stride, sb_stride,
                          s_noise, Cc, Hh, Ww, HAS_BASE: tl.constexpr, HAS_NOISE: tl.constexpr,
                          CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, n = _sample_offsets(total, M, BLOCK)
    sig = _load_sigma(sig_ptr, n, s_stride, mask)
    v = sig * sig
    if HAS_BASE:
        sb = _load_sigma(sb_ptr, n, sb_stride, mask)
        v -= sb * sb
    # compare-and-select, not tl.maximum (which returns 0 for a NaN v): a NaN σ gives NaN, as the reference does
    scale = tl.sqrt_rn(tl.where(v < 0.0, 0.0, v)) * s_noise
    if HAS_NOISE:
        eps = tl.load(noise_ptr + offs, mask=mask).to(tl.float32)
    else:
        eps = _normal(seed_ptr, offs, CHANNELS_LAST, Cc, Hh, Ww)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, (x + scale * eps).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cm_update_fwd_kernel(x_ptr, f_ptr, sig_ptr, sn_ptr, noise_ptr, seed_ptr, out_ptr, total, M, s_stride,
                          sn_stride, smin, sd, clamp, Cc, Hh, Ww, HAS_CLAMP: tl.constexpr, HAS_NEXT: tl.constexpr,
                          HAS_NOISE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, n = _sample_offsets(total, M, BLOCK)
    sig = _load_sigma(sig_ptr, n, s_stride, mask)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    f = tl.load(f_ptr + offs, mask=mask).to(tl.float32)
    c_skip, c_out, _ = _coeffs(sig, sd, smin, True)
    x0 = c_skip * x + c_out * f
    if HAS_CLAMP:
        # compare-and-select keeps NaN as torch.clamp does
        x0 = tl.where(x0 < -clamp, -clamp, tl.where(x0 > clamp, clamp, x0))
    if HAS_NEXT:
        sn = _load_sigma(sn_ptr, n, sn_stride, mask)
        v = sn * sn - smin * smin
        scale = tl.sqrt_rn(tl.where(v < 0.0, 0.0, v))  # NaN σ_next propagates (tl.maximum would give 0)
        if HAS_NOISE:
            eps = tl.load(noise_ptr + offs, mask=mask).to(tl.float32)
        else:
            eps = _normal(seed_ptr, offs, CHANNELS_LAST, Cc, Hh, Ww)
        x0 += scale * eps
    tl.store(out_ptr + offs, x0.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cm_update_bwd_kernel(g_ptr, x_ptr, f_ptr, sig_ptr, gx_ptr, gf_ptr, total, M, s_stride, smin, sd, clamp,
                          HAS_CLAMP: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = _offsets(total, BLOCK)
    sig = _load_sigma(sig_ptr, offs // M, s_stride, mask)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    c_skip, c_out, _ = _coeffs(sig, sd, smin, True)
    if HAS_CLAMP:
        # torch.clamp's gradient passes where -clamp <= x0 <= clamp (inclusive)
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        f = tl.load(f_ptr + offs, mask=mask).to(tl.float32)
        x0 = c_skip * x + c_out * f
        g = tl.where((x0 >= -clamp) & (x0 <= clamp), g, 0.0)
    tl.store(gx_ptr + offs, (g * c_skip).to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gf_ptr + offs, (g * c_out).to(gf_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _edm_loss_fwd_kernel(x_ptr, f_ptr, y_ptr, sig_ptr, part_ptr, M, nblk, s_stride, sd, BLOCK: tl.constexpr):
    n, offs, mask = _sample_block(M, nblk, BLOCK)
    sig = tl.load(sig_ptr + n * s_stride).to(tl.float32)
    c_skip, c_out, _ = _coeffs(sig, sd, 0.0, False)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = c_skip * x + c_out * f - y
    tl.store(part_ptr + tl.program_id(0), tl.sum(tl.where(mask, r * r, 0.0), axis=0))


@triton.jit
def _edm_loss_bwd_kernel(gl_ptr, x_ptr, f_ptr, y_ptr, sig_ptr, gx_ptr, gf_ptr, gy_ptr, total, M, s_stride,
                         gl_stride, sd, BLOCK: tl.constexpr):
    offs, mask, n = _sample_offsets(total, M, BLOCK)
    sig = _load_sigma(sig_ptr, n, s_stride, mask)
    gl = tl.load(gl_ptr + n * gl_stride, mask=mask, other=0.0).to(tl.float32)
    c_skip, c_out, _ = _coeffs(sig, sd, 0.0, False)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    f = tl.load(f_ptr + offs, mask=mask).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
    lam = (sig * sig + sd * sd) / (sig * sd * sig * sd)
    # d mean(λ(D−y)²)/dD = 2λ(D−y)/M
    r = gl * lam * 2.0 * (c_skip * x + c_out * f - y) / M
    tl.store(gx_ptr + offs, (r * c_skip).to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gf_ptr + offs, (r * c_out).to(gf_ptr.dtype.element_ty), mask=mask)
    tl.store(gy_ptr + offs, (-r).to(gy_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _randn_fwd_kernel(seed_ptr, out_ptr, total, BLOCK: tl.constexpr):
    offs, mask = _offsets(total, BLOCK)
    tl.store(out_ptr + offs, _normal(seed_ptr, offs, False, 1, 1, 1), mask=mask)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def randn(seed: torch.Tensor, shape, device) -> torch.Tensor:
    """Contiguous float32 ``shape`` of the rng.py normals under ``seed``, drawn by a Triton kernel."""
    out = C.poisoned(torch.empty(tuple(shape), dtype=torch.float32, device=device))
    if out.numel():
        _randn_fwd_kernel[_grid(out.numel())](seed.to(device), out, out.numel(), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out


@register_kernel(O.OP_SCALINGS, "triton", supports=C.TRITON)
def denoise_scalings(sigma, sd, smin, mode):
    s = sigma.contiguous()
    outs = [C.poisoned(torch.empty(sigma.shape, dtype=torch.float32, device=sigma.device)) for _ in range(4)]
    if s.numel():
        _denoise_scalings_fwd_kernel[_grid(s.numel())](s, *outs, s.numel(), sd, smin, IS_CM=(mode == "cm"),
                                                       BLOCK=BLOCK, num_warps=NUM_WARPS)
    return tuple(outs)


@register_kernel(O.OP_COMBINE, "triton", supports=C.TRITON)
def denoise_combine_forward(x, F, sigma, sd, smin, mode, return_d):
    _, (x, F) = _fmt_inputs(x, F)
    D = _new(x)
    d = _new(x) if return_d else C.empty_grad(x)
    if x.numel():
        _denoise_combine_fwd_kernel[_grid(x.numel())](
            x, F, sigma, D, D if not return_d else d, x.numel(), _per_sample(x), _sstride(sigma), sd, smin,
            IS_CM=(mode == "cm"), RETURN_D=return_d, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return D, d


@register_kernel(O.OP_COMBINE_BWD, "triton", supports=C.TRITON)
def denoise_combine_backward(grad_D, grad_d, x, F, sigma, sd, smin, mode, return_d, need_sigma):
    has_gd = return_d and grad_d.numel() == x.numel() and x.numel() > 0
    _, (x, F, grad_D, grad_d) = _fmt_inputs(x, F, grad_D, grad_d if has_gd else None)
    gx, gF = _new(x), _new(x)
    n, m = x.shape[0], _per_sample(x)
    nblk = max(1, triton.cdiv(m, BLOCK))
    part = torch.empty(n * nblk if need_sigma else 1, dtype=torch.float32, device=x.device)
    if x.numel():
        _denoise_combine_bwd_kernel[(n * nblk,)](
            grad_D, grad_d if has_gd else grad_D, x, F, sigma, gx, gF, part, m, nblk, _sstride(sigma), sd, smin,
            IS_CM=(mode == "cm"), HAS_GD=has_gd, NEED_SIGMA=need_sigma, BLOCK=BLOCK, num_warps=NUM_WARPS)
    if not need_sigma:
        return gx, gF, C.empty_grad(x)
    if x.numel() == 0:
        part.zero_()
    per = part[: n * nblk].view(n, nblk).sum(1)
    gs = per if sigma.dim() == 1 else per.sum()
    return gx, gF, gs.to(sigma.dtype).reshape(sigma.shape).contiguous()


@register_kernel(O.OP_EULER, "triton", supports=C.TRITON)
def edm_euler_update(x, F, sigma, sigma_next, sd):
    _, (x, F) = _fmt_inputs(x, F)
    xn, d = _new(x), _new(x)
    if x.numel():
        _edm_euler_update_fwd_kernel[_grid(x.numel())](
            x, F, sigma, sigma_next, xn, d, x.numel(), _per_sample(x), _sstride(sigma), _sstride(sigma_next), sd,
            BLOCK=BLOCK, num_warps=NUM_WARPS)
    return xn, d


@register_kernel(O.OP_HEUN, "triton", supports=C.TRITON)
def edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd):
    _, (x_hat, d, x_next, F_next) = _fmt_inputs(x_hat, d, x_next, F_next)
    out = _new(x_hat)
    if x_hat.numel():
        _edm_heun_update_fwd_kernel[_grid(x_hat.numel())](
            x_hat, d, x_next, F_next, sigma_hat, sigma_next, out, x_hat.numel(), _per_sample(x_hat),
            _sstride(sigma_hat), _sstride(sigma_next), sd, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out


@register_kernel(O.OP_ADD_NOISE, "triton", supports=C.TRITON)
def add_noise(x, sigma, sigma_base, s_noise, noise, seed):
    fmt, (x, noise) = _fmt_inputs(x, noise)
    out = _new(x)
    cl, cc, hh, ww = _cl_dims(x, fmt)
    if x.numel():
        _add_noise_fwd_kernel[_grid(x.numel())](
            x, sigma, sigma if sigma_base is None else sigma_base, x if noise is None else noise,
            seed if seed is not None else x, out, x.numel(), _per_sample(x), _sstride(sigma),
            0 if sigma_base is None else _sstride(sigma_base), s_noise, cc, hh, ww,
            HAS_BASE=sigma_base is not None, HAS_NOISE=noise is not None, CHANNELS_LAST=cl, BLOCK=BLOCK,
            num_warps=NUM_WARPS)
    return out


@register_kernel(O.OP_CM, "triton", supports=C.TRITON)
def cm_update(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed):
    fmt, (x, F, noise) = _fmt_inputs(x, F, noise)
    out = _new(x)
    cl, cc, hh, ww = _cl_dims(x, fmt)
    if x.numel():
        _cm_update_fwd_kernel[_grid(x.numel())](
            x, F, sigma, sigma if sigma_next is None else sigma_next, x if noise is None else noise,
            seed if seed is not None else x, out, x.numel(), _per_sample(x), _sstride(sigma),
            0 if sigma_next is None else _sstride(sigma_next), smin, sd, 0.0 if clamp is None else clamp, cc, hh,
            ww, HAS_CLAMP=clamp is not None, HAS_NEXT=sigma_next is not None, HAS_NOISE=noise is not None,
            CHANNELS_LAST=cl, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out


@register_kernel(O.OP_CM_BWD, "triton", supports=C.TRITON)
def cm_update_backward(grad, x, F, sigma, smin, sd, clamp):
    _, (x, F, grad) = _fmt_inputs(x, F, grad)
    gx, gF = _new(x), _new(x)
    if x.numel():
        _cm_update_bwd_kernel[_grid(x.numel())](
            grad, x, F, sigma, gx, gF, x.numel(), _per_sample(x), _sstride(sigma), smin, sd,
            0.0 if clamp is None else clamp, HAS_CLAMP=clamp is not None, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return gx, gF


@register_kernel(O.OP_LOSS, "triton", supports=C.TRITON)
def edm_loss_forward(x, F, y, sigma, sd):
    _, (x, F, y) = _fmt_inputs(x, F, y)
    n, m = x.shape[0], _per_sample(x)
    nblk = max(1, triton.cdiv(m, BLOCK))
    part = C.poisoned(torch.empty(n * nblk, dtype=torch.float32, device=x.device))
    if x.numel():
        _edm_loss_fwd_kernel[(n * nblk,)](x, F, y, sigma, part, m, nblk, _sstride(sigma), sd, BLOCK=BLOCK,
                                          num_warps=NUM_WARPS)
    else:
        part.zero_()
    # λ(σ) and 1/M applied to N sums rather than to every element
    s = sigma.to(torch.float32).expand(n)
    lam = (s * s + sd * sd) / (s * sd) ** 2
    return (part.view(n, nblk).sum(1) * lam / max(m, 1)).to(x.dtype)


@register_kernel(O.OP_LOSS_BWD, "triton", supports=C.TRITON)
def edm_loss_backward(grad, x, F, y, sigma, sd):
    _, (x, F, y) = _fmt_inputs(x, F, y)
    gx, gF, gy = _new(x), _new(x), _new(x)
    if x.numel():
        _edm_loss_bwd_kernel[_grid(x.numel())](
            grad, x, F, y, sigma, gx, gF, gy, x.numel(), _per_sample(x), _sstride(sigma), grad.stride(0), sd,
            BLOCK=BLOCK, num_warps=NUM_WARPS)
    return gx, gF, gy
