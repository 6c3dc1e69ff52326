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
    xg = x.to(cd).reshape(x.shape[0], num_groups, -1)
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
