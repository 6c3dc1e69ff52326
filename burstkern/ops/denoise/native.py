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


# op -> (the argument whose layout the others take, the arguments the kernels walk as flat arrays in that layout)
_FLAT = {
    O.OP_SCALINGS: (0, (0,)),
    O.OP_COMBINE: (0, (0, 1)),
    O.OP_COMBINE_BWD: (2, (0, 1, 2, 3)),
    O.OP_EULER: (0, (0, 1)),
    O.OP_HEUN: (0, (0, 1, 2, 3)),
    O.OP_ADD_NOISE: (0, (0, 4)),
    O.OP_CM: (0, (0, 1, 7)),
    O.OP_CM_BWD: (1, (0, 1, 2)),
    O.OP_LOSS: (0, (0, 1, 2)),
    O.OP_LOSS_BWD: (1, (1, 2, 3)),
}


def _flat_kernel(name: str, ref: int, flat: tuple):
    def kernel(*args):
        fmt = C.memory_format_of(args[ref])
        args = list(args)
        for i in flat:
            if args[i] is not None and args[i].numel() > 0:  # empty placeholders pass through
                args[i] = C.to_format(args[i], fmt)
        return getattr(_B, name)(*args)  # looked up per call: tests spy on _B

    return kernel


for _name, (_ref, _flat) in _FLAT.items():
    register_kernel(_name, "native", _flat_kernel(_name, _ref, _flat), supports=C.native_supports("denoise"))


def randn(seed: torch.Tensor, offsets: torch.Tensor):
    """(float32 normals, int64 Philox words ``[..., 4]``) of the in-kernel RNG at int64 ``offsets`` under ``seed``.

    Example::

        >>> z, words = randn(torch.tensor([7]), torch.arange(10))
    """
    if not hasattr(_B, "denoise_randn"):
        raise RuntimeError("burstkern_C::denoise_randn is a test op: build with BURSTKERN_TESTING=1")
    return _B.denoise_randn(seed, offsets)
