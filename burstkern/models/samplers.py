"""Samplers on the fused denoise ops: EDM Heun (the teacher, from noise or an early-step start) and consistency
one-step / multistep sampling (the student).

A denoiser here is any callable ``F(x_in, c_noise) -> raw network output`` with ``x_in = c_in·x`` ``[N, ...]``
and ``c_noise`` ``[N]``; the samplers apply c_in / c_skip / c_out themselves through ``burstkern.ops``
(``denoise_combine``'s scalings inside ``edm_euler_update`` / ``edm_heun_update`` / ``cm_update``), so the
active backend decides which kernels run.

No host sync inside the loops: the σ schedule is computed once on the device (and once on the host, as Python
floats, for the churn decisions that Algorithm 2 makes per step), per-step σ are 0-d views of that tensor, and
noise seeds are drawn on the device. A whole sampling call can therefore be captured in a CUDA graph (as long
as the denoiser can) and replayed with fresh noise.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from .. import ops
from ..ops.denoise import reference as _ref

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_x(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"{name} must be a floating-point tensor [N, ...], got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else (tuple(x.shape), x.dtype)}")
    return x


def _call(F: Denoiser, x: torch.Tensor, c_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
    out = F(x * c_in.to(x.dtype), c_noise.expand(x.shape[0]))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"the denoiser must return a tensor shaped like its input {tuple(x.shape)}, got "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out.to(x.dtype)


@torch.no_grad()
def edm_heun_sampler(F: Denoiser, x_init_or_noise: torch.Tensor, num_steps: int = 40, sigma_min: float = 0.002,
                     sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0, S_min: float = 0.0,
                     S_max: float = float("inf"), S_noise: float = 1.0, start: str = "noise",
                     generator: Optional[torch.Generator] = None, sigma_data: float = 0.5,
                     clamp: Union[None, bool, float] = None) -> torch.Tensor:
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2) with Heun steps on a Karras schedule.

    Args:
        F: denoiser ``F(x_in, c_noise)`` returning the raw network output (EDM preconditioning applied here).
        x_init_or_noise: ``start="noise"``: unit Gaussian noise ``[N, ...]``, scaled to σ_max;
            ``start="early"`` (early-step skipping, E-BSRD): the initial estimate ``x_init``, started from
            ``x_τ = x_init + σ_max·ε``; ``start="noised"``: an input already at σ_max (e.g. that x_τ), used as is.
        num_steps, sigma_min, sigma_max, rho: the Karras schedule (σ_N = 0 appended).
        S_churn, S_min, S_max, S_noise: stochasticity; ``γ_i = min(S_churn/N, √2 − 1)`` for σ_i in [S_min, S_max].
        generator: torch generator for ε (default: the device's default generator).
        clamp: E-BSRD's clamping: a float c (``True`` = 1.0) clamps the denoised estimate D(x; σ) to [−c, c] at
            every evaluation, and the result, as E-BSRD's Heun sampler does for images in [-1, 1]. ``None`` /
            ``False`` (the default): no clamping, EDM's Algorithm 2 as published, the fused
            ``edm_euler_update`` / ``edm_heun_update`` path unchanged. The default stays off because it is the
            sampler the shipped weights' held-out teacher numbers (burstkern/weights/README.md) were measured
            with and the one ``burstkern.train`` distils the student from; the output can therefore leave
            [-1, 1] slightly (metrics clamp RGB to [0, 1]).

    Returns:
        the sample, like ``x_init_or_noise`` (in [−clamp, clamp] when clamping).

    Example::

        >>> x0 = edm_heun_sampler(net, torch.randn(4, 3, 64, 64), num_steps=40, sigma_max=80.0)
        >>> sr = edm_heun_sampler(net, x_init, num_steps=40, sigma_min=1e-8, sigma_max=0.03, start="early")
    """
    x = _check_x("x_init_or_noise", x_init_or_noise)
    if start not in ("noise", "early", "noised"):
        raise ValueError(f"start must be 'noise', 'early' or 'noised', got {start!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    c = _clamp_value(clamp)
    sig = ops.karras_schedule(num_steps, sigma_min, sigma_max, rho, device=x.device)
    host = _ref.karras_schedule_host(num_steps, sigma_min, sigma_max, rho)
    gammas = [_ref.churn_gamma(host[i], num_steps, S_churn, S_min, S_max) for i in range(num_steps)]
    # scalings of every σ_i (the last, 0, clamped: its c_in/c_noise are never used) in one call
    _, _, c_in, c_noise = ops.edm_scalings(sig.clamp_min(torch.finfo(torch.float32).tiny), sigma_data)

    if start == "noise":
        x = x * sig[0].to(x.dtype)
    elif start == "early":
        x = ops.add_noise(x, sig[0], generator=generator)
    for i in range(num_steps):
        s_cur, s_next = sig[i], sig[i + 1]
        if gammas[i] > 0:  # churn: raise σ to σ̂ = σ(1 + γ) (device ops with a host constant: no sync)
            s_hat = s_cur * (1.0 + gammas[i])
            _, _, c_in_hat, c_noise_hat = ops.edm_scalings(s_hat, sigma_data)
            x_hat = ops.add_noise(x, s_hat, sigma_base=s_cur, s_noise=S_noise, generator=generator)
        else:
            s_hat, c_in_hat, c_noise_hat, x_hat = s_cur, c_in[i], c_noise[i], x
        f = _call(F, x_hat, c_in_hat, c_noise_hat)
        if c is None:
            x_next, d = ops.edm_euler_update(x_hat, f, s_hat, s_next, sigma_data)
        else:  # E-BSRD: d from the clamped denoised estimate (at σ_next = 0 the Euler step lands on D itself)
            d = (x_hat - _denoised(x_hat, f, s_hat, sigma_data, c)) / s_hat.to(x.dtype)
            x_next = x_hat + (s_next - s_hat).to(x.dtype) * d
        if i < num_steps - 1:  # σ_next > 0: second-order correction
            f_next = _call(F, x_next, c_in[i + 1], c_noise[i + 1])
            if c is None:
                x_next = ops.edm_heun_update(x_hat, d, x_next, f_next, s_hat, s_next, sigma_data)
            else:
                d2 = (x_next - _denoised(x_next, f_next, s_next, sigma_data, c)) / s_next.to(x.dtype)
                x_next = x_hat + (s_next - s_hat).to(x.dtype) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x if c is None else x.clamp(-c, c)


def _clamp_value(clamp) -> Optional[float]:
    """``clamp`` of :func:`edm_heun_sampler` as a float bound, or None for no clamping."""
    if clamp is None or clamp is False:
        return None
    if clamp is True:
        return 1.0
    if isinstance(clamp, (int, float)) and math.isfinite(clamp) and clamp > 0:
        return float(clamp)
    raise ValueError(f"clamp must be None, a bool or a finite float > 0, got {clamp!r}")


def _denoised(x: torch.Tensor, f: torch.Tensor, sigma: torch.Tensor, sigma_data: float, c: float) -> torch.Tensor:
    """EDM's D(x; σ) = c_skip·x + c_out·F (the active backend's denoise_combine), clamped to [−c, c]."""
    return ops.denoise_combine(x, f, sigma, sigma_data=sigma_data, mode="edm").clamp(-c, c)


@torch.no_grad()
def consistency_sample(F: Denoiser, x_init: torch.Tensor, sigmas: Sequence[float] = (0.03,),
                       sigma_min: float = 0.002, clamp: Optional[float] = 1.0,
                       generator: Optional[torch.Generator] = None, sigma_data: float = 0.5) -> torch.Tensor:
    """Consistency-model sampling from an initial estimate: one step, or multistep with re-noising.

    ``x = x_init + σ_0·ε``; for each σ_i: ``x0 = clamp(f(x, σ_i))`` with ``f = c_skip^cm·x + c_out^cm·F``,
    then ``x = x0 + √(σ_{i+1}² − σ_min²)·ε`` while a next σ remains. E-BSRD one-step:
    ``clamp(f(x_init + 0.03·ε, 0.03), −1, 1)``.

    Args:
        F: denoiser ``F(x_in, c_noise)`` returning the raw network output.
        x_init: ``[N, ...]`` initial estimate.
        sigmas: decreasing noise levels (floats), the first is the start level.
        clamp: clamp every x0 to [−clamp, clamp] (None: no clamp).

    Returns:
        like ``x_init``.

    Example::

        >>> sr = consistency_sample(student, x_init)                       # one step at σ = 0.03
        >>> sr = consistency_sample(student, x_init, sigmas=(0.08, 0.03))  # two steps
    """
    x = _check_x("x_init", x_init)
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not math.isfinite(s) or s <= sigma_min for s in sigmas):
        raise ValueError(f"sigmas must be a non-empty sequence of finite floats > sigma_min ({sigma_min}), "
                         f"got {sigmas}")
    # σ as device scalars made by fill kernels (no host-to-device copy: capturable in a CUDA graph)
    sig = torch.stack([torch.full((), v, dtype=torch.float32, device=x.device) for v in sigmas])
    _, _, c_in, c_noise = ops.cm_scalings(sig, sigma_min, sigma_data)
    x = ops.add_noise(x, sig[0], generator=generator)
    for i in range(len(sigmas)):
        f = _call(F, x, c_in[i], c_noise[i])
        nxt = sig[i + 1] if i + 1 < len(sigmas) else None
        x = ops.cm_update(x, f, sig[i], sigma_min, sigma_data, sigma_next=nxt, clamp=clamp,
                          generator=generator if nxt is not None else None)
    return x
