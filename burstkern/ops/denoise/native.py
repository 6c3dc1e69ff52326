"""The ``native`` backend of the denoise ops: the compiled ``burstkern_C`` ops of the same names.

Kernels: ``csrc/denoise/``. Every op is one pass over the flat elements: on CPU tensors vectorised and
multi-threaded, every float dtype (fp64 in fp64); on CUDA tensors one launch (reductions, ``edm_loss`` and σ's
gradient, add a memset of their per-sample counters), fp32 math for float32/float16/bfloat16 storage. In-kernel
noise is the same Philox stream (rng.py) on both.

Layout: the kernels walk all tensor arguments of an op as flat arrays in one memory order, contiguous or
channels_last (the batch dimension is outermost in both, so sample = flat index // elements per sample). Here
every tensor argument is brought to x's format, ``C.memory_format_of(x)`` (a no-op when it is in it already,
a copy otherwise, e.g. for strided inputs, which become contiguous); the kernels allocate outputs in that format,
the rule of op.py's fake impls. σ's ([] or [N], any float dtype and stride) and the int64 seed tensor go to the
kernels as they are: they are read on the device, so nothing syncs with the host and a CUDA-graph replay reads
the seed its generator wrote.
"""

from __future__ import annotations

import torch

from .. import _common as C
from ...registry import register_kernel
from . import op as O

_B = torch.ops.burstkern_C


def _fmt(x: torch.Tensor, *ts):
    """x and ts in x's memory format (contiguous or channels_last): the flat layout the kernels require."""
    fmt = C.memory_format_of(x)
    return [None if t is None else C.to_format(t, fmt) for t in (x,) + ts]


@register_kernel(O.OP_SCALINGS, "native", supports=C.NATIVE)
def denoise_scalings(sigma, sd, smin, mode):
    return _B.denoise_scalings(sigma.contiguous(), sd, smin, mode == "cm")


@register_kernel(O.OP_COMBINE, "native", supports=C.NATIVE)
def denoise_combine_forward(x, F, sigma, sd, smin, mode, return_d):
    x, F = _fmt(x, F)
    return _B.denoise_combine(x, F, sigma, sd, smin, mode == "cm", return_d)


@register_kernel(O.OP_COMBINE_BWD, "native", supports=C.NATIVE)
def denoise_combine_backward(grad_D, grad_d, x, F, sigma, sd, smin, mode, return_d, need_sigma):
    # grad_d is an empty placeholder when d was not returned
    has_gd = return_d and grad_d.numel() == x.numel() and x.numel() > 0
    x, F, grad_D, grad_d = _fmt(x, F, grad_D, grad_d if has_gd else None)
    return _B.denoise_combine_backward(grad_D, grad_d, x, F, sigma, sd, smin, mode == "cm", need_sigma)


@register_kernel(O.OP_EULER, "native", supports=C.NATIVE)
def edm_euler_update(x, F, sigma, sigma_next, sd):
    x, F = _fmt(x, F)
    return _B.edm_euler_update(x, F, sigma, sigma_next, sd)


@register_kernel(O.OP_HEUN, "native", supports=C.NATIVE)
def edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd):
    x_hat, d, x_next, F_next = _fmt(x_hat, d, x_next, F_next)
    return _B.edm_heun_update(x_hat, d, x_next, F_next, sigma_hat, sigma_next, sd)


@register_kernel(O.OP_ADD_NOISE, "native", supports=C.NATIVE)
def add_noise(x, sigma, sigma_base, s_noise, noise, seed):
    x, noise = _fmt(x, noise)
    return _B.add_noise(x, sigma, sigma_base, s_noise, noise, seed)


@register_kernel(O.OP_CM, "native", supports=C.NATIVE)
def cm_update(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed):
    x, F, noise = _fmt(x, F, noise)
    return _B.cm_update(x, F, sigma, smin, sd, sigma_next, clamp, noise, seed)


@register_kernel(O.OP_CM_BWD, "native", supports=C.NATIVE)
def cm_update_backward(grad, x, F, sigma, smin, sd, clamp):
    x, F, grad = _fmt(x, F, grad)
    return _B.cm_update_backward(grad, x, F, sigma, smin, sd, clamp)


@register_kernel(O.OP_LOSS, "native", supports=C.NATIVE)
def edm_loss_forward(x, F, y, sigma, sd):
    x, F, y = _fmt(x, F, y)
    return _B.edm_loss(x, F, y, sigma, sd)


@register_kernel(O.OP_LOSS_BWD, "native", supports=C.NATIVE)
def edm_loss_backward(grad, x, F, y, sigma, sd):
    x, F, y = _fmt(x, F, y)
    return _B.edm_loss_backward(grad, x, F, y, sigma, sd)


def randn(seed: torch.Tensor, offsets: torch.Tensor):
    """(float32 normals, int64 Philox words ``[..., 4]``) of the in-kernel RNG at int64 ``offsets`` under ``seed``.

    Example::

        >>> z, words = randn(torch.tensor([7]), torch.arange(10))
    """
    return _B.denoise_randn(seed, offsets)
