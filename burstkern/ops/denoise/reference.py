"""EDM / consistency denoise updates in plain PyTorch: the spec every backend is pinned to.

Notation: ``sd = sigma_data``; per-sample ``sigma`` is a tensor ``[]`` or ``[N]``.

- EDM: ``c_skip = sd²/(σ²+sd²)``, ``c_out = σ·sd/√(σ²+sd²)``, ``c_in = 1/√(σ²+sd²)``, ``c_noise = ln(σ)/4``.
- CM:  ``c_skip = sd²/((σ−σ_min)²+sd²)``, ``c_out = (σ−σ_min)·sd/√(σ²+sd²)``, same ``c_in`` and ``c_noise``.
- ``D = c_skip·x + c_out·F``.

Math runs in fp32 for fp32/fp16/bf16 inputs (fp64 for fp64) and is rounded once to the input dtype.
Noise is the explicit ``noise`` tensor, else the counter-based normals of :mod:`.rng` under ``seed``.
Argument checks live in op.py; these functions assume valid arguments.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .._common import compute_dtype
from . import rng

MODES = ("edm", "cm")


def per_sample(s: torch.Tensor, x: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    """``s`` (``[]`` or ``[N]``) in ``cd``, shaped to broadcast against ``x`` ``[N, ...]``."""
    return s.to(cd).reshape((-1,) + (1,) * (x.dim() - 1))


def coefficients(sigma: torch.Tensor, sd: float, smin: float, mode: str):
    """(c_skip, c_out, c_in, c_noise) of ``sigma`` (any shape), in sigma's own dtype."""
    den = sigma * sigma + sd * sd
    c_in = torch.rsqrt(den)
    e = sigma - smin if mode == "cm" else sigma
    c_skip = sd * sd / (e * e + sd * sd)
    c_out = e * sd * c_in
    c_noise = torch.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


def scalings(sigma: torch.Tensor, sd: float, smin: float, mode: str):
    """The four scalings of ``sigma``, each shaped like ``sigma``, in fp32 (fp64 for an fp64 sigma)."""
    return coefficients(sigma.to(compute_dtype(sigma.dtype)), sd, smin, mode)


def scalings_derivatives(sigma: torch.Tensor, sd: float, smin: float, mode: str):
    """d/dσ of (c_skip, c_out, c_in, c_noise), closed form (used by the scalings' autograd)."""
    sigma = sigma.to(compute_dtype(sigma.dtype))
    den = sigma * sigma + sd * sd
    r3 = torch.rsqrt(den) / den
    e = sigma - smin if mode == "cm" else sigma
    dm = e * e + sd * sd
    d_skip = -2 * e * sd * sd / (dm * dm)
    # den - e·σ = sd² + σ_min·σ (CM; sd² for EDM), written so: the difference cancels in fp32 for σ ≫ sd
    d_out = sd * (sd * sd + (smin if mode == "cm" else 0.0) * sigma) * r3
    d_in = -sigma * r3
    d_noise = 0.25 / sigma
    return d_skip, d_out, d_in, d_noise


def derivative_coefficients(sigma: torch.Tensor, sd: float, smin: float, mode: str):
    """(a, b, da, db) with ``d = (x − D)/σ = a·x − b·F`` and their σ-derivatives, each in closed form.

    ``a = (1 − c_skip)/σ = e²/(σ·(e² + sd²))`` (``e = σ − σ_min`` for CM, σ for EDM), ``b = c_out/σ``;
    ``da = e·((σ + σ_min)·sd² − e³)/(σ²·(e² + sd²)²)``, ``db = sd·(σ_min·den − e·σ²)/(σ²·den^{3/2})``,
    ``den = σ² + sd²`` (σ_min = 0 for EDM). ``1 − c_skip`` by subtraction, and ``−dD/σ − (x − D)/σ²`` for the
    σ-derivative of d, cancel in fp32 for σ ≪ sd (1e-3 relative at σ = 0.002); these forms do not.
    """
    sh = smin if mode == "cm" else 0.0
    e = sigma - sh
    den = sigma * sigma + sd * sd
    dm = e * e + sd * sd
    s2 = sigma * sigma
    a = e * e / (sigma * dm)
    b = e * sd * torch.rsqrt(den) / sigma
    da = e * ((sigma + sh) * sd * sd - e * e * e) / (s2 * dm * dm)
    db = sd * (sh * den - e * s2) * torch.rsqrt(den) / (s2 * den)
    return a, b, da, db


