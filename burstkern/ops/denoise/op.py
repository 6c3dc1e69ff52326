"""EDM / consistency denoise ops: public functions, ``torch.library`` registration, fake impls, autograd.

Ops (namespace ``burstkern``), each resolving its kernel from the backend registry at run time:

==================  ==========================================================  ===================================
op                  result                                                      autograd
==================  ==========================================================  ===================================
denoise_scalings    (c_skip, c_out, c_in, c_noise) of σ, EDM or CM              σ (closed form, plain torch)
karras_schedule     σ_0..σ_{N-1}, 0                                             none (no tensor inputs)
denoise_combine     D = c_skip·x + c_out·F (and d = (x − D)/σ)                  x, F, σ (own backward op)
edm_euler_update    (x_next, d)                                                 none (sampling only)
edm_heun_update     EDM Alg. 2 second stage                                     none (sampling only)
add_noise           x + √(max(σ² − σ_base², 0))·s_noise·ε                       x, noise (plain torch)
cm_update           clamp(c_skip^cm·x + c_out^cm·F) + √(σ_next² − σ_min²)·ε     x, F (own backward op)
edm_loss            [N] mean of λ(σ)·(D − y)²                                   x_noisy, F, y (own backward op)
==================  ==========================================================  ===================================

σ is always a tensor (``[]`` or ``[N]``) inside the ops, so changing its value neither syncs with the host nor
recompiles. Noise is either an explicit ``noise`` tensor or the counter-based normals of :mod:`.rng` under an
int64 ``seed`` tensor that the public function draws from the torch generator (see rng.py); given the seed,
every op is a pure function, which keeps ``opcheck`` and CUDA-graph replay sound.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _common as C
from ...backend import register_kernel
from . import reference, rng

OP_SCALINGS = "denoise_scalings"
OP_COMBINE = "denoise_combine"
OP_COMBINE_BWD = "denoise_combine_backward"
OP_EULER = "edm_euler_update"
OP_HEUN = "edm_heun_update"
OP_ADD_NOISE = "add_noise"
OP_CM = "cm_update"
OP_CM_BWD = "cm_update_backward"
OP_LOSS = "edm_loss"
OP_LOSS_BWD = "edm_loss_backward"


def _sigma_grad_layout(sigma: Tensor) -> Tensor:
    return torch.empty_like(sigma, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------------
# scalings
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("burstkern::denoise_scalings", mutates_args=())
def _denoise_scalings(sigma: Tensor, sigma_data: float, sigma_min: float, mode: str
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return C.call(OP_SCALINGS, sigma.device, sigma, sigma_data, sigma_min, mode)


@_denoise_scalings.register_fake
def _(sigma, sigma_data, sigma_min, mode):
    cd = C.compute_dtype(sigma.dtype)
    return tuple(torch.empty(sigma.shape, dtype=cd, device=sigma.device) for _ in range(4))


def _scalings_setup(ctx, inputs, output):
    sigma, sd, smin, mode = inputs
    ctx.save_for_backward(sigma)
    ctx.args = (sd, smin, mode)


def _scalings_backward(ctx, g_skip, g_out, g_in, g_noise):
    (sigma,) = ctx.saved_tensors
    derivs = reference.scalings_derivatives(sigma, *ctx.args)
    grad = sum(g * dv for g, dv in zip((g_skip, g_out, g_in, g_noise), derivs))
    return grad.to(sigma.dtype), None, None, None


_denoise_scalings.register_autograd(_scalings_backward, setup_context=_scalings_setup)


@register_kernel(OP_SCALINGS, "reference")
def _reference_scalings(sigma, sd, smin, mode):
    return tuple(t.contiguous() for t in reference.scalings(sigma, sd, smin, mode))


# ----------------------------------------------------------------------------------------------
# Karras schedule (no tensor inputs, so no backend choice: every backend gets the same values)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("burstkern::karras_schedule", mutates_args=())
def _karras_schedule(num_steps: int, sigma_min: float, sigma_max: float, rho: float, device: torch.device
                     ) -> Tensor:
    return reference.karras_schedule(num_steps, sigma_min, sigma_max, rho, device)


@_karras_schedule.register_fake
def _(num_steps, sigma_min, sigma_max, rho, device):
    return torch.empty(num_steps + 1, dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------------------------
# denoise_combine
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("burstkern::denoise_combine", mutates_args=())
def _denoise_combine(x: Tensor, F: Tensor, sigma: Tensor, sigma_data: float, sigma_min: float, mode: str,
                     return_d: bool) -> Tuple[Tensor, Tensor]:
    """Returns (D, d); d is an empty placeholder unless ``return_d``."""
    return C.call(OP_COMBINE, x.device, x, F, sigma, sigma_data, sigma_min, mode, return_d)


@_denoise_combine.register_fake
def _(x, F, sigma, sigma_data, sigma_min, mode, return_d):
    return C.empty_like_format(x), (C.empty_like_format(x) if return_d else C.empty_grad(x))


@torch.library.custom_op("burstkern::denoise_combine_backward", mutates_args=())
def _denoise_combine_backward(grad_D: Tensor, grad_d: Tensor, x: Tensor, F: Tensor, sigma: Tensor,
                              sigma_data: float, sigma_min: float, mode: str, return_d: bool, need_sigma: bool
                              ) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (grad_x, grad_F, grad_sigma); grad_sigma is empty unless ``need_sigma``."""
    return C.call(OP_COMBINE_BWD, x.device, grad_D, grad_d, x, F, sigma, sigma_data, sigma_min, mode, return_d,
                  need_sigma)


