"""SFT feature modulation in plain PyTorch: the spec every backend is pinned to.

``sft_modulate``:   ``act(x * (1 + gamma) + beta)``
``sft_group_norm``: ``act(GroupNorm(x; G, weight, bias, eps) * (1 + gamma) + beta)``

``gamma``/``beta`` are ``[N, C, H, W]`` (spatial) or ``[N, C, 1, 1]`` (per channel) and broadcast against x;
``beta=None`` with a ``[N, 2C, ...]`` gamma is the merged form (first C channels gamma, next C beta), split
here by views. fp16/bf16 inputs are computed in fp32 and rounded once at the end; fp64 stays fp64.
The arguments are checked by op.py; ``act`` arrives as an int code (see :data:`ACT_CODES`) plus a slope.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._common import compute_dtype

ACT_NONE, ACT_SILU, ACT_RELU, ACT_LEAKY_RELU = 0, 1, 2, 3
ACT_CODES = {None: ACT_NONE, "silu": ACT_SILU, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY_RELU}


def activation(u: torch.Tensor, act: int, slope: float) -> torch.Tensor:
    if act == ACT_NONE:
        return u
    if act == ACT_SILU:
        return F.silu(u)
    if act == ACT_RELU:
        return F.relu(u)
    if act == ACT_LEAKY_RELU:
        return F.leaky_relu(u, slope)
    raise ValueError(f"unknown activation code {act}")


def split_gamma_beta(x: torch.Tensor, gamma: torch.Tensor,
                     beta: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(gamma, beta) as C-channel tensors: the merged ``[N, 2C, ...]`` form is split into two views."""
    c = x.shape[1]
    if beta is None and gamma.shape[1] == 2 * c:
        return gamma[:, :c], gamma[:, c:]
    return gamma, beta


def modulate(h: torch.Tensor, gamma: torch.Tensor, beta: Optional[torch.Tensor], act: int,
             slope: float) -> torch.Tensor:
    """``act(h * (1 + gamma) + beta)`` on tensors already in the compute dtype."""
    gamma, beta = split_gamma_beta(h, gamma, beta)
    u = h * (1 + gamma)
    if beta is not None:
        u = u + beta
    return activation(u, act, slope)


def sft_modulate(x: torch.Tensor, gamma: torch.Tensor, beta: Optional[torch.Tensor], act: int,
                 slope: float) -> torch.Tensor:
    """``[N, C, H, W]`` in x's dtype."""
    cd = compute_dtype(x.dtype)
    out = modulate(x.to(cd), gamma.to(cd), None if beta is None else beta.to(cd), act, slope)
    return out.to(x.dtype)


def group_stats(x: torch.Tensor, num_groups: int, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, group) mean and 1/sqrt(var + eps) (biased variance), ``[N, G]`` in the compute dtype."""
    cd = compute_dtype(x.dtype)
    if x.shape[0] == 0:  # no samples: empty statistics (var_mean would warn about 0 degrees of freedom)
        return x.new_empty((0, num_groups), dtype=cd), x.new_empty((0, num_groups), dtype=cd)
    xg = x.to(cd).reshape(x.shape[0], num_groups, x[0].numel() // num_groups)
    var, mean = torch.var_mean(xg, dim=-1, unbiased=False)
    return mean, torch.rsqrt(var + eps)


def sft_group_norm(x: torch.Tensor, gamma: torch.Tensor, beta: Optional[torch.Tensor], num_groups: int,
                   weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float, act: int,
                   slope: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out ``[N, C, H, W]`` in x's dtype, mean ``[N, G]``, rstd ``[N, G]`` in the compute dtype)."""
    cd = compute_dtype(x.dtype)
    up = lambda t: None if t is None else t.to(cd)  # noqa: E731
    xc = x.to(cd)
    h = F.group_norm(xc, num_groups, up(weight), up(bias), eps)
    out = modulate(h, up(gamma), up(beta), act, slope).to(x.dtype)
    # the statistics are side outputs (the fused backward recomputes GroupNorm(x) from them)
    mean, rstd = group_stats(xc, num_groups, eps)
    return out, mean, rstd


