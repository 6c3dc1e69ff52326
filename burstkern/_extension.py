"""Loading the compiled extension (``burstkern._C``) and Triton, remembering why either is missing.

A missing ``_C`` is not an error at import: the reference and Triton backends still work, and asking for
the ``cuda`` backend then raises with the reason recorded here.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

_C = None
_cuda_error: Optional[str] = None

try:
    from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)
except ImportError as exc:  # not built, or built against another torch
    _cuda_error = f"import failed: {exc}"


def cuda_extension_error() -> Optional[str]:
    """None when ``burstkern._C`` is loaded, else why it is not."""
    return _cuda_error


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
