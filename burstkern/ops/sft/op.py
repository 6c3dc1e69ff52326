"""``burstkern.ops.sft_modulate`` / ``sft_group_norm``: public functions, ``torch.library`` ops, autograd.

Four ops, each declared once with ``define_op``: ``burstkern::sft_modulate`` and ``burstkern::sft_group_norm``
and their backwards (ops of their own so the backward stays traceable by torch.compile). ``sft_group_norm`` also
returns the per-(sample, group) mean and rstd, which autograd saves with x so the fused backward recomputes the
normalised tensor instead of storing it.
"""

from __future__ import annotations

from numbers import Real
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _common as C
from .._define import define_op
from . import reference
from .reference import ACT_CODES

OP_MOD = "sft_modulate"
OP_MOD_BWD = "sft_modulate_backward"
OP_GN = "sft_group_norm"
OP_GN_BWD = "sft_group_norm_backward"

DEFAULT_LEAKY_SLOPE = 0.01


# ----------------------------------------------------------------------------------------------
# output layouts: one rule for real kernels and fake impls (channels_last in -> channels_last out)
# ----------------------------------------------------------------------------------------------
def _like_x(x: Tensor, t: Optional[Tensor]) -> Tensor:
    """A gradient buffer of ``t``'s shape and dtype laid out like x (empty placeholder when t is None)."""
    if t is None:
        return C.empty_grad(x)
    return C.empty_like_format(t, fmt=C.memory_format_of(x))


def _param_grad(x: Tensor, t: Optional[Tensor]) -> Tensor:
    if t is None:
        return C.empty_grad(x)
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def modulate_grad_layouts(x, gamma, beta):
    return C.empty_like_format(x), _like_x(x, gamma), _like_x(x, beta)


def group_norm_out_layouts(x, num_groups):
    stat = (x.shape[0], num_groups)
    cd = C.compute_dtype(x.dtype)
    return (C.empty_like_format(x), x.new_empty(stat, dtype=cd), x.new_empty(stat, dtype=cd))


def group_norm_grad_layouts(x, gamma, beta, weight, bias):
    return (C.empty_like_format(x), _like_x(x, gamma), _like_x(x, beta), _param_grad(x, weight),
            _param_grad(x, bias))


# ----------------------------------------------------------------------------------------------
# reference kernels
# ----------------------------------------------------------------------------------------------
def _unaliased(grads, *inputs):
    """Custom ops may not return an input: with act=None, d out / d beta is the incoming gradient itself."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, Tensor) and t.numel() > 0}
    out = []
    for g in grads:
        if g.numel() > 0 and g.untyped_storage().data_ptr() in seen:
            g = g.clone(memory_format=torch.preserve_format)
        if g.numel() > 0:
            seen.add(g.untyped_storage().data_ptr())
        out.append(g)
    return tuple(out)


def _or_empty(grads, ref: Tensor):
    return tuple(C.empty_grad(ref) if g is None else g for g in grads)


def _reference_modulate(x, gamma, beta, act, slope):
    return C.to_format(reference.sft_modulate(x, gamma, beta, act, slope), C.memory_format_of(x))


def _reference_modulate_backward(grad, x, gamma, beta, act, slope):
    grads = _or_empty(reference.sft_modulate_backward(grad, x, gamma, beta, act, slope), x)
    grads = (C.match_layout(g, lay) for g, lay in zip(grads, modulate_grad_layouts(x, gamma, beta)))
    return _unaliased(grads, grad, x, gamma, beta)


def _reference_group_norm(x, gamma, beta, num_groups, weight, bias, eps, act, slope):
    out, mean, rstd = reference.sft_group_norm(x, gamma, beta, num_groups, weight, bias, eps, act, slope)
    return C.to_format(out, C.memory_format_of(x)), mean.contiguous(), rstd.contiguous()


def _reference_group_norm_backward(grad, x, gamma, beta, num_groups, weight, bias, mean, rstd, eps, act, slope):
    # the reference recomputes the statistics itself; mean/rstd are only the fused kernels' shortcut
    grads = _or_empty(reference.sft_group_norm_backward(grad, x, gamma, beta, num_groups, weight, bias, eps, act,
                                                        slope), x)
    layouts = group_norm_grad_layouts(x, gamma, beta, weight, bias)
    grads = (C.match_layout(g, lay) for g, lay in zip(grads, layouts))
    return _unaliased(grads, grad, x, gamma, beta, weight, bias, mean, rstd)


# ----------------------------------------------------------------------------------------------
# sft_modulate
# ----------------------------------------------------------------------------------------------
def _modulate_backward_signature(grad: Tensor, x: Tensor, gamma: Tensor, beta: Optional[Tensor], act: int,
                                 slope: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_gamma, grad_beta); grad_beta is empty when beta is None."""


