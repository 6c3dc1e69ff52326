"""EDM / consistency denoise ops: public functions, ``torch.library`` registration, fake impls, autograd.

Ops (namespace ``burstkern``), each declared once with ``define_op``; the updates compute in fp32 under autocast
(precision-critical and memory-bound, like torch's fp32 autocast list):

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
import os
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _common as C
from .._define import define_op
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
def _scalings_signature(sigma: Tensor, sigma_data: float, sigma_min: float, mode: str
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise), shaped like sigma, fp32 (fp64 for fp64 sigma)."""


def _scalings_fake(sigma, sigma_data, sigma_min, mode):
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


SCALINGS = define_op(OP_SCALINGS, _scalings_signature, fake=_scalings_fake,
                     reference=lambda sigma, sd, smin, mode: tuple(
                         t.contiguous() for t in reference.scalings(sigma, sd, smin, mode)),
                     setup_context=_scalings_setup, backward=_scalings_backward)


# ----------------------------------------------------------------------------------------------
# Karras schedule (no tensor inputs, so no backend choice: every backend gets the same values)
# ----------------------------------------------------------------------------------------------
def _karras_signature(num_steps: int, sigma_min: float, sigma_max: float, rho: float, device: torch.device
                      ) -> Tensor:
    """[num_steps + 1] float32."""


KARRAS = define_op("karras_schedule", _karras_signature, reference=reference.karras_schedule, dispatch=False,
                   fake=lambda num_steps, smin, smax, rho, device: torch.empty(num_steps + 1, dtype=torch.float32,
                                                                              device=device))


# ----------------------------------------------------------------------------------------------
# denoise_combine
# ----------------------------------------------------------------------------------------------
def _combine_bwd_layouts(x, sigma, need_sigma):
    return (C.empty_like_format(x), C.empty_like_format(x),
            _sigma_grad_layout(sigma) if need_sigma else C.empty_grad(x))


def _combine_backward_signature(grad_D: Tensor, grad_d: Tensor, x: Tensor, F: Tensor, sigma: Tensor,
                                sigma_data: float, sigma_min: float, mode: str, return_d: bool, need_sigma: bool
                                ) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_F, grad_sigma); grad_sigma is empty unless ``need_sigma``."""


# Reference backwards are closed-form torch (reference.py), not torch.func.vjp: torch.func inside an op body
# cannot run under opcheck's schema check, and the closed forms are pinned to the forwards by gradcheck.
def _reference_combine_backward(grad_D, grad_d, x, F, sigma, sd, smin, mode, return_d, need_sigma):
    gd = grad_d if return_d and grad_d.numel() == x.numel() else None
    gx, gF, gs = reference.denoise_combine_backward(grad_D, gd, x, F, sigma, sd, smin, mode, need_sigma)
    layouts = _combine_bwd_layouts(x, sigma, need_sigma)
    gs = gs if need_sigma else C.empty_grad(x)
    return tuple(C.match_layout(g, lay) for g, lay in zip((gx, gF, gs), layouts))


COMBINE_BACKWARD = define_op(OP_COMBINE_BWD, _combine_backward_signature, reference=_reference_combine_backward,
                             fake=lambda gD, gd, x, F, sigma, sd, smin, mode, return_d, need_sigma:
                             _combine_bwd_layouts(x, sigma, need_sigma))


def _combine_signature(x: Tensor, F: Tensor, sigma: Tensor, sigma_data: float, sigma_min: float, mode: str,
                       return_d: bool) -> Tuple[Tensor, Tensor]:
    """(D, d); d is an empty placeholder unless ``return_d``."""


def _reference_combine(x, F, sigma, sd, smin, mode, return_d):
    D, d = reference.denoise_combine(x, F, sigma, sd, smin, mode, return_d)
    fmt = C.memory_format_of(x)
    return C.to_format(D, fmt), (C.to_format(d, fmt) if return_d else d)


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
    gx, gF, gs = COMBINE_BACKWARD(grad_D, grad_d, x, F, sigma, sd, smin, mode, return_d, need_sigma)
    return gx, gF, (gs if need_sigma else None), None, None, None, None


COMBINE = define_op(OP_COMBINE, _combine_signature, reference=_reference_combine, autocast="fp32",
                    fake=lambda x, F, sigma, sd, smin, mode, return_d: (
                        C.empty_like_format(x), C.empty_like_format(x) if return_d else C.empty_grad(x)),
                    setup_context=_combine_setup, backward=_combine_backward)


# ----------------------------------------------------------------------------------------------
# Euler / Heun steps (sampling only: no autograd)
# ----------------------------------------------------------------------------------------------
def _euler_signature(x: Tensor, F: Tensor, sigma: Tensor, sigma_next: Tensor, sigma_data: float
                     ) -> Tuple[Tensor, Tensor]:
    """(x_next, d)."""


def _reference_euler(x, F, sigma, sigma_next, sd):
    fmt = C.memory_format_of(x)
    return tuple(C.to_format(t, fmt) for t in reference.edm_euler_update(x, F, sigma, sigma_next, sd))


EULER = define_op(OP_EULER, _euler_signature, reference=_reference_euler, autocast="fp32",
                  fake=lambda x, F, sigma, sigma_next, sd: (C.empty_like_format(x), C.empty_like_format(x)))


def _heun_signature(x_hat: Tensor, d: Tensor, x_next: Tensor, F_next: Tensor, sigma_hat: Tensor,
                    sigma_next: Tensor, sigma_data: float) -> Tensor:
    """EDM Algorithm 2's second stage, laid out as x_hat."""


