"""Backend registry: which implementation of each op runs, and why.

Every op in ``burstkern.ops`` resolves its kernel here on each call, from

1. the innermost ``with burstkern.backend(name):`` block (per thread), else
2. the last ``burstkern.set_backend(name)``, else
3. the ``BURSTKERN_BACKEND`` environment variable, else
4. ``"auto"``.

``auto`` picks ``cuda`` when the compiled extension is loaded and the tensors are on a GPU, else
``triton`` on a GPU, else ``reference``. An explicitly named backend that cannot run the call is an
error that says why and how to fix it; ``auto`` falling back on a GPU warns once per op and reason.

Kernels plug in per op and per backend with :func:`register_kernel`; models never name a backend.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

BACKENDS = ("cuda", "triton", "reference")
CHOICES = ("auto",) + BACKENDS

_kernels: Dict[str, Dict[str, Callable]] = {}
_global_choice: Optional[str] = None
_local = threading.local()
_warned: set = set()
_resolve_cache: Dict[tuple, Tuple[str, Callable]] = {}

BUILD_HINT = (
    "build it with `pip install -e . --no-build-isolation` on a machine with nvcc and a CUDA build of "
    "torch (set CUDA_HOME to the toolkit root, e.g. /usr/local/cuda); `burstkern info` shows the state"
)


class BackendUnavailableError(RuntimeError):
    """Raised when an explicitly requested backend cannot run a call."""


def _validate(name: str, source: str) -> str:
    if not isinstance(name, str) or name.lower() not in CHOICES:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {', '.join(CHOICES)}")
    return name.lower()


# ----------------------------------------------------------------------------------------------
# choosing
# ----------------------------------------------------------------------------------------------
def set_backend(name: str) -> None:
    """Set the process-wide backend: ``"auto"``, ``"cuda"``, ``"triton"`` or ``"reference"``."""
    global _global_choice
    _global_choice = _validate(name, "set_backend(name)")


def get_backend() -> str:
    """The backend choice in force for this thread (may be ``"auto"``)."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    if _global_choice is not None:
        return _global_choice
    env = os.environ.get("BURSTKERN_BACKEND")
    if env:
        return _validate(env, "environment variable BURSTKERN_BACKEND")
    return "auto"


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Run the block with ``name`` as the backend of every burstkern op called in this thread.

    Example::

        with burstkern.backend("reference"):
            ref = model(burst)
    """
    name = _validate(name, "backend(name)")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()


# ----------------------------------------------------------------------------------------------
# registering
# ----------------------------------------------------------------------------------------------
def register_kernel(op: str, backend_name: str, fn: Optional[Callable] = None):
    """Register ``fn`` as ``backend_name``'s kernel for ``op`` (usable as a decorator)."""
    if backend_name not in BACKENDS:
        raise ValueError(f"register_kernel: backend must be one of {BACKENDS}, got {backend_name!r}")

    def deco(f: Callable) -> Callable:
        _kernels.setdefault(op, {})[backend_name] = f
        _resolve_cache.clear()
        return f

    return deco if fn is None else deco(fn)


def registered_ops() -> list:
    return sorted(_kernels)


def has_kernel(op: str, backend_name: str) -> bool:
    return backend_name in _kernels.get(op, {})


# ----------------------------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------------------------
def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_error() -> Optional[str]:
    from . import _extension

    return _extension.triton_error()


def backend_available(backend_name: str, device_type: str, op: Optional[str] = None) -> Tuple[bool, str]:
    """Whether ``backend_name`` can run ``op`` on tensors of ``device_type``, and if not, why."""
    from . import _extension

    if op is not None and not has_kernel(op, backend_name):
        return False, f"no {backend_name} kernel is registered for {op} yet"
    if backend_name == "reference":
        return True, "plain PyTorch, any device"
    if backend_name == "triton":
        err = _triton_error()
        if err is not None:
            return False, err
        if device_type == "cuda":
            if not torch.cuda.is_available():
                return False, "no CUDA GPU is visible to torch"
            return True, "Triton on the GPU"
        if device_type == "cpu" and triton_interpreting():
            return True, "Triton interpreter on the CPU (TRITON_INTERPRET=1)"
        return False, (f"Triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; "
                       f"got {device_type} tensors")
    if backend_name == "cuda":
        err = _extension.cuda_extension_error()
        if err is not None:
            return False, f"burstkern._C is not available ({err}); {BUILD_HINT}"
        if device_type != "cuda":
            return False, f"the cuda backend runs CUDA tensors; got {device_type} tensors"
        return True, "compiled CUDA C++ kernels"
    raise ValueError(f"unknown backend {backend_name!r}")


def _warn_once(key, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def resolve(op: str, device: torch.device) -> Tuple[str, Callable]:
    """The (backend name, kernel) that runs ``op`` for tensors on ``device`` now."""
    choice = get_backend()
    dtype = device.type
    key = (op, choice, dtype, triton_interpreting())
    hit = _resolve_cache.get(key)
    if hit is not None:
        return hit
    if op not in _kernels:
        raise RuntimeError(f"burstkern: op {op!r} has no registered kernels")
    if choice == "auto":
        candidates = ("cuda", "triton", "reference") if dtype == "cuda" else ("reference",)
        reasons = []
        for name in candidates:
            ok, why = backend_available(name, dtype, op)
            if ok:
                # only reachable on a GPU: say once per op why it is not the fastest path (an op
                # that simply has no CUDA kernel yet is not worth a warning when Triton runs it)
                if reasons and (name == "reference" or not reasons[0].startswith("cuda: no cuda kernel")):
                    _warn_once((op, name), f"burstkern: {op} on {dtype} uses the {name} backend: "
                               + "; ".join(reasons))
                hit = (name, _kernels[op][name])
                break
            reasons.append(f"{name}: {why}")
    else:
        ok, why = backend_available(choice, dtype, op)
        if not ok:
            raise BackendUnavailableError(f"burstkern: backend {choice!r} cannot run {op}: {why}")
        hit = (choice, _kernels[op][choice])
    _resolve_cache[key] = hit
    return hit


def availability_table(device_type: Optional[str] = None) -> Dict[str, Dict[str, Tuple[bool, str]]]:
    """``{op: {backend: (available, reason)}}`` for ``device_type`` (GPU if present, else CPU)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return {op: {b: backend_available(b, device_type, op) for b in BACKENDS} for op in registered_ops()}