def _combine_bwd_layouts(x, sigma, need_sigma):
    return (C.empty_like_format(x), C.empty_like_format(x),
            _sigma_grad_layout(sigma) if need_sigma else C.empty_grad(x))


@_denoise_combine_backward.register_fake
def _(grad_D, grad_d, x, F, sigma, sigma_data, sigma_min, mode, return_d, need_sigma):
    return _combine_bwd_layouts(x, sigma, need_sigma)


def _combine_setup(ctx, inputs, output):
    x, F, sigma, sd, smin, mode, return_d = inputs
    ctx.save_for_backward(x, F, sigma)
    ctx.args = (sd, smin, mode, return_d)


def _combine_backward(ctx, grad_D, grad_d):
    x, F, sigma = ctx.saved_tensors
    sd, smin, mode, return_d = ctx.args
    need_sigma = ctx.needs_input_grad[2]
    if grad_d is None or not return_d:
        grad_d = C.empty_grad(x)
    gx, gF, gs = _denoise_combine_backward(grad_D, grad_d, x, F, sigma, sd, smin, mode, return_d, need_sigma)
    return gx, gF, (gs if need_sigma else None), None, None, None, None


_denoise_combine.register_autograd(_combine_backward, setup_context=_combine_setup)


@register_kernel(OP_COMBINE, "reference")
def _reference_combine(x, F, sigma, sd, smin, mode, return_d):
    D, d = reference.denoise_combine(x, F, sigma, sd, smin, mode, return_d)
    fmt = C.memory_format_of(x)
    return C.to_format(D, fmt), (C.to_format(d, fmt) if return_d else d)


# Reference backwards are closed-form torch (reference.py), not torch.func.vjp: torch.func inside an op body
# cannot run under opcheck's schema check, and the closed forms are pinned to the forwards by gradcheck.
@register_kernel(OP_COMBINE_BWD, "reference")
def _reference_combine_backward(grad_D, grad_d, x, F, sigma, sd, smin, mode, return_d, need_sigma):
    gd = grad_d if return_d and grad_d.numel() == x.numel() else None
    gx, gF, gs = reference.denoise_combine_backward(grad_D, gd, x, F, sigma, sd, smin, mode, need_sigma)
    layouts = _combine_bwd_layouts(x, sigma, need_sigma)
    gs = gs if need_sigma else C.empty_grad(x)
    return tuple(C.match_layout(g, lay) for g, lay in zip((gx, gF, gs), layouts))


# ----------------------------------------------------------------------------------------------
# Euler / Heun steps (sampling only: no autograd)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("burstkern::edm_euler_update", mutates_args=())
def _edm_euler_update(x: Tensor, F: Tensor, sigma: Tensor, sigma_next: Tensor, sigma_data: float
                      ) -> Tuple[Tensor, Tensor]:
    return C.call(OP_EULER, x.device, x, F, sigma, sigma_next, sigma_data)


@_edm_euler_update.register_fake
def _(x, F, sigma, sigma_next, sigma_data):
    return C.empty_like_format(x), C.empty_like_format(x)