MODULATE_BACKWARD = define_op(OP_MOD_BWD, _modulate_backward_signature, reference=_reference_modulate_backward,
                              fake=lambda grad, x, gamma, beta, act, slope: modulate_grad_layouts(x, gamma, beta))


def _modulate_signature(x: Tensor, gamma: Tensor, beta: Optional[Tensor], act: int, slope: float) -> Tensor:
    """act(x * (1 + gamma) + beta), laid out as x."""


def _mod_setup_context(ctx, inputs, output):
    x, gamma, beta, act, slope = inputs
    ctx.save_for_backward(x, gamma, beta)
    ctx.act, ctx.slope = act, slope


def _mod_backward(ctx, grad):
    x, gamma, beta = ctx.saved_tensors
    gx, gg, gb = MODULATE_BACKWARD(grad, x, gamma, beta, ctx.act, ctx.slope)
    return gx, gg, (None if beta is None else gb), None, None


# autocast "lower": all in the autocast dtype (fp32 math inside the kernels)
MODULATE = define_op(OP_MOD, _modulate_signature, reference=_reference_modulate,
                     fake=lambda x, gamma, beta, act, slope: C.empty_like_format(x),
                     setup_context=_mod_setup_context, backward=_mod_backward, autocast="lower")


# ----------------------------------------------------------------------------------------------
# sft_group_norm
# ----------------------------------------------------------------------------------------------
def _group_norm_backward_signature(grad: Tensor, x: Tensor, gamma: Tensor, beta: Optional[Tensor], num_groups: int,
                                   weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
                                   eps: float, act: int, slope: float
                                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_x, grad_gamma, grad_beta, grad_weight, grad_bias); empty where the input is None."""


GROUP_NORM_BACKWARD = define_op(
    OP_GN_BWD, _group_norm_backward_signature, reference=_reference_group_norm_backward,
    fake=lambda grad, x, gamma, beta, num_groups, weight, bias, *rest: group_norm_grad_layouts(x, gamma, beta,
                                                                                               weight, bias))


def _group_norm_signature(x: Tensor, gamma: Tensor, beta: Optional[Tensor], num_groups: int,
                          weight: Optional[Tensor], bias: Optional[Tensor], eps: float, act: int, slope: float
                          ) -> Tuple[Tensor, Tensor, Tensor]:
    """(out, mean [N, G], rstd [N, G]); mean/rstd in fp32 (fp64 for fp64 x)."""


def _gn_setup_context(ctx, inputs, output):
    x, gamma, beta, num_groups, weight, bias, eps, act, slope = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, gamma, beta, weight, bias, mean, rstd)
    ctx.num_groups, ctx.eps, ctx.act, ctx.slope = num_groups, eps, act, slope


def _gn_backward(ctx, grad, _grad_mean, _grad_rstd):
    x, gamma, beta, weight, bias, mean, rstd = ctx.saved_tensors
    gx, gg, gb, gw, gbias = GROUP_NORM_BACKWARD(grad, x, gamma, beta, ctx.num_groups, weight, bias, mean, rstd,
                                                ctx.eps, ctx.act, ctx.slope)
    return (gx, gg, None if beta is None else gb, None, None if weight is None else gw,
            None if bias is None else gbias, None, None, None)


# autocast "lower": all in the autocast dtype; the statistics are fp32 inside the kernels anyway
GROUP_NORM = define_op(OP_GN, _group_norm_signature, reference=_reference_group_norm,
                       fake=lambda x, gamma, beta, num_groups, *rest: group_norm_out_layouts(x, num_groups),
                       setup_context=_gn_setup_context, backward=_gn_backward, autocast="lower")


# ----------------------------------------------------------------------------------------------
# argument checks: every message names the argument, what it got and what was expected
# ----------------------------------------------------------------------------------------------
def parse_act(act) -> Tuple[int, float]:
    """``None | "silu" | "relu" | "leaky_relu" | "leaky_relu(<slope>)"`` -> (code, slope)."""
    if act is None:
        return ACT_CODES[None], 0.0
    if not isinstance(act, str):
        raise C.ArgumentTypeError(f"act must be None or a string (\"silu\", \"relu\", \"leaky_relu\", \"leaky_relu(0.2)\"), "
                        f"got {type(act).__name__} {act!r}")
    s = act.strip().lower().replace(" ", "")
    if s in ("silu", "relu"):
        return ACT_CODES[s], 0.0
    if s == "leaky_relu":
        return ACT_CODES["leaky_relu"], DEFAULT_LEAKY_SLOPE
    if s.startswith("leaky_relu(") and s.endswith(")"):
        try:
            slope = float(s[len("leaky_relu("):-1])
        except ValueError:
            slope = float("nan")
        if slope == slope and abs(slope) != float("inf"):
            return ACT_CODES["leaky_relu"], slope
    raise C.ArgumentError(f"act must be None, \"silu\", \"relu\", \"leaky_relu\" (slope 0.01) or \"leaky_relu(<slope>)\" "
                     f"with a finite slope, got {act!r}")


def _as_4d(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.unsqueeze(-1)


def _check_modulation(x: Tensor, gamma, beta) -> None:
    """gamma/beta: tensors of x's rank, dtype and device, spatial or per-channel; merged [N, 2C, ...] gamma."""
    C.check_tensor("gamma", gamma, ndim=x.dim())
    C.check_same("gamma", gamma, "x", x)
    n, c = x.shape[:2]
    spatial, per_channel = tuple(x.shape[2:]), (1,) * (x.dim() - 2)
    layout = "[N, C, H, W] or [N, C, 1, 1]" if x.dim() == 4 else "[N, C, L] or [N, C, 1]"
    if beta is not None:
        C.check_tensor("beta", beta, ndim=x.dim())
        C.check_same("beta", beta, "x", x)
        if beta.shape[0] != n or beta.shape[1] != c or tuple(beta.shape[2:]) not in (spatial, per_channel):
            raise C.ArgumentError(f"beta must be {layout} = {(n, c) + spatial} or {(n, c) + per_channel} for x "
                             f"{C.describe(x)}, got {C.describe(beta)}")
        chans = (c,)
    else:
        chans = (c, 2 * c)
    if gamma.shape[0] != n or gamma.shape[1] not in chans or tuple(gamma.shape[2:]) not in (spatial, per_channel):
        merged = (" (2C channels, the merged gamma|beta form, only when beta is None)" if beta is not None
                  else " or the merged [N, 2C, ...] gamma|beta form")
        raise C.ArgumentError(f"gamma must be {layout} = {(n, c) + spatial} or {(n, c) + per_channel}{merged} for x "
                         f"{C.describe(x)}, got {C.describe(gamma)}")