def karras_schedule(num_steps: int, sigma_min: float, sigma_max: float, rho: float,
                    device: Optional[torch.device] = None) -> torch.Tensor:
    """``[num_steps + 1]`` float32: Karras et al. σ_i, i < num_steps, then σ_N = 0 (computed in fp64)."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    frac = i / (num_steps - 1) if num_steps > 1 else i
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    sig = (hi + frac * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)]).to(torch.float32)


def karras_schedule_host(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> list:
    """The same schedule as Python floats (for host-side decisions such as the churn γ; no device sync)."""
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    out = [(hi + (i / (num_steps - 1) if num_steps > 1 else 0.0) * (lo - hi)) ** rho for i in range(num_steps)]
    return out + [0.0]


def _noise(x: torch.Tensor, noise: Optional[torch.Tensor], seed: Optional[torch.Tensor], cd) -> torch.Tensor:
    if noise is not None:
        return noise.to(cd)
    return rng.randn(seed, x.shape, device=x.device).to(cd)


def denoise_combine(x, F, sigma, sd: float, smin: float, mode: str, return_d: bool):
    """(D, d): ``D = c_skip·x + c_out·F`` and ``d = (x − D)/σ`` (an empty tensor unless ``return_d``)."""
    cd = compute_dtype(x.dtype)
    xs, fs, s = x.to(cd), F.to(cd), per_sample(sigma, x, cd)
    c_skip, c_out, _, _ = coefficients(s, sd, smin, mode)
    D = c_skip * xs + c_out * fs
    d = (xs - D) / s if return_d else x.new_empty((0,))
    return D.to(x.dtype), d.to(x.dtype)


def edm_euler_update(x, F, sigma, sigma_next, sd: float):
    """(x_next, d): ``d = (x − D(x;σ))/σ``, ``x_next = x + (σ_next − σ)·d``."""
    cd = compute_dtype(x.dtype)
    xs, fs = x.to(cd), F.to(cd)
    s, sn = per_sample(sigma, x, cd), per_sample(sigma_next, x, cd)
    c_skip, c_out, _, _ = coefficients(s, sd, 0.0, "edm")
    d = (xs - (c_skip * xs + c_out * fs)) / s
    return (xs + (sn - s) * d).to(x.dtype), d.to(x.dtype)


def edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd: float):
    """EDM Alg. 2 second stage: ``x_hat + (σ_next − σ_hat)·(d + (x_next − D(x_next;σ_next))/σ_next)/2``.

    Where ``σ_next == 0`` the correction is undefined and the result is ``x_next`` (the Euler step).
    """
    cd = compute_dtype(x_hat.dtype)
    xh, d0, xn, fn = x_hat.to(cd), d.to(cd), x_next.to(cd), F_next.to(cd)
    sh, sn = per_sample(sigma_hat, x_hat, cd), per_sample(sigma_next, x_hat, cd)
    pos = sn > 0
    sn_safe = torch.where(pos, sn, torch.ones_like(sn))
    c_skip, c_out, _, _ = coefficients(sn_safe, sd, 0.0, "edm")
    d2 = (xn - (c_skip * xn + c_out * fn)) / sn_safe
    out = torch.where(pos, xh + (sn - sh) * (d0 + d2) * 0.5, xn)
    return out.to(x_hat.dtype)


def noise_scale(sigma, sigma_base, s_noise: float, x, cd):
    """``√(max(σ² − σ_base², 0))·s_noise`` shaped to broadcast against x."""
    s = per_sample(sigma, x, cd)
    v = s * s
    if sigma_base is not None:
        b = per_sample(sigma_base, x, cd)
        v = v - b * b
    return torch.sqrt(torch.clamp_min(v, 0.0)) * s_noise


def add_noise(x, sigma, sigma_base, s_noise: float, noise, seed):
    """``x + √(max(σ² − σ_base², 0))·s_noise·ε`` (σ_base None = 0)."""
    cd = compute_dtype(x.dtype)
    eps = _noise(x, noise, seed, cd)
    return (x.to(cd) + noise_scale(sigma, sigma_base, s_noise, x, cd) * eps).to(x.dtype)


def cm_update(x, F, sigma, smin: float, sd: float, sigma_next, clamp: Optional[float], noise, seed):
    """``x0 = c_skip^cm·x + c_out^cm·F``, clamped to [−clamp, clamp], then ``+ √(σ_next² − σ_min²)·ε``."""
    cd = compute_dtype(x.dtype)
    s = per_sample(sigma, x, cd)
    c_skip, c_out, _, _ = coefficients(s, sd, smin, "cm")
    x0 = c_skip * x.to(cd) + c_out * F.to(cd)
    if clamp is not None:
        x0 = torch.clamp(x0, -clamp, clamp)
    if sigma_next is not None:
        eps = _noise(x, noise, seed, cd)
        sn = per_sample(sigma_next, x, cd)
        x0 = x0 + torch.sqrt(torch.clamp_min(sn * sn - smin * smin, 0.0)) * eps
    return x0.to(x.dtype)


def edm_loss(x_noisy, F, y, sigma, sd: float):
    """``[N]``: mean over all but the batch dim of ``λ(σ)·(D − y)²``, ``λ = (σ² + sd²)/(σ·sd)²``."""
    cd = compute_dtype(x_noisy.dtype)
    s = per_sample(sigma, x_noisy, cd)
    c_skip, c_out, _, _ = coefficients(s, sd, 0.0, "edm")
    D = c_skip * x_noisy.to(cd) + c_out * F.to(cd)
    lam = (s * s + sd * sd) / (s * sd) ** 2
    per = lam * (D - y.to(cd)) ** 2
    n = x_noisy.shape[0]
    if n == 0:
        return x_noisy.new_zeros((0,))
    return per.reshape(n, -1).mean(dim=1).to(x_noisy.dtype)


def churn_gamma(sigma: float, num_steps: int, S_churn: float, S_min: float, S_max: float) -> float:
    """EDM's γ_i (host-side, from the host copy of the schedule)."""
    return min(S_churn / num_steps, math.sqrt(2.0) - 1.0) if S_min <= sigma <= S_max else 0.0