# ----------------------------------------------------------------------------------------------
# closed-form backward (written out, not derived with torch.func inside the op, so the backward ops also run
# under opcheck's schema, fake and AOT modes); equal to autograd through the forwards above
# ----------------------------------------------------------------------------------------------
def activation_grad(u: torch.Tensor, act: int, slope: float) -> Optional[torch.Tensor]:
    """d act(u) / du (None for the identity); at u == 0 the same one-sided values as torch's kernels."""
    if act == ACT_NONE:
        return None
    if act == ACT_SILU:
        s = torch.sigmoid(u)
        return s * (1 + u * (1 - s))
    if act == ACT_RELU:
        return (u > 0).to(u.dtype)
    if act == ACT_LEAKY_RELU:
        return torch.where(u > 0, torch.ones_like(u), torch.full_like(u, slope))
    raise ValueError(f"unknown activation code {act}")


def _reduce_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the dims where ``like`` broadcasts (size 1)."""
    dims = [d for d in range(t.dim()) if like.shape[d] == 1 and t.shape[d] != 1]
    return t.sum(dims, keepdim=True) if dims else t


def _modulate_backward(grad_out, h, gamma, beta, act, slope):
    """Gradients of ``act(h * (1 + gamma) + beta)`` wrt (h, gamma-or-merged, beta), compute dtype."""
    g, b = split_gamma_beta(h, gamma, beta)
    u = h * (1 + g)
    if b is not None:
        u = u + b
    da = activation_grad(u, act, slope)
    g_u = grad_out if da is None else grad_out * da
    g_h = g_u * (1 + g)
    g_gamma = _reduce_to(g_u * h, g)
    g_beta = None if b is None else _reduce_to(g_u, b)
    if g_beta is grad_out:  # act None, spatial beta: the incoming gradient itself, which an op may not return
        g_beta = g_beta.clone()
    if beta is None and gamma.shape[1] == 2 * h.shape[1]:  # merged: one gradient for the [N, 2C, ...] tensor
        return g_h, torch.cat([g_gamma, g_beta], 1), None
    return g_h, g_gamma, g_beta


def sft_modulate_backward(grad: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, beta: Optional[torch.Tensor],
                          act: int, slope: float):
    """(grad_x, grad_gamma, grad_beta) in the inputs' dtypes; grad_beta None when beta is None."""
    cd = compute_dtype(x.dtype)
    up = lambda t: None if t is None else t.to(cd)  # noqa: E731
    g_x, g_gamma, g_beta = _modulate_backward(grad.to(cd), x.to(cd), gamma.to(cd), up(beta), act, slope)
    return g_x.to(x.dtype), g_gamma.to(gamma.dtype), None if beta is None else g_beta.to(beta.dtype)


def sft_group_norm_backward(grad: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, beta: Optional[torch.Tensor],
                            num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                            eps: float, act: int, slope: float):
    """(grad_x, grad_gamma, grad_beta, grad_weight, grad_bias); None for absent inputs."""
    cd = compute_dtype(x.dtype)
    up = lambda t: None if t is None else t.to(cd)  # noqa: E731
    xc = x.to(cd)
    n, c = xc.shape[:2]
    per_group = xc[0].numel() // num_groups if n else 0  # explicit: reshape cannot infer -1 at batch 0
    mean, rstd = group_stats(xc, num_groups, eps)
    xg = xc.reshape(n, num_groups, per_group)
    h = ((xg - mean[..., None]) * rstd[..., None]).reshape(xc.shape)
    chan = (1, c) + (1,) * (xc.dim() - 2)
    w, b = up(weight), up(bias)
    h_aff = h if w is None else h * w.view(chan)
    if b is not None:
        h_aff = h_aff + b.view(chan)
    g_haff, g_gamma, g_beta = _modulate_backward(grad.to(cd), h_aff, gamma.to(cd), up(beta), act, slope)
    red = [0] + list(range(2, xc.dim()))
    g_w = None if w is None else (g_haff * h).sum(red).to(weight.dtype)
    g_b = None if b is None else g_haff.sum(red).to(bias.dtype)
    g_h = (g_haff if w is None else g_haff * w.view(chan)).reshape(n, num_groups, per_group)
    hg = h.reshape(n, num_groups, per_group)
    g_x = rstd[..., None] * (g_h - g_h.mean(-1, keepdim=True) - hg * (g_h * hg).mean(-1, keepdim=True))
    return (g_x.reshape(xc.shape).to(x.dtype), g_gamma.to(gamma.dtype),
            None if beta is None else g_beta.to(beta.dtype), g_w, g_b)