def _reference_heun(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd):
    out = reference.edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd)
    return C.to_format(out, C.memory_format_of(x_hat))


HEUN = define_op(OP_HEUN, _heun_signature, reference=_reference_heun, autocast="fp32",
                 fake=lambda x_hat, *rest: C.empty_like_format(x_hat))


# ----------------------------------------------------------------------------------------------
# add_noise
# ----------------------------------------------------------------------------------------------
def _add_noise_signature(x: Tensor, sigma: Tensor, sigma_base: Optional[Tensor], s_noise: float,
                         noise: Optional[Tensor], seed: Optional[Tensor]) -> Tensor:
    """x + √(max(σ² − σ_base², 0))·s_noise·ε, laid out as x."""


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


ADD_NOISE = define_op(OP_ADD_NOISE, _add_noise_signature, autocast="fp32",
                      reference=lambda x, sigma, sigma_base, s_noise, noise, seed: C.to_format(
                          reference.add_noise(x, sigma, sigma_base, s_noise, noise, seed), C.memory_format_of(x)),
                      fake=lambda x, *rest: C.empty_like_format(x),
                      setup_context=_add_noise_setup, backward=_add_noise_backward)


# ----------------------------------------------------------------------------------------------
# cm_update
# ----------------------------------------------------------------------------------------------
def _cm_backward_signature(grad: Tensor, x: Tensor, F: Tensor, sigma: Tensor, sigma_min: float, sigma_data: float,
                           clamp: Optional[float]) -> Tuple[Tensor, Tensor]:
    """(grad_x, grad_F); the re-noise term does not depend on x or F."""


def _reference_cm_backward(grad, x, F, sigma, smin, sd, clamp):
    gx, gF = reference.cm_update_backward(grad, x, F, sigma, smin, sd, clamp)
    fmt = C.memory_format_of(x)
    return C.to_format(gx, fmt), C.to_format(gF, fmt)


CM_BACKWARD = define_op(OP_CM_BWD, _cm_backward_signature, reference=_reference_cm_backward,
                        fake=lambda grad, x, *rest: (C.empty_like_format(x), C.empty_like_format(x)))


def _cm_signature(x: Tensor, F: Tensor, sigma: Tensor, sigma_min: float, sigma_data: float,
                  sigma_next: Optional[Tensor], clamp: Optional[float], noise: Optional[Tensor],
                  seed: Optional[Tensor]) -> Tensor:
    """clamp(c_skip^cm·x + c_out^cm·F) + √(σ_next² − σ_min²)·ε, laid out as x."""


def _cm_setup(ctx, inputs, output):
    x, F, sigma, smin, sd, sigma_next, clamp, noise, seed = inputs
    ctx.save_for_backward(x, F, sigma)
    ctx.args = (smin, sd, clamp)


def _cm_backward(ctx, grad):
    x, F, sigma = ctx.saved_tensors
    gx, gF = CM_BACKWARD(grad, x, F, sigma, *ctx.args)
    return gx, gF, None, None, None, None, None, None, None


CM = define_op(OP_CM, _cm_signature, autocast="fp32",
               reference=lambda x, F, sigma, smin, sd, sigma_next, clamp, noise, seed: C.to_format(
                   reference.cm_update(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed), C.memory_format_of(x)),
               fake=lambda x, *rest: C.empty_like_format(x), setup_context=_cm_setup, backward=_cm_backward)


