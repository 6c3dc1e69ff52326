"""One declaration per op: :func:`define_op` makes the ``torch.library`` op, its fake, its reference kernel, its
autograd wiring and its autocast policy from one call (the recipe: ``burstkern/ops/README.md``).

The op's body asks the registry (``burstkern.registry``) which backend's kernel runs the call, from the device and
dtype of its first floating tensor argument. When the op has a backward, the backend that ran the forward is
recorded in the autograd context and its backward kernels run the backward, on whichever thread autograd calls it
and whatever backend block is active there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from .. import profiling as _profiling
from .. import registry as _registry

AUTOCAST_POLICIES = ("lower", "fp32")
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def first_float(args) -> Tuple[torch.device, Optional[torch.dtype]]:
    """(device, dtype) of the first floating tensor in ``args`` (any tensor's device if none is floating)."""
    device = None
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.is_floating_point():
                return a.device, a.dtype
            device = device or a.device
    return device or torch.device("cpu"), None


def call(op: str, *args):
    """Run the kernel the active backend picks for ``op`` on ``args``, inside an NVTX range when profiling."""
    device, dtype = first_float(args)
    name, fn = _registry.resolve(op, device, dtype)
    if _profiling._enabled:
        with _profiling.nvtx_range(f"{op}[{name}]"):
            return fn(*args)
    return fn(*args)


@dataclass
class Op:
    """A defined op: call it like the ``torch.library`` op it wraps (``torch.ops.burstkern.<name>``)."""

    name: str
    op: Callable
    autocast: Optional[str]

    def __call__(self, *args):
        return self.op(*args)

    def cast(self, *tensors):
        """The tensors as the op's autocast policy wants them when ``torch.autocast`` is on for their device:
        ``"lower"`` computes in the autocast dtype (like a convolution), ``"fp32"`` in float32 (precision-critical
        updates); otherwise unchanged. Public functions call it before their checks, so mixed-dtype calls from an
        autocast region (bf16 activations, fp32 parameters) reach the kernels in one dtype."""
        ref = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
        if self.autocast is None or ref is None or ref.device.type not in _AUTOCAST_DEVICES:
            return tensors  # meta and other devices have no autocast state
        if not torch.is_autocast_enabled(ref.device.type):
            return tensors
        dt = torch.float32 if self.autocast == "fp32" else torch.get_autocast_dtype(ref.device.type)
        return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def define_op(name: str, signature: Callable, *, fake: Callable, reference: Optional[Callable] = None,
              setup_context: Optional[Callable] = None, backward: Optional[Callable] = None,
              autocast: Optional[str] = None, dispatch: bool = True) -> Op:
    """Define ``burstkern::<name>``.

    Args:
        name: the op's name (``torch.ops.burstkern.<name>``; the compiled kernel, if any, is ``burstkern_C::<name>``
            with the same schema).
        signature: a function whose annotated parameters and return type are the op's schema (its body is unused).
        fake: the fake (meta) implementation: output shapes, dtypes and layouts.
        reference: the reference kernel (plain PyTorch), registered for the ``reference`` backend.
        setup_context, backward: autograd (``torch.library.register_autograd``); ``backward`` usually calls the
            backward op, itself defined with :func:`define_op`.
        autocast: ``"lower"``, ``"fp32"`` or None (see :meth:`Op.cast`).
        dispatch: False for an op with no backends (e.g. no tensor inputs): ``reference`` is then its body.
    """
    if autocast is not None and autocast not in AUTOCAST_POLICIES:
        raise ValueError(f"autocast must be one of {AUTOCAST_POLICIES} or None, got {autocast!r}")
    schema = torch.library.infer_schema(signature, mutates_args=())
    if dispatch:
        def body(*args):
            return call(name, *args)
        if reference is not None:
            _registry.register_kernel(name, "reference", reference)
    else:
        body = reference
    op = torch.library.custom_op(f"burstkern::{name}", body, mutates_args=(), schema=schema)
    op.register_fake(fake)
    if backward is not None:
        def _setup(ctx, inputs, output):
            if dispatch:
                device, dtype = first_float(inputs)
                ctx.burstkern_backend = _registry.resolve(name, device, dtype)[0]
            if setup_context is not None:
                setup_context(ctx, inputs, output)

        def _backward(ctx, *grads):
            chosen = getattr(ctx, "burstkern_backend", None)
            if chosen is None:
                return backward(ctx, *grads)
            with _registry._using(chosen):
                return backward(ctx, *grads)

        op.register_autograd(_backward, setup_context=_setup)
    return Op(name, op, autocast)
