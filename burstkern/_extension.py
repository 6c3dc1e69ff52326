"""Loading the compiled library (``burstkern._C``) and Triton, remembering why either is missing.

A missing ``_C`` is not an error at import: the reference (and, on a GPU, Triton) backends still work, and asking
for the ``native`` backend then raises with the reason recorded here (:func:`state`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Optional

import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

_C = None
_cuda_error: Optional[str] = None


def _load() -> Optional[str]:
    global _C
    try:
        spec = importlib.util.find_spec("burstkern._C")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "not built: this install has no compiled burstkern._C"
    try:
        _C = importlib.import_module("burstkern._C")  # importing runs the TORCH_LIBRARY registrations
    except (ImportError, OSError) as exc:  # built against another torch, or a broken file
        return f"it failed to load ({type(exc).__name__}: {exc}); rebuild it for torch {torch.__version__}"
    return None


_cuda_error = _load()


@dataclass(frozen=True)
class ExtensionState:
    """What the loaded ``burstkern._C`` carries: its flags come from the library itself (``build_flags``)."""

    loaded: bool
    error: Optional[str]
    cuda: bool = False          # CUDA kernels compiled in
    cpu_kernels: bool = False   # the real C++ CPU kernels of every op family
    cpu_ops: frozenset = frozenset()  # the op families whose CPU kernels are the real ones ("deform_conv", ...)
    testing: bool = False       # test machinery (SIMT emulation, poisoning, test ops) compiled in
    cpu_path: str = ""          # the vector path the CPU kernels run ("avx512", "avx2", "default")
    cpu_gemm: str = ""          # the library of the CPU kernels' fp32 block GEMMs ("onednn", "aten")
    flags: str = ""


def _parse_flags(text: str) -> dict:
    out = {}
    for item in text.split():
        k, _, v = item.partition("=")
        out[k] = v
    return out


@functools.lru_cache(maxsize=None)
def _state_of_loaded() -> ExtensionState:
    ops = torch.ops.burstkern_C
    if hasattr(ops, "build_flags"):
        text = str(ops.build_flags())
        f = _parse_flags(text)
        fams = frozenset(x for x in f.get("cpu_ops", "").split(",") if x and x != "none")
        return ExtensionState(True, None, cuda=f.get("cuda") == "1", cpu_kernels=f.get("cpu_kernels") == "1",
                              cpu_ops=fams, testing=f.get("testing") == "1", cpu_path=f.get("cpu_vec", ""),
                              cpu_gemm=f.get("cpu_gemm", ""), flags=text)
    # an older build without build_flags: CUDA kernels and the GPU-order CPU test loops only
    info = build_info()
    return ExtensionState(True, None, cuda=bool(info.get("built")), cpu_kernels=False,
                          testing=hasattr(ops, "set_simt_emulation"), flags="")


def state() -> ExtensionState:
    if _cuda_error is not None:
        return ExtensionState(False, _cuda_error)
    return _state_of_loaded()


def cuda_extension_error() -> Optional[str]:
    """None when ``burstkern._C`` is loaded, else why it is not."""
    return _cuda_error


def has_ops(*names: str) -> bool:
    """Whether the loaded ``burstkern._C`` defines every ``burstkern_C::<name>`` op."""
    return _cuda_error is None and all(hasattr(torch.ops.burstkern_C, n) for n in names)


@functools.lru_cache(maxsize=None)
def triton_error() -> Optional[str]:
    """None when Triton imports, else why it does not."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"Triton is not importable ({type(exc).__name__}: {exc}); install it with `pip install triton`"
    return None


def build_info() -> dict:
    """What the extension was built for (written by setup.py at build time), or {}."""
    try:
        from . import _build_info
    except ImportError:
        return {}
    return dict(_build_info.BUILD_INFO)