@register_kernel(OP_EULER, "reference")
def _reference_euler(x, F, sigma, sigma_next, sd):
    fmt = C.memory_format_of(x)
    return tuple(C.to_format(t, fmt) for t in reference.edm_euler_update(x, F, sigma, sigma_next, sd))


@torch.library.custom_op("burstkern::edm_heun_update", mutates_args=())
def _edm_heun_update(x_hat: Tensor, d: Tensor, x_next: Tensor, F_next: Tensor, sigma_hat: Tensor,
                     sigma_next: Tensor, sigma_data: float) -> Tensor:
    return C.call(OP_HEUN, x_hat.device, x_hat, d, x_next, F_next, sigma_hat, sigma_next, sigma_data)


@_edm_heun_update.register_fake
def _(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sigma_data):
    return C.empty_like_format(x_hat)


@register_kernel(OP_HEUN, "reference")
def _reference_heun(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd):
    out = reference.edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd)
    return C.to_format(out, C.memory_format_of(x_hat))


# ----------------------------------------------------------------------------------------------
# add_noise
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("burstkern::add_noise", mutates_args=())
def _add_noise(x: Tensor, sigma: Tensor, sigma_base: Optional[Tensor], s_noise: float, noise: Optional[Tensor],
               seed: Optional[Tensor]) -> Tensor:
    return C.call(OP_ADD_NOISE, x.device, x, sigma, sigma_base, s_noise, noise, seed)


@_add_noise.register_fake
def _(x, sigma, sigma_base, s_noise, noise, seed):
    return C.empty_like_format(x)


def _add_noise_setup(ctx, inputs, output):
    x, sigma, sigma_base, s_noise, noise, seed = inputs
    ctx.save_for_backward(x, sigma, sigma_base)
    ctx.s_noise = s_noise


def _add_noise_backward(ctx, grad):
    # d/dx = 1 and d/dnoise = the per-sample scale: a plain torch composition, no kernel needed
    x, sigma, sigma_base = ctx.saved_tensors
    g_noise = None
    if ctx.needs_input_grad[4]:
        cd = C.compute_dtype(x.dtype)
        g_noise = (grad.to(cd) * reference.noise_scale(sigma, sigma_base, ctx.s_noise, x, cd)).to(x.dtype)
    return grad, None, None, None, g_noise, None


_add_noise.register_autograd(_add_noise_backward, setup_context=_add_noise_setup)


@register_kernel(OP_ADD_NOISE, "reference")
def _reference_add_noise(x, sigma, sigma_base, s_noise, noise, seed):
    out = reference.add_noise(x, sigma, sigma_base, s_noise, noise, seed)
    return C.to_format(out, C.memory_format_of(x))


# ----------------------------------------------------------------------------------------------
# cm_update
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("burstkern::cm_update", mutates_args=())
def _cm_update(x: Tensor, F: Tensor, sigma: Tensor, sigma_min: float, sigma_data: float,
               sigma_next: Optional[Tensor], clamp: Optional[float], noise: Optional[Tensor],
               seed: Optional[Tensor]) -> Tensor:
    return C.call(OP_CM, x.device, x, F, sigma, sigma_min, sigma_data, sigma_next, clamp, noise, seed)


@_cm_update.register_fake
def _(x, F, sigma, sigma_min, sigma_data, sigma_next, clamp, noise, seed):
    return C.empty_like_format(x)


@torch.library.custom_op("burstkern::cm_update_backward", mutates_args=())
def _cm_update_backward(grad: Tensor, x: Tensor, F: Tensor, sigma: Tensor, sigma_min: float, sigma_data: float,
                        clamp: Optional[float]) -> Tuple[Tensor, Tensor]:
    """Returns (grad_x, grad_F); the re-noise term does not depend on x or F."""
    return C.call(OP_CM_BWD, x.device, grad, x, F, sigma, sigma_min, sigma_data, clamp)


@_cm_update_backward.register_fake
def _(grad, x, F, sigma, sigma_min, sigma_data, clamp):
    return C.empty_like_format(x), C.empty_like_format(x)


def _cm_setup(ctx, inputs, output):
    x, F, sigma, smin, sd, sigma_next, clamp, noise, seed = inputs
    ctx.save_for_backward(x, F, sigma)
    ctx.args = (smin, sd, clamp)


