"""The ``cuda`` backend of the denoise ops: thin glue from the registry to the compiled ``burstkern_C`` kernels.

Kernels: ``csrc/denoise/`` (element math in ``element.cuh``, shared by the CUDA kernels and the CPU build of the
same ``burstkern_C`` ops that the tests run without a GPU). Every op is one kernel launch over the flat elements
(reductions, ``edm_loss`` and σ's gradient, add a memset of their per-sample counters), fp32 math for
float32/float16/bfloat16 storage; float64 is the reference backend's job.

Layout: the kernels walk all tensor arguments of an op as flat arrays in one memory order, contiguous or
channels_last (the batch dimension is outermost in both, so sample = flat index // elements per sample). Here
every tensor argument is brought to x's format, ``C.memory_format_of(x)`` (a no-op when it is in it already,
a copy otherwise, e.g. for strided inputs, which become contiguous); the kernels allocate outputs in that format,
the rule of op.py's fake impls. σ's ([] or [N], any float dtype and stride) and the int64 seed tensor go to the
kernels as they are: they are read on the device, so nothing syncs with the host and a CUDA-graph replay reads
the seed its generator wrote.

Registered only when ``burstkern._C`` is loaded and has these ops (see ``__init__.py``).
"""

from __future__ import annotations

import torch

from .. import _common as C
from ...backend import register_kernel
from . import op as O

_B = torch.ops.burstkern_C


def _check_dtype(x: torch.Tensor, what: str) -> None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the cuda backend of {what} runs float32/float16/bfloat16 tensors (fp32 math), got "
                        f"{C.describe(x)}; use the reference backend for float64")


def _fmt(x: torch.Tensor, *ts):
    """x and ts in x's memory format (contiguous or channels_last): the flat layout the kernels require."""
    fmt = C.memory_format_of(x)
    return [None if t is None else C.to_format(t, fmt) for t in (x,) + ts]


@register_kernel(O.OP_SCALINGS, "cuda")
def denoise_scalings(sigma, sd, smin, mode):
    if sigma.dtype == torch.float64:
        raise TypeError(f"the cuda backend of denoise_scalings computes in fp32, got sigma {C.describe(sigma)}; "
                        f"use the reference backend for float64")
    return _B.denoise_scalings(sigma.contiguous(), sd, smin, mode == "cm")


@register_kernel(O.OP_COMBINE, "cuda")
def denoise_combine_forward(x, F, sigma, sd, smin, mode, return_d):
    _check_dtype(x, "denoise_combine")
    x, F = _fmt(x, F)
    return _B.denoise_combine(x, F, sigma, sd, smin, mode == "cm", return_d)


@register_kernel(O.OP_COMBINE_BWD, "cuda")
def denoise_combine_backward(grad_D, grad_d, x, F, sigma, sd, smin, mode, return_d, need_sigma):
    _check_dtype(x, "denoise_combine")
    # grad_d is an empty placeholder when d was not returned
    has_gd = return_d and grad_d.numel() == x.numel() and x.numel() > 0
    x, F, grad_D, grad_d = _fmt(x, F, grad_D, grad_d if has_gd else None)
    return _B.denoise_combine_backward(grad_D, grad_d, x, F, sigma, sd, smin, mode == "cm", need_sigma)


@register_kernel(O.OP_EULER, "cuda")
def edm_euler_update(x, F, sigma, sigma_next, sd):
    _check_dtype(x, "edm_euler_update")
    x, F = _fmt(x, F)
    return _B.edm_euler_update(x, F, sigma, sigma_next, sd)


@register_kernel(O.OP_HEUN, "cuda")
def edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd):
    _check_dtype(x_hat, "edm_heun_update")
    x_hat, d, x_next, F_next = _fmt(x_hat, d, x_next, F_next)
    return _B.edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd)


@register_kernel(O.OP_ADD_NOISE, "cuda")
def add_noise(x, sigma, sigma_base, s_noise, noise, seed):
    _check_dtype(x, "add_noise")
    x, noise = _fmt(x, noise)
    return _B.add_noise(x, sigma, sigma_base, s_noise, noise, seed)


@register_kernel(O.OP_CM, "cuda")
def cm_update(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed):
    _check_dtype(x, "cm_update")
    x, F, noise = _fmt(x, F, noise)
    return _B.cm_update(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed)


@register_kernel(O.OP_CM_BWD, "cuda")
def cm_update_backward(grad, x, F, sigma, smin, sd, clamp):
    _check_dtype(x, "cm_update")
    x, F, grad = _fmt(x, F, grad)
    return _B.cm_update_backward(grad, x, F, sigma, smin, sd, clamp)


@register_kernel(O.OP_LOSS, "cuda")
def edm_loss_forward(x, F, y, sigma, sd):
    _check_dtype(x, "edm_loss")
    x, F, y = _fmt(x, F, y)
    return _B.edm_loss(x, F, y, sigma, sd)


@register_kernel(O.OP_LOSS_BWD, "cuda")
def edm_loss_backward(grad, x, F, y, sigma, sd):
    _check_dtype(x, "edm_loss")
    x, F, y = _fmt(x, F, y)
    return _B.edm_loss_backward(grad, x, F, y, sigma, sd)


def randn(seed: torch.Tensor, offsets: torch.Tensor):
    """(float32 normals, int64 Philox words ``[..., 4]``) of the in-kernel RNG at int64 ``offsets`` under ``seed``.

    Example::

        >>> z, words = randn(torch.tensor([7]), torch.arange(10))
    """
    return _B.denoise_randn(seed, offsets)