def _check_x(x) -> None:
    C.check_tensor("x", x)
    if x.dim() not in (3, 4):
        raise C.ArgumentError(f"x must be a 4-D [N, C, H, W] (or 3-D [N, C, L]) tensor, got {C.describe(x)}")
    if x.shape[1] == 0 or any(s == 0 for s in x.shape[2:]):
        raise C.ArgumentError(f"x must have at least one channel and one spatial position, got {C.describe(x)}")


def check_modulate_args(x, gamma, beta, act) -> Tuple[int, float]:
    """Validate ``sft_modulate`` arguments; returns the parsed (act code, slope)."""
    _check_x(x)
    _check_modulation(x, gamma, beta)
    return parse_act(act)


def check_group_norm_args(x, gamma, beta, num_groups, weight, bias, eps, act) -> Tuple[int, float]:
    """Validate ``sft_group_norm`` arguments; returns the parsed (act code, slope)."""
    _check_x(x)
    _check_modulation(x, gamma, beta)
    c = x.shape[1]
    if not isinstance(num_groups, int) or isinstance(num_groups, bool):
        raise C.ArgumentTypeError(f"num_groups must be an int, got {type(num_groups).__name__} {num_groups!r}")
    if num_groups < 1 or c % num_groups != 0:
        raise C.ArgumentError(f"num_groups must be a positive divisor of x's {c} channels, got {num_groups} "
                         f"(x: {C.describe(x)})")
    if x.numel() // num_groups == 1:  # torch.nn.functional.group_norm's rule: N·(C/num_groups)·H·W values in all
        raise C.ArgumentError(f"sft_group_norm: expected more than 1 value per group in all (N·C/num_groups·H·W = 1, "
                              f"as torch.nn.functional.group_norm), got x {C.describe(x)} with num_groups {num_groups}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            C.check_tensor(name, t, ndim=1)
            C.check_same(name, t, "x", x)
            if t.shape[0] != c:
                raise C.ArgumentError(f"{name} must have shape ({c},) (one per channel of x {C.describe(x)}), got "
                                 f"{C.describe(t)}")
    if not isinstance(eps, Real) or isinstance(eps, bool):
        raise C.ArgumentTypeError(f"eps must be a float, got {type(eps).__name__} {eps!r}")
    if not eps >= 0 or eps == float("inf"):
        raise C.ArgumentError(f"eps must be a finite number >= 0, got {eps!r}")
    return parse_act(act)


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------
def sft_modulate(x: Tensor, gamma: Tensor, beta: Optional[Tensor] = None, act: Optional[str] = None) -> Tensor:
    """Spatial feature transform (SFTGAN): ``act(x * (1 + gamma) + beta)`` in one pass.

    Args:
        x: ``[N, C, H, W]`` features (``[N, C, L]`` also accepted).
        gamma: scale, ``[N, C, H, W]`` (spatial) or ``[N, C, 1, 1]`` (per channel, e.g. from a time embedding);
            or, with ``beta=None``, the merged ``[N, 2C, H, W]`` / ``[N, 2C, 1, 1]`` output of one conv whose first
            C channels are gamma and next C beta (read in place, no chunk copy).
        beta: shift, same shapes as gamma's C-channel forms, or None (no shift unless gamma is merged).
        act: None, ``"silu"``, ``"relu"``, ``"leaky_relu"`` (slope 0.01) or ``"leaky_relu(0.2)"``.

    Returns:
        ``[N, C, H, W]`` in x's dtype, channels_last when x is; fp16/bf16 compute in fp32.
        Differentiable in x, gamma and beta.

    Example::

        >>> x = torch.randn(2, 64, 48, 48)
        >>> scale_shift = torch.randn(2, 128, 48, 48)   # one conv producing gamma|beta
        >>> sft_modulate(x, scale_shift, act="leaky_relu(0.2)").shape
        torch.Size([2, 64, 48, 48])
    """
    x, gamma, beta = MODULATE.cast(x, gamma, beta)
    code, slope = check_modulate_args(x, gamma, beta, act)
    if x.dim() == 3:
        return MODULATE(x.unsqueeze(-1), gamma.unsqueeze(-1), _as_4d(beta), code, slope).squeeze(-1)
    return MODULATE(x, gamma, beta, code, slope)


def sft_group_norm(x: Tensor, gamma: Tensor, beta: Optional[Tensor] = None, num_groups: int = 32,
                   weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5,
                   act: Optional[str] = None) -> Tensor:
    """SPADE-style conditional GroupNorm: ``act(GroupNorm(x) * (1 + gamma) + beta)`` (BSRD / E-BSRD, diffusion
    ResBlock scale-shift), fused so the normalised tensor is never stored.

    Args:
        x: ``[N, C, H, W]`` features (``[N, C, L]`` also accepted).
        gamma, beta: as in :func:`sft_modulate` (spatial, per-channel, or merged ``[N, 2C, ...]`` with beta=None).
        num_groups: GroupNorm groups; must divide C (32 for GroupNorm32).
        weight, bias: GroupNorm affine ``[C]``, or None (no affine).
        eps: added to the variance.
        act: None, ``"silu"``, ``"relu"``, ``"leaky_relu"`` (slope 0.01) or ``"leaky_relu(0.2)"``.

    Returns:
        ``[N, C, H, W]`` in x's dtype, channels_last when x is. Statistics are computed in fp32 (fp64 for fp64
        x). Differentiable in x, gamma, beta, weight and bias.

    Example::

        >>> x = torch.randn(2, 128, 96, 96)
        >>> gb = torch.randn(2, 256, 96, 96)             # merged gamma|beta from one conv
        >>> sft_group_norm(x, gb, num_groups=32).shape
        torch.Size([2, 128, 96, 96])
    """
    x, gamma, beta, weight, bias = GROUP_NORM.cast(x, gamma, beta, weight, bias)
    code, slope = check_group_norm_args(x, gamma, beta, num_groups, weight, bias, eps, act)
    if x.dim() == 3:
        out = GROUP_NORM(x.unsqueeze(-1), gamma.unsqueeze(-1), _as_4d(beta), num_groups, weight, bias,
                              float(eps), code, slope)[0]
        return out.squeeze(-1)
    return GROUP_NORM(x, gamma, beta, num_groups, weight, bias, float(eps), code, slope)[0]