# ----------------------------------------------------------------------------------------------
# backward formulas (closed form; gradcheck pins them to finite differences of the forwards above)
# ----------------------------------------------------------------------------------------------
def _sum_per_sample(t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    per = t.reshape(t.shape[0], t[0].numel() if t.shape[0] else 0).sum(1)  # explicit: no -1 at batch 0
    return per if sigma.dim() == 1 else per.sum()


def denoise_combine_backward(grad_D, grad_d, x, F, sigma, sd: float, smin: float, mode: str, need_sigma: bool):
    """(grad_x, grad_F, grad_sigma or None) of :func:`denoise_combine`; ``grad_d`` None when d is not used."""
    cd = compute_dtype(x.dtype)
    xs, fs, s = x.to(cd), F.to(cd), per_sample(sigma, x, cd)
    c_skip, c_out, _, _ = coefficients(s, sd, smin, mode)
    gD = grad_D.to(cd)
    gx, gF = gD * c_skip, gD * c_out
    if grad_d is not None:  # d = a·x − b·F (derivative_coefficients: no 1 − c_skip by subtraction)
        gd = grad_d.to(cd)
        a, b, da, db = derivative_coefficients(s, sd, smin, mode)
        gx = gx + gd * a
        gF = gF - gd * b
    gs = None
    if need_sigma:
        d_skip, d_out, _, _ = scalings_derivatives(s, sd, smin, mode)
        t = gD * (d_skip * xs + d_out * fs)
        if grad_d is not None:
            t = t + gd * (da * xs - db * fs)
        gs = _sum_per_sample(t, sigma).to(sigma.dtype)
    return gx.to(x.dtype), gF.to(x.dtype), gs


def cm_update_backward(grad, x, F, sigma, smin: float, sd: float, clamp: Optional[float]):
    """(grad_x, grad_F) of :func:`cm_update` (the re-noise term does not depend on x or F)."""
    cd = compute_dtype(x.dtype)
    s = per_sample(sigma, x, cd)
    c_skip, c_out, _, _ = coefficients(s, sd, smin, "cm")
    g = grad.to(cd)
    if clamp is not None:
        # torch.clamp passes the gradient where -clamp <= x0 <= clamp
        x0 = c_skip * x.to(cd) + c_out * F.to(cd)
        g = torch.where((x0 >= -clamp) & (x0 <= clamp), g, torch.zeros_like(g))
    return (g * c_skip).to(x.dtype), (g * c_out).to(x.dtype)


def edm_loss_backward(grad, x_noisy, F, y, sigma, sd: float):
    """(grad_x_noisy, grad_F, grad_y) of :func:`edm_loss` for a loss gradient ``grad`` ``[N]``."""
    cd = compute_dtype(x_noisy.dtype)
    s = per_sample(sigma, x_noisy, cd)
    c_skip, c_out, _, _ = coefficients(s, sd, 0.0, "edm")
    lam = (s * s + sd * sd) / (s * sd) ** 2
    m = x_noisy[0].numel() if x_noisy.shape[0] else 1
    r = per_sample(grad, x_noisy, cd) * lam * 2 * (c_skip * x_noisy.to(cd) + c_out * F.to(cd) - y.to(cd)) / m
    return (r * c_skip).to(x_noisy.dtype), (r * c_out).to(x_noisy.dtype), (-r).to(x_noisy.dtype)
