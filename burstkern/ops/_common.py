"""Shared plumbing of every op: what each backend takes, output layouts, argument checks, output poisoning.

Each op folder (``burstkern/ops/<op>/``) holds ``reference.py`` (the spec, plain PyTorch), ``triton.py``
(kernels + launchers), ``native.py`` (the compiled kernels) and ``op.py`` (the public function and the op's one
declaration, ``_define.define_op``). Everything they share lives here once.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..registry import ALL_FLOATS, GPU_FLOATS, Supports

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# What each backend's kernels take (one float64 policy, burstkern.registry): the native CPU kernels every float
# dtype, fp64 in fp64; the CUDA and Triton kernels fp32/fp16/bf16 (Triton on CPU tensors only under its interpreter).
NATIVE = Supports.of(cpu=ALL_FLOATS, cuda=GPU_FLOATS)
TRITON = Supports.of(cpu=GPU_FLOATS, cuda=GPU_FLOATS)


def native_supports(family: str) -> Supports:
    """NATIVE when the loaded burstkern._C has ``family``'s real CPU kernels; else CUDA only (a test build's CPU
    path of that family, the GPU-order loops, is reachable through ``registry.testing.available`` alone)."""
    from .. import _extension

    st = _extension.state()
    if family in st.cpu_ops:
        return NATIVE
    if st.testing:
        return Supports.of(cpu=GPU_FLOATS, cuda=GPU_FLOATS)
    return Supports(Supports.of(cuda=GPU_FLOATS).dtypes,
                    missing=(("cpu", f"this burstkern._C has no CPU kernels for the {family} ops"),))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: fp64 stays fp64, everything else computes in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` is (and is not also plain contiguous), else contiguous.

    Real kernels and fake impls both lay outputs out by this rule, so their strides always agree.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


_POISON_OUTPUTS = False


def set_poison_outputs(on: bool) -> bool:
    """Tests: fill every buffer a fused kernel is about to write with NaN, in the Triton launchers (:func:`poisoned`)
    and in the compiled ops' host code (returns the previous setting), so an element a kernel forgets to write
    shows up as NaN instead of stale memory."""
    global _POISON_OUTPUTS
    prev, _POISON_OUTPUTS = _POISON_OUTPUTS, bool(on)
    from .. import _extension  # the compiled kernels' host code has the same switch (csrc/common/poison.h)

    if _extension.cuda_extension_error() is None and hasattr(torch.ops.burstkern_C, "set_poison_outputs"):
        torch.ops.burstkern_C.set_poison_outputs(bool(on))
    return prev


def poisoned(t: torch.Tensor) -> torch.Tensor:
    """``t``, NaN-filled when output poisoning is on (a no-op otherwise); fused launchers wrap allocations in it."""
    if _POISON_OUTPUTS and t.numel() and t.dtype.is_floating_point:
        t.fill_(float("nan"))
    return t


def empty_like_format(x: torch.Tensor, shape=None, dtype=None, fmt=None) -> torch.Tensor:
    shape = tuple(x.shape) if shape is None else tuple(shape)
    fmt = memory_format_of(x) if fmt is None else fmt
    if len(shape) != 4:
        fmt = torch.contiguous_format
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


def to_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    if t.dim() != 4:
        return t.contiguous()
    return t.contiguous(memory_format=fmt)


def match_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` laid out as ``like`` (the tensor a fake impl allocated for it); empty placeholders pass through."""
    if t.numel() == 0 and like.numel() == 0:
        return like if t.shape != like.shape else t
    return to_format(t, memory_format_of(like))


def empty_grad(ref: torch.Tensor) -> torch.Tensor:
    """Placeholder returned by backward ops for an absent optional input (custom ops cannot return None)."""
    return ref.new_empty((0,))


# ----------------------------------------------------------------------------------------------
# argument checks: every message names the argument, what it got and what was expected
# ----------------------------------------------------------------------------------------------
class ArgumentError(RuntimeError, ValueError):
    """A bad argument to a burstkern op or module. A ``RuntimeError``, as torchvision raises for bad
    ``deform_conv2d`` arguments (so code written for torchvision keeps catching it), and a ``ValueError``."""


class ArgumentTypeError(ArgumentError, TypeError):
    """A bad argument type or dtype: an :class:`ArgumentError` that is also a ``TypeError``."""


def describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return f"{type(t).__name__}"
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name: str, t, *, ndim: Optional[int] = None, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ArgumentError(f"{name} must be a {ndim}-D tensor, got {describe(t)}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise ArgumentTypeError(f"{name} must be float32, float16, bfloat16 or float64, got {describe(t)}")
    return t


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, *, dtype: bool = True) -> None:
    if t.device != ref.device:
        raise ArgumentError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                           f"expected all tensors on one device ({name}: {describe(t)})")
    if dtype and t.dtype != ref.dtype:
        raise ArgumentTypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; expected the same dtype "
                        f"({name}: {describe(t)})")


def pair(name: str, v) -> tuple:
    """An int or a pair of ints, as a pair."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    raise ArgumentTypeError(f"{name} must be an int or a pair of ints, got {v!r}")