# ----------------------------------------------------------------------------------------------
# edm_loss
# ----------------------------------------------------------------------------------------------
def _loss_backward_signature(grad: Tensor, x_noisy: Tensor, F: Tensor, y: Tensor, sigma: Tensor, sigma_data: float
                             ) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x_noisy, grad_F, grad_y)."""


def _reference_loss_backward(grad, x, F, y, sigma, sd):
    fmt = C.memory_format_of(x)
    return tuple(C.to_format(g, fmt) for g in reference.edm_loss_backward(grad, x, F, y, sigma, sd))


LOSS_BACKWARD = define_op(OP_LOSS_BWD, _loss_backward_signature, reference=_reference_loss_backward,
                          fake=lambda grad, x, *rest: tuple(C.empty_like_format(x) for _ in range(3)))


def _loss_signature(x_noisy: Tensor, F: Tensor, y: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """[N]: mean over each sample of λ(σ)·(D − y)²."""


def _loss_setup(ctx, inputs, output):
    x, F, y, sigma, sd = inputs
    ctx.save_for_backward(x, F, y, sigma)
    ctx.sd = sd


def _loss_backward(ctx, grad):
    x, F, y, sigma = ctx.saved_tensors
    gx, gF, gy = LOSS_BACKWARD(grad, x, F, y, sigma, ctx.sd)
    return gx, gF, gy, None, None


LOSS = define_op(OP_LOSS, _loss_signature, autocast="fp32",
                 reference=lambda x, F, y, sigma, sd: reference.edm_loss(x, F, y, sigma, sd).contiguous(),
                 fake=lambda x_noisy, *rest: x_noisy.new_empty((x_noisy.shape[0],)),
                 setup_context=_loss_setup, backward=_loss_backward)


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _check_x(name: str, x) -> Tensor:
    C.check_tensor(name, x)
    if x.dim() < 1:
        raise C.ArgumentError(f"{name} must have a batch dimension ([N, ...], at least 1-D), got {C.describe(x)}")
    return x


def _check_like(name: str, t, ref_name: str, ref: Tensor) -> Tensor:
    C.check_tensor(name, t)
    C.check_same(name, t, ref_name, ref)
    if t.shape != ref.shape:
        raise C.ArgumentError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {C.describe(t)}")
    return t


# σ tensors stay on the device and are not range-checked by default (a check is a host sync in every sampler step):
# σ ≤ 0 or non-finite gives what the formulas give (inf / NaN, which propagates; the Heun step's σ_next = 0 is
# valid). BURSTKERN_CHECK_SIGMA=1 checks every σ tensor (syncs) and raises a clear error instead; Python-float σ are
# always checked.
CHECK_SIGMA = os.environ.get("BURSTKERN_CHECK_SIGMA", "0") == "1"


def _check_sigma(name: str, sigma, x: Tensor, minimum: float = 0.0, inclusive: bool = False) -> Tensor:
    """A tensor ``[]`` or ``[N]`` on x's device; a Python number becomes a 0-d tensor in x's compute dtype. σ must
    be finite and > ``minimum`` (>= with ``inclusive``): always for a Python number, for a tensor under
    BURSTKERN_CHECK_SIGMA=1."""
    if isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        _check_range(name, torch.tensor(float(sigma), dtype=torch.float64), minimum, inclusive)
        return torch.tensor(float(sigma), dtype=C.compute_dtype(x.dtype), device=x.device)
    if not isinstance(sigma, Tensor):
        raise C.ArgumentTypeError(f"{name} must be a tensor of shape [] or [N] (or a Python float), got "
                        f"{type(sigma).__name__}")
    if sigma.dtype not in C.FLOAT_DTYPES:
        raise C.ArgumentTypeError(f"{name} must be a floating-point tensor, got {C.describe(sigma)}")
    if sigma.device != x.device:
        raise C.ArgumentError(f"{name} is on {sigma.device} but x is on {x.device}; expected {name} on x's device "
                           f"({name}: {C.describe(sigma)})")
    if not (sigma.dim() == 0 or (sigma.dim() == 1 and sigma.shape[0] == x.shape[0])):
        raise C.ArgumentError(f"{name} must have shape [] or [N] = [{x.shape[0]}] (one σ per sample of x "
                         f"{tuple(x.shape)}), got {C.describe(sigma)}")
    if CHECK_SIGMA and sigma.device.type != "meta":
        _check_range(name, sigma, minimum, inclusive)
    return sigma


def _check_range(name: str, sigma: Tensor, minimum: float, inclusive: bool) -> None:
    ok = torch.isfinite(sigma) & ((sigma >= minimum) if inclusive else (sigma > minimum))
    if not bool(ok.all()):
        bad = sigma[~ok].flatten()[:4].tolist()
        raise C.ArgumentError(f"{name} must be finite and {'>=' if inclusive else '>'} {minimum}, got {bad}")


def _check_float(name: str, v, *, positive: bool = False, nonneg: bool = False) -> float:
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise C.ArgumentTypeError(f"{name} must be a Python float, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise C.ArgumentError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise C.ArgumentError(f"{name} must be > 0, got {v}")
    if nonneg and v < 0:
        raise C.ArgumentError(f"{name} must be >= 0, got {v}")
    return v


def _check_mode(mode) -> str:
    if mode not in reference.MODES:
        raise C.ArgumentError(f"mode must be 'edm' or 'cm', got {mode!r}")
    return mode


def _noise_source(x: Tensor, noise, generator) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(noise, seed): the explicit noise checked, or a seed drawn from ``generator`` on x's device."""
    if noise is not None:
        if generator is not None:
            raise C.ArgumentError("pass either noise= (explicit ε) or generator= (in-kernel noise), not both")
        return _check_like("noise", noise, "x", x), None
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise C.ArgumentTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != x.device.type:
            raise C.ArgumentError(f"generator is on {generator.device} but x is on {x.device}; expected a generator "
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
    return SCALINGS(sigma, _check_float("sigma_data", sigma_data, positive=True), 0.0, "edm")


def cm_scalings(sigma: Tensor, sigma_min: float = 0.002, sigma_data: float = 0.5
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Consistency-model ``(c_skip, c_out, c_in, c_noise)``: ``c_skip = sd²/((σ−σ_min)²+sd²)``,
    ``c_out = (σ−σ_min)·sd/√(σ²+sd²)``, c_in and c_noise as EDM (so f(x, σ_min) = x). Differentiable in σ.

    Example::

        >>> c_skip, c_out, c_in, c_noise = cm_scalings(torch.tensor(0.03))
    """
    sigma = _check_scalings_sigma(sigma)
    return SCALINGS(sigma, _check_float("sigma_data", sigma_data, positive=True),
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
        raise C.ArgumentError(f"num_steps must be an int >= 1, got {num_steps!r}")
    sigma_min = _check_float("sigma_min", sigma_min, positive=True)
    sigma_max = _check_float("sigma_max", sigma_max, positive=True)
    rho = _check_float("rho", rho, positive=True)
    if sigma_min > sigma_max:
        raise C.ArgumentError(f"sigma_min ({sigma_min}) must be <= sigma_max ({sigma_max})")
    device = torch.device("cpu") if device is None else torch.device(device)
    return KARRAS(num_steps, sigma_min, sigma_max, rho, device)


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
    x, F = COMBINE.cast(x, F)
    _check_x("x", x)
    _check_like("F", F, "x", x)
    sigma = _check_sigma("sigma", sigma, x)
    mode = _check_mode(mode)
    if not isinstance(return_d, bool):
        raise C.ArgumentTypeError(f"return_d must be a bool, got {type(return_d).__name__}")
    D, d = COMBINE(x, F, sigma, _check_float("sigma_data", sigma_data, positive=True),
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
    x, F = EULER.cast(x, F)
    _check_x("x", x)
    _check_like("F", F, "x", x)
    sigma = _check_sigma("sigma", sigma, x)
    sigma_next = _check_sigma("sigma_next", sigma_next, x, inclusive=True)
    return EULER(x, F, sigma, sigma_next, _check_float("sigma_data", sigma_data, positive=True))


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
    x_hat, d, x_next, F_next = HEUN.cast(x_hat, d, x_next, F_next)
    _check_x("x_hat", x_hat)
    _check_like("d", d, "x_hat", x_hat)
    _check_like("x_next", x_next, "x_hat", x_hat)
    _check_like("F_next", F_next, "x_hat", x_hat)
    sigma_hat = _check_sigma("sigma_hat", sigma_hat, x_hat)
    sigma_next = _check_sigma("sigma_next", sigma_next, x_hat, inclusive=True)
    return HEUN(x_hat, d, x_next, F_next, sigma_hat, sigma_next,
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
    x, noise = ADD_NOISE.cast(x, noise)
    _check_x("x", x)
    sigma = _check_sigma("sigma", sigma, x, inclusive=True)
    if sigma_base is not None:
        sigma_base = _check_sigma("sigma_base", sigma_base, x, inclusive=True)
    s_noise = _check_float("s_noise", s_noise)
    noise, seed = _noise_source(x, noise, generator)
    return ADD_NOISE(x, sigma, sigma_base, s_noise, noise, seed)


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
    x, F, noise = CM.cast(x, F, noise)
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
        raise C.ArgumentError("noise= / generator= are only used when sigma_next is given (re-noising)")
    return CM(x, F, sigma, sigma_min, sigma_data, sigma_next, clamp, noise, seed)


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
    x_noisy, F, y = LOSS.cast(x_noisy, F, y)
    _check_x("x_noisy", x_noisy)
    _check_like("F", F, "x_noisy", x_noisy)
    _check_like("y", y, "x_noisy", x_noisy)
    sigma = _check_sigma("sigma", sigma, x_noisy)
    return LOSS(x_noisy, F, y, sigma, _check_float("sigma_data", sigma_data, positive=True))
