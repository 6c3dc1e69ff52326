"""Backend registry: which kernel runs each op call, and why.

Every op in ``burstkern.ops`` resolves its kernel here on each call, from the backend choice in force:

1. the innermost active ``with burstkern.backend(name):`` block of this context, else
2. the last ``burstkern.set_backend(name)``, else
3. the ``BURSTKERN_BACKEND`` environment variable (validated when burstkern is imported), else
4. ``"auto"``.

Backends: ``native`` (the compiled library ``burstkern._C``: C++ kernels for CPU tensors, CUDA kernels for CUDA
tensors, as torchvision registers both under one op), ``triton`` (GPU; CPU only under ``TRITON_INTERPRET=1``, for
tests) and ``reference`` (plain PyTorch, the spec, any device). ``cuda`` is an alias of ``native`` that refuses
CPU tensors. ``auto`` takes, per call, the first of native -> triton (GPU only) -> reference whose kernel supports the call
(device, dtype); it warns once per (op, device, reason) when it has to pass over a compiled backend that is missing.
A named backend that cannot run a call raises :class:`BackendUnavailableError`, whose ``reason`` says why.

Choices are context-local (``contextvars``): asyncio tasks and threads each see their own, a block in a suspended
generator or coroutine is not seen by its caller (an entry counts only while the frame that opened it is
executing), and blocks may be exited in any order (each removes its own entry). The backend that ran a forward is
recorded in the autograd context and runs its backward (``burstkern.ops._define``), on whatever thread and in
whatever block ``.backward()`` is called.

float64 policy (every op family alike): a kernel declares the dtypes it computes; float64 computes in float64
where declared (reference, native CPU), and ``auto`` passes over kernels that do not declare it (the CUDA and
Triton kernels: fp32/fp16/bf16); naming such a backend for a float64 call raises with reason ``DTYPE``.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, Iterator, Optional, Tuple

import torch

BACKENDS = ("native", "triton", "reference")
ALIASES = {"cuda": "native"}
CHOICES = ("auto",) + BACKENDS + tuple(ALIASES)
AUTO_ORDER = BACKENDS

ALL_FLOATS: FrozenSet[torch.dtype] = frozenset((torch.float32, torch.float16, torch.bfloat16, torch.float64))
GPU_FLOATS: FrozenSet[torch.dtype] = frozenset((torch.float32, torch.float16, torch.bfloat16))

BUILD_COMMAND = "pip install -e . --no-build-isolation"
BUILD_HINT = (f"build it with `{BUILD_COMMAND}` (a C++ compiler and torch installed first; for the CUDA kernels "
              "also nvcc with CUDA_HOME set to the toolkit root, e.g. /usr/local/cuda); `burstkern info` shows the state")


class Reason(str, enum.Enum):
    """Why a backend cannot run a call (``BackendUnavailableError.reason``, ``burstkern info``)."""

    NOT_BUILT = "not built"                       # burstkern._C missing or failed to load
    NO_CUDA_BUILD = "built without CUDA"          # _C loaded, but without its CUDA kernels
    NO_DEVICE = "no device"                       # no CUDA GPU visible
    WRONG_DEVICE = "device not supported"         # e.g. Triton on CPU tensors, the cuda alias on CPU tensors
    NO_TRITON = "Triton missing"
    DTYPE = "dtype not supported"
    NO_KERNEL = "no kernel for this op"


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run a call; when not, a reason code, a sentence and how to fix it."""

    ok: bool
    reason: Optional[Reason] = None
    detail: str = ""
    hint: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __iter__(self):  # ``ok, why = backend_available(...)``
        return iter((self.ok, self.message))

    @property
    def message(self) -> str:
        return self.detail + (f"; {self.hint}" if self.hint else "")