def _cm_backward(ctx, grad):
    x, F, sigma = ctx.saved_tensors
    gx, gF = _cm_update_backward(grad, x, F, sigma, *ctx.args)
    return gx, gF, None, None, None, None, None, None, None


_cm_update.register_autograd(_cm_backward, setup_context=_cm_setup)


@register_kernel(OP_CM, "reference")
def _reference_cm(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed):
    out = reference.cm_update(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed)
    return C.to_format(out, C.memory_format_of(x))


@register_kernel(OP_CM_BWD, "reference")
def _reference_cm_backward(grad, x, F, sigma, smin, sd, clamp):
    gx, gF = reference.cm_update_backward(grad, x, F, sigma, smin, sd, clamp)
    fmt = C.memory_format_of(x)
    return C.to_format(gx, fmt), C.to_format(gF, fmt)


# ----------------------------------------------------------------------------------------------
# edm_loss
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("burstkern::edm_loss", mutates_args=())
def _edm_loss(x_noisy: Tensor, F: Tensor, y: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    return C.call(OP_LOSS, x_noisy.device, x_noisy, F, y, sigma, sigma_data)


@_edm_loss.register_fake
def _(x_noisy, F, y, sigma, sigma_data):
    return x_noisy.new_empty((x_noisy.shape[0],))


@torch.library.custom_op("burstkern::edm_loss_backward", mutates_args=())
def _edm_loss_backward(grad: Tensor, x_noisy: Tensor, F: Tensor, y: Tensor, sigma: Tensor, sigma_data: float
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (grad_x_noisy, grad_F, grad_y)."""
    return C.call(OP_LOSS_BWD, x_noisy.device, grad, x_noisy, F, y, sigma, sigma_data)


@_edm_loss_backward.register_fake
def _(grad, x_noisy, F, y, sigma, sigma_data):
    return C.empty_like_format(x_noisy), C.empty_like_format(x_noisy), C.empty_like_format(x_noisy)


def _loss_setup(ctx, inputs, output):
    x, F, y, sigma, sd = inputs
    ctx.save_for_backward(x, F, y, sigma)
    ctx.sd = sd


def _loss_backward(ctx, grad):
    x, F, y, sigma = ctx.saved_tensors
    gx, gF, gy = _edm_loss_backward(grad, x, F, y, sigma, ctx.sd)
    return gx, gF, gy, None, None


_edm_loss.register_autograd(_loss_backward, setup_context=_loss_setup)


@register_kernel(OP_LOSS, "reference")
def _reference_loss(x, F, y, sigma, sd):
    return reference.edm_loss(x, F, y, sigma, sd).contiguous()


@register_kernel(OP_LOSS_BWD, "reference")
def _reference_loss_backward(grad, x, F, y, sigma, sd):
    fmt = C.memory_format_of(x)
    return tuple(C.to_format(g, fmt) for g in reference.edm_loss_backward(grad, x, F, y, sigma, sd))


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _check_x(name: str, x) -> Tensor:
    C.check_tensor(name, x)
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension ([N, ...], at least 1-D), got {C.describe(x)}")
    return x


def _check_like(name: str, t, ref_name: str, ref: Tensor) -> Tensor:
    C.check_tensor(name, t)
    C.check_same(name, t, ref_name, ref)
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {C.describe(t)}")
    return t


def _check_sigma(name: str, sigma, x: Tensor) -> Tensor:
    """A tensor ``[]`` or ``[N]`` on x's device; a Python number becomes a 0-d tensor in x's compute dtype."""
    if isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        return torch.tensor(float(sigma), dtype=C.compute_dtype(x.dtype), device=x.device)
    if not isinstance(sigma, Tensor):
        raise TypeError(f"{name} must be a tensor of shape [] or [N] (or a Python float), got "
                        f"{type(sigma).__name__}")
    if sigma.dtype not in C.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got {C.describe(sigma)}")
    if sigma.device != x.device:
        raise RuntimeError(f"{name} is on {sigma.device} but x is on {x.device}; expected {name} on x's device "
                           f"({name}: {C.describe(sigma)})")
    if not (sigma.dim() == 0 or (sigma.dim() == 1 and sigma.shape[0] == x.shape[0])):
        raise ValueError(f"{name} must have shape [] or [N] = [{x.shape[0]}] (one σ per sample of x "
                         f"{tuple(x.shape)}), got {C.describe(sigma)}")
    return sigma


def _check_float(name: str, v, *, positive: bool = False, nonneg: bool = False) -> float:
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"{name} must be a Python float, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonneg and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _check_mode(mode) -> str:
    if mode not in reference.MODES:
        raise ValueError(f"mode must be 'edm' or 'cm', got {mode!r}")
    return mode


def _noise_source(x: Tensor, noise, generator) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(noise, seed): the explicit noise checked, or a seed drawn from ``generator`` on x's device."""
    if noise is not None:
        if generator is not None:
            raise ValueError("pass either noise= (explicit ε) or generator= (in-kernel noise), not both")
        return _check_like("noise", noise, "x", x), None
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != x.device.type:
            raise RuntimeError(f"generator is on {generator.device} but x is on {x.device}; expected a generator "
                               f"of x's device")
    return None, rng.draw_seed(x.device, generator)


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------
def edm_scalings(sigma: Tensor, sigma_data: float = 0.5) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning ``(c_skip, c_out, c_in, c_noise)`` of ``sigma`` (any shape), differentiable in σ.

    ``c_skip = sd²/(σ²+sd²)``, ``c_out = σ·sd/√(σ²+sd²)``, ``c_in = 1/√(σ²+sd²)``, ``c_noise = ln(σ)/4``.
    Outputs are shaped like ``sigma``, fp32 (fp64 for an fp64 sigma).

    Example::

        >>> c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor([0.03, 80.0]))
    """
    sigma = _check_scalings_sigma(sigma)
    return _denoise_scalings(sigma, _check_float("sigma_data", sigma_data, positive=True), 0.0, "edm")


def cm_scalings(sigma: Tensor, sigma_min: float = 0.002, sigma_data: float = 0.5
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Consistency-model ``(c_skip, c_out, c_in, c_noise)``: ``c_skip = sd²/((σ−σ_min)²+sd²)``,
    ``c_out = (σ−σ_min)·sd/√(σ²+sd²)``, c_in and c_noise as EDM (so f(x, σ_min) = x). Differentiable in σ.

    Example::

        >>> c_skip, c_out, c_in, c_noise = cm_scalings(torch.tensor(0.03))
    """
    sigma = _check_scalings_sigma(sigma)
    return _denoise_scalings(sigma, _check_float("sigma_data", sigma_data, positive=True),
                             _check_float("sigma_min", sigma_min, nonneg=True), "cm")


def _check_scalings_sigma(sigma) -> Tensor:
    if isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        return torch.tensor(float(sigma), dtype=torch.float32)
    C.check_tensor("sigma", sigma)
    return sigma


def karras_schedule(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                    device=None) -> Tensor:
    """Karras et al. noise levels: ``[num_steps + 1]`` float32, decreasing from σ_max to σ_min, then 0.

    ``σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ`` (computed in fp64), ``σ_N = 0``.

    Example::

        >>> karras_schedule(40, 0.002, 80.0).shape
        torch.Size([41])
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    sigma_min = _check_float("sigma_min", sigma_min, positive=True)
    sigma_max = _check_float("sigma_max", sigma_max, positive=True)
    rho = _check_float("rho", rho, positive=True)
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be <= sigma_max ({sigma_max})")
    device = torch.device("cpu") if device is None else torch.device(device)
    return _karras_schedule(num_steps, sigma_min, sigma_max, rho, device)


def denoise_combine(x: Tensor, F: Tensor, sigma, sigma_data: float = 0.5, mode: str = "edm",
                    sigma_min: float = 0.002, return_d: bool = False):
    """The preconditioned denoiser output ``D = c_skip·x + c_out·F`` (EDM or consistency scalings).

    Args:
        x: noisy input ``[N, ...]`` (images ``[N, C, H, W]``), fp32/fp16/bf16 (fp64 on the reference backend).
        F: raw network output, same shape and dtype as ``x``.
        sigma: ``[]`` or ``[N]`` tensor on x's device (or a Python float).
        mode: ``"edm"`` or ``"cm"`` (consistency scalings with ``sigma_min``).
        return_d: also return the ODE derivative ``d = (x − D)/σ``.

    Returns:
        ``D`` (and ``d``), shaped, typed and laid out as ``x``. Differentiable in x, F and sigma.

    Example::

        >>> x, F = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
        >>> D, d = denoise_combine(x, F, torch.tensor([0.5, 2.0]), return_d=True)
    """
    # autocast: these updates are precision-critical and memory-bound, so they run in fp32 (like torch's fp32 list)
    x, F = C.autocast_inputs(x, F, dtype=torch.float32)
    _check_x("x", x)
    _check_like("F", F, "x", x)
    sigma = _check_sigma("sigma", sigma, x)
    mode = _check_mode(mode)
    if not isinstance(return_d, bool):
        raise TypeError(f"return_d must be a bool, got {type(return_d).__name__}")
    D, d = _denoise_combine(x, F, sigma, _check_float("sigma_data", sigma_data, positive=True),
                            _check_float("sigma_min", sigma_min, nonneg=True), mode, return_d)
    return (D, d) if return_d else D


def edm_euler_update(x: Tensor, F: Tensor, sigma, sigma_next, sigma_data: float = 0.5) -> Tuple[Tensor, Tensor]:
    """One Euler step of the EDM ODE from the raw network output ``F`` at ``(x, σ)``.

    ``D = c_skip·x + c_out·F``, ``d = (x − D)/σ``, ``x_next = x + (σ_next − σ)·d``.

    Args:
        x, F: ``[N, ...]``, same shape and dtype. sigma, sigma_next: ``[]`` or ``[N]`` tensors (σ > 0).

    Returns:
        ``(x_next, d)``, each like ``x``. Not differentiable (sampling op).

    Example::

        >>> x_next, d = edm_euler_update(x, F, torch.tensor(80.0), torch.tensor(60.0))
    """
    # autocast: these updates are precision-critical and memory-bound, so they run in fp32 (like torch's fp32 list)
    x, F = C.autocast_inputs(x, F, dtype=torch.float32)
    _check_x("x", x)
    _check_like("F", F, "x", x)
    sigma = _check_sigma("sigma", sigma, x)
    sigma_next = _check_sigma("sigma_next", sigma_next, x)
    return _edm_euler_update(x, F, sigma, sigma_next, _check_float("sigma_data", sigma_data, positive=True))


def edm_heun_update(x_hat: Tensor, d: Tensor, x_next: Tensor, F_next: Tensor, sigma_hat, sigma_next,
                    sigma_data: float = 0.5) -> Tensor:
    """The second (Heun) stage of EDM Algorithm 2.

    ``x' = x_hat + (σ_next − σ_hat)·(d + (x_next − D(x_next; σ_next))/σ_next)/2`` with
    ``D(x_next; σ_next) = c_skip·x_next + c_out·F_next``. Where ``σ_next == 0`` the result is ``x_next``.

    Args:
        x_hat, d, x_next, F_next: ``[N, ...]``, same shape and dtype (d and x_next from
            :func:`edm_euler_update`, F_next the raw network output at ``(x_next, σ_next)``).
        sigma_hat, sigma_next: ``[]`` or ``[N]`` tensors.

    Returns:
        ``x'`` like ``x_hat``. Not differentiable (sampling op).

    Example::

        >>> x2 = edm_heun_update(x_hat, d, x_next, F_next, torch.tensor(80.0), torch.tensor(60.0))
    """
    # autocast: these updates are precision-critical and memory-bound, so they run in fp32 (like torch's fp32 list)
    x_hat, d, x_next, F_next = C.autocast_inputs(x_hat, d, x_next, F_next, dtype=torch.float32)
    _check_x("x_hat", x_hat)
    _check_like("d", d, "x_hat", x_hat)
    _check_like("x_next", x_next, "x_hat", x_hat)
    _check_like("F_next", F_next, "x_hat", x_hat)
    sigma_hat = _check_sigma("sigma_hat", sigma_hat, x_hat)
    sigma_next = _check_sigma("sigma_next", sigma_next, x_hat)
    return _edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next,
                            _check_float("sigma_data", sigma_data, positive=True))


def add_noise(x: Tensor, sigma, sigma_base=None, s_noise: float = 1.0, noise: Optional[Tensor] = None,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """``x + √(max(σ² − σ_base², 0))·s_noise·ε``: early-step start (σ_base None = 0), EDM churn (σ̂ over σ),
    consistency re-noise (σ_next over σ_min).

    Args:
        x: ``[N, ...]`` fp32/fp16/bf16 (fp64 on the reference backend).
        sigma, sigma_base: ``[]`` or ``[N]`` tensors (or floats); sigma_base may be None.
        noise: explicit ε like ``x``; else ε is drawn in-kernel from the counter-based RNG (rng.py) with a
            seed taken from ``generator`` (default: the default generator of x's device).

    Returns:
        like ``x``. Differentiable in x (and in an explicit noise).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> x_tau = add_noise(x_init, torch.tensor(0.03), generator=g)
    """
    # autocast: these updates are precision-critical and memory-bound, so they run in fp32 (like torch's fp32 list)
    x, noise = C.autocast_inputs(x, noise, dtype=torch.float32)
    _check_x("x", x)
    sigma = _check_sigma("sigma", sigma, x)
    if sigma_base is not None:
        sigma_base = _check_sigma("sigma_base", sigma_base, x)
    s_noise = _check_float("s_noise", s_noise)
    noise, seed = _noise_source(x, noise, generator)
    return _add_noise(x, sigma, sigma_base, s_noise, noise, seed)


def cm_update(x: Tensor, F: Tensor, sigma, sigma_min: float = 0.002, sigma_data: float = 0.5, sigma_next=None,
              clamp: Optional[float] = None, noise: Optional[Tensor] = None,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """Consistency-model output, optionally clamped and re-noised (one step of multistep consistency sampling).

    ``x0 = c_skip^cm·x + c_out^cm·F``; ``x0 = clamp(x0, −clamp, clamp)`` when ``clamp`` is given;
    ``x0 + √(σ_next² − σ_min²)·ε`` when ``sigma_next`` is given (ε explicit or drawn as in :func:`add_noise`).

    Args:
        x, F: ``[N, ...]``, same shape and dtype. sigma, sigma_next: ``[]`` or ``[N]`` tensors (or floats).

    Returns:
        like ``x``. Differentiable in x and F.

    Example::

        >>> x0 = cm_update(x, F, torch.tensor(0.03), clamp=1.0)
    """
    # autocast: these updates are precision-critical and memory-bound, so they run in fp32 (like torch's fp32 list)
    x, F, noise = C.autocast_inputs(x, F, noise, dtype=torch.float32)
    _check_x("x", x)
    _check_like("F", F, "x", x)
    sigma = _check_sigma("sigma", sigma, x)
    sigma_min = _check_float("sigma_min", sigma_min, nonneg=True)
    sigma_data = _check_float("sigma_data", sigma_data, positive=True)
    if clamp is not None:
        clamp = _check_float("clamp", clamp, positive=True)
    seed = None
    if sigma_next is not None:
        sigma_next = _check_sigma("sigma_next", sigma_next, x)
        noise, seed = _noise_source(x, noise, generator)
    elif noise is not None or generator is not None:
        raise ValueError("noise= / generator= are only used when sigma_next is given (re-noising)")
    return _cm_update(x, F, sigma, sigma_min, sigma_data, sigma_next, clamp, noise, seed)


def edm_loss(x_noisy: Tensor, F: Tensor, y: Tensor, sigma, sigma_data: float = 0.5) -> Tensor:
    """Per-sample EDM training loss ``[N]``: mean over all but dim 0 of ``λ(σ)·(D − y)²``.

    ``D = c_skip·x_noisy + c_out·F`` (EDM scalings), ``λ(σ) = (σ² + sd²)/(σ·sd)²``.

    Args:
        x_noisy: ``y + σ·n``, ``[N, ...]``. F: raw network output like x_noisy. y: clean target like x_noisy.
        sigma: ``[]`` or ``[N]`` tensor (or float).

    Returns:
        ``[N]`` in x_noisy's dtype. Differentiable in x_noisy, F and y.

    Example::

        >>> loss = edm_loss(y + sigma.view(-1, 1, 1, 1) * n, net_out, y, sigma).mean()
    """
    # autocast: these updates are precision-critical and memory-bound, so they run in fp32 (like torch's fp32 list)
    x_noisy, F, y = C.autocast_inputs(x_noisy, F, y, dtype=torch.float32)
    _check_x("x_noisy", x_noisy)
    _check_like("F", F, "x_noisy", x_noisy)
    _check_like("y", y, "x_noisy", x_noisy)
    sigma = _check_sigma("sigma", sigma, x_noisy)
    return _edm_loss(x_noisy, F, y, sigma, _check_float("sigma_data", sigma_data, positive=True))