OK = Availability(True)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run a call; ``.reason`` is a :class:`Reason`."""

    def __init__(self, message: str, reason: Optional[Reason] = None):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Supports:
    """What a kernel takes: for each device type it runs, the dtypes (of the call's first floating tensor)."""

    dtypes: Tuple[Tuple[str, FrozenSet[torch.dtype]], ...] = (("cpu", ALL_FLOATS), ("cuda", ALL_FLOATS))
    # devices this build has no kernel for, and why (reason NOT_BUILT): e.g. a family's CPU kernels missing
    missing: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def of(cls, **by_device: Iterable[torch.dtype]) -> "Supports":
        """``Supports.of(cpu=ALL_FLOATS, cuda=GPU_FLOATS)``."""
        return cls(tuple((dev, frozenset(dts)) for dev, dts in by_device.items()))

    def check(self, backend: str, op: str, device_type: str, dtype: Optional[torch.dtype]) -> Availability:
        why = dict(self.missing).get(device_type)
        if why is not None:
            return Availability(False, Reason.NOT_BUILT, why, BUILD_HINT)
        table = dict(self.dtypes)
        if device_type not in table:
            return Availability(False, Reason.WRONG_DEVICE,
                                f"the {backend} kernel of {op} runs {'/'.join(sorted(table))} tensors, got "
                                f"{device_type} tensors")
        if dtype is not None and dtype not in table[device_type]:
            names = ", ".join(sorted(str(d).replace("torch.", "") for d in table[device_type]))
            return Availability(False, Reason.DTYPE,
                                f"the {backend} kernel of {op} takes {names} on {device_type}, got {dtype}",
                                "the reference backend runs every float dtype")
        return OK


@dataclass
class Kernel:
    fn: Callable
    supports: Supports = field(default_factory=Supports)


_kernels: Dict[str, Dict[str, Kernel]] = {}
_resolve_cache: Dict[tuple, Tuple[str, Callable]] = {}
_warned: set = set()
_global_choice: Optional[str] = None
# the active blocks of this context, innermost last: (name, frame that opened it, unique token)
_blocks: contextvars.ContextVar[tuple] = contextvars.ContextVar("burstkern_backend_blocks", default=())


def _validate(name, source: str) -> str:
    if not isinstance(name, str) or name.lower() not in CHOICES:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {', '.join(CHOICES)}")
    return name.lower()


def _env_choice() -> Optional[str]:
    env = os.environ.get("BURSTKERN_BACKEND")
    return _validate(env, "environment variable BURSTKERN_BACKEND") if env else None


def validate_environment() -> None:
    """Raise one clear ``ValueError`` for an unknown ``BURSTKERN_BACKEND`` (called when burstkern is imported)."""
    _env_choice()


# ----------------------------------------------------------------------------------------------
# choosing
# ----------------------------------------------------------------------------------------------
def set_backend(name: str) -> None:
    """Set the process-wide backend: ``"auto"``, ``"native"`` (alias ``"cuda"``: GPU only), ``"triton"`` or
    ``"reference"``. ``with backend(...)`` blocks take precedence."""
    global _global_choice
    _global_choice = _validate(name, "set_backend(name)")


def _innermost(blocks: tuple) -> Optional[str]:
    """The choice of the block whose frame is nearest on this thread's call stack (the latest of that frame's
    blocks); blocks of frames not executing now (a suspended generator or coroutine, another thread) do not count."""
    by_frame: Dict[int, str] = {}
    for name, frame, _ in blocks:
        by_frame[id(frame)] = name  # later (inner) blocks of one frame win
    f = sys._getframe(2)
    while f is not None:
        hit = by_frame.get(id(f))
        if hit is not None:
            return hit
        f = f.f_back
    return None


def get_backend() -> str:
    """The backend choice in force here (may be ``"auto"``)."""
    blocks = _blocks.get()
    if blocks:
        name = _innermost(blocks)
        if name is not None:
            return name
    if _global_choice is not None:
        return _global_choice
    return _env_choice() or "auto"


class backend(contextlib.ContextDecorator):
    """``with burstkern.backend(name):`` runs every burstkern op called in the block on ``name``.

    Context-local: other threads and asyncio tasks keep their own choice, and a block inside a generator or
    coroutine applies only while that generator or coroutine runs.

    Example::

        with burstkern.backend("reference"):
            ref = model(burst)
    """

    def __init__(self, name: str):
        self.name = _validate(name, "backend(name)")
        self._entries = []

    def __enter__(self) -> str:
        entry = (self.name, sys._getframe(1), object())
        self._entries.append(entry)
        _blocks.set(_blocks.get() + (entry,))
        return self.name

    def __exit__(self, *exc) -> bool:
        entry = self._entries.pop()
        blocks = _blocks.get()
        # remove this block's own entry, wherever it is: blocks may be exited out of order (generators)
        _blocks.set(tuple(b for b in blocks if b[2] is not entry[2]))
        return False


@contextlib.contextmanager
def _using(name: str) -> Iterator[None]:
    """Internal: run a backward on the backend its forward ran on (no validation; frames as ``backend``)."""
    entry = (name, sys._getframe(2), object())
    _blocks.set(_blocks.get() + (entry,))
    try:
        yield
    finally:
        _blocks.set(tuple(b for b in _blocks.get() if b[2] is not entry[2]))


# ----------------------------------------------------------------------------------------------
# registering
# ----------------------------------------------------------------------------------------------
def register_kernel(op: str, backend_name: str, fn: Optional[Callable] = None, *,
                    supports: Optional[Supports] = None):
    """Register ``fn`` as ``backend_name``'s kernel for ``op`` (usable as a decorator).

    ``supports`` (default: every float dtype on CPU and CUDA) says which calls it takes; ``auto`` passes over a
    kernel that does not support a call, and a named backend raises with the reason.
    """
    backend_name = ALIASES.get(backend_name, backend_name)
    if backend_name not in BACKENDS:
        raise ValueError(f"register_kernel: backend must be one of {BACKENDS}, got {backend_name!r}")
    supports = supports or Supports()

    def deco(f: Callable) -> Callable:
        _kernels.setdefault(op, {})[backend_name] = Kernel(f, supports)
        _resolve_cache.clear()
        return f

    return deco if fn is None else deco(fn)


def registered_ops() -> list:
    return sorted(_kernels)


def has_kernel(op: str, backend_name: str) -> bool:
    return ALIASES.get(backend_name, backend_name) in _kernels.get(op, {})


def kernel(op: str, backend_name: str) -> Callable:
    """The function registered as ``backend_name``'s kernel for ``op`` (KeyError if none)."""
    return _kernels[op][ALIASES.get(backend_name, backend_name)].fn


# ----------------------------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------------------------
def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_availability_override: Dict[Tuple[str, str], Availability] = {}


def _backend_state(name: str, device_type: str) -> Availability:
    """Whether backend ``name`` (aliases allowed) can run anything on ``device_type`` tensors here."""
    from . import _extension

    hit = _availability_override.get((name, device_type))
    if hit is not None:
        return hit
    if name == "reference":
        return OK
    if name == "triton":
        err = _extension.triton_error()
        if err is not None:
            return Availability(False, Reason.NO_TRITON, err)
        if device_type == "cuda":
            if not torch.cuda.is_available():
                return Availability(False, Reason.NO_DEVICE, "no CUDA GPU is visible to torch")
            return OK
        if device_type == "cpu" and triton_interpreting():
            return OK
        return Availability(False, Reason.WRONG_DEVICE,
                            f"Triton kernels run CUDA tensors (or CPU tensors under TRITON_INTERPRET=1, for tests); "
                            f"got {device_type} tensors", "use the native or reference backend on the CPU")
    if name in ("native", "cuda"):
        ext = _extension.state()
        if not ext.loaded:
            return Availability(False, Reason.NOT_BUILT, f"burstkern._C is not available ({ext.error})", BUILD_HINT)
        if name == "cuda" and device_type != "cuda":
            return Availability(False, Reason.WRONG_DEVICE,
                                f"the cuda backend runs CUDA tensors, got {device_type} tensors",
                                "use backend 'native' for the compiled CPU kernels")
        if device_type == "cuda":
            if not ext.cuda:
                return Availability(False, Reason.NO_CUDA_BUILD, "burstkern._C was built without its CUDA kernels",
                                    f"rebuild with nvcc available: {BUILD_HINT}")
            if not torch.cuda.is_available():
                return Availability(False, Reason.NO_DEVICE, "no CUDA GPU is visible to torch")
            return OK
        if device_type == "cpu":
            if not ext.cpu_ops:
                return Availability(False, Reason.NOT_BUILT, "this burstkern._C has no CPU kernels", BUILD_HINT)
            return OK  # per op family: the kernels' Supports (ops._common.native_supports)
        return Availability(False, Reason.WRONG_DEVICE, f"burstkern._C has no kernels for {device_type} tensors")
    raise ValueError(f"unknown backend {name!r}")


def backend_available(backend_name: str, device_type: str, op: Optional[str] = None,
                      dtype: Optional[torch.dtype] = None) -> Availability:
    """Whether ``backend_name`` can run ``op`` on ``device_type`` tensors of ``dtype``; unpacks as ``(ok, why)``."""
    state = _backend_state(backend_name, device_type)
    if not state.ok or op is None:
        return state
    canonical = ALIASES.get(backend_name, backend_name)
    k = _kernels.get(op, {}).get(canonical)
    if k is None:
        return Availability(False, Reason.NO_KERNEL, f"no {backend_name} kernel is registered for {op}")
    return k.supports.check(backend_name, op, device_type, dtype)


def _warn_once(key, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=5)


# reasons that say the user's install could be faster, worth one warning when auto passes over a backend
_WORTH_A_WARNING = (Reason.NOT_BUILT, Reason.NO_CUDA_BUILD, Reason.NO_TRITON)


def resolve(op: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> Tuple[str, Callable]:
    """The (backend name, kernel) that runs ``op`` for ``dtype`` tensors on ``device`` now."""
    choice = get_backend()
    dev = device.type
    key = (op, choice, dev, dtype, triton_interpreting())
    hit = _resolve_cache.get(key)
    if hit is not None:
        return hit
    if op not in _kernels:
        raise RuntimeError(f"burstkern: op {op!r} has no registered kernels")
    if choice == "auto":
        passed = []
        for name in AUTO_ORDER:
            if name == "triton" and dev != "cuda":
                continue  # Triton on CPU tensors is its interpreter: test machinery, never auto's choice
            av = backend_available(name, dev, op, dtype)
            if av.ok:
                hit = (name, _kernels[op][name].fn)
                break
            passed.append((name, av))
        else:  # the reference takes everything; only a broken registration gets here
            raise BackendUnavailableError(f"burstkern: no backend can run {op} on {dev} tensors of {dtype}: "
                                          + "; ".join(f"{n}: {a.message}" for n, a in passed))
        for name, av in passed:
            if av.reason in _WORTH_A_WARNING and (dev == "cuda" or name == "native"):
                _warn_once((dev, av.reason), f"burstkern: {dev} ops use the {hit[0]} backend because {name} is "
                                             f"unavailable: {av.message} (this warning is shown once)")
                break
    else:
        av = backend_available(choice, dev, op, dtype)
        if not av.ok:
            raise BackendUnavailableError(f"burstkern: backend {choice!r} cannot run {op}: {av.message}", av.reason)
        hit = (ALIASES.get(choice, choice), _kernels[op][ALIASES.get(choice, choice)].fn)
    _resolve_cache[key] = hit
    return hit


def availability_table(device_type: Optional[str] = None,
                       dtype: Optional[torch.dtype] = torch.float32) -> Dict[str, Dict[str, Availability]]:
    """``{op: {backend: Availability}}`` for ``device_type`` (GPU if present, else CPU) tensors of ``dtype``."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return {op: {b: backend_available(b, device_type, op, dtype) for b in BACKENDS} for op in registered_ops()
            if not op.startswith("_")}


# ----------------------------------------------------------------------------------------------
# test support (public, so tests need no private names)
# ----------------------------------------------------------------------------------------------
class testing:
    """Helpers for tests of kernels and of the registry itself."""

    @staticmethod
    @contextlib.contextmanager
    def available(backend_name: str, device_type: str, why: str = "forced available (tests)") -> Iterator[None]:
        """Treat ``backend_name`` as available on ``device_type`` inside the block (kernel predicates still apply),
        e.g. to compile Triton kernels for a GPU on a machine without one."""
        key = (backend_name, device_type)
        prev = _availability_override.get(key)
        _availability_override[key] = Availability(True, detail=why)
        _resolve_cache.clear()
        try:
            yield
        finally:
            if prev is None:
                _availability_override.pop(key, None)
            else:
                _availability_override[key] = prev
            _resolve_cache.clear()

    @staticmethod
    @contextlib.contextmanager
    def temporary_kernels(op: str, kernels: Dict[str, Callable], supports: Optional[Dict[str, Supports]] = None
                          ) -> Iterator[str]:
        """Register throw-away kernels ``{backend: fn}`` for ``op`` inside the block; removed afterwards."""
        for name, fn in kernels.items():
            register_kernel(op, name, fn, supports=(supports or {}).get(name))
        try:
            yield op
        finally:
            _kernels.pop(op, None)
            _resolve_cache.clear()

    @staticmethod
    @contextlib.contextmanager
    def process_choice(name: Optional[str]) -> Iterator[None]:
        """Set (or, with None, clear) the process-wide choice inside the block, restoring it afterwards."""
        global _global_choice
        saved = _global_choice
        _global_choice = None if name is None else _validate(name, "process_choice")
        try:
            yield
        finally:
            _global_choice = saved

    @staticmethod
    @contextlib.contextmanager
    def spy(op: str) -> Iterator[list]:
        """Record, in a list the block gets, the backend name of every kernel of ``op`` that runs in the block."""
        calls: list = []
        saved = dict(_kernels[op])

        def recording(name, k):
            def fn(*args):
                calls.append(name)
                return k.fn(*args)
            return Kernel(fn, k.supports)

        _kernels[op] = {name: recording(name, k) for name, k in saved.items()}
        _resolve_cache.clear()
        try:
            yield calls
        finally:
            _kernels[op] = saved
            _resolve_cache.clear()

    @staticmethod
    def reset_warnings() -> None:
        _warned.clear()
