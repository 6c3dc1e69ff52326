"""NVTX ranges in a ``burstkern`` domain around every op call and model stage.

Off by default; ``BURSTKERN_NVTX=1`` (or :func:`enable`) turns them on. When off, :func:`nvtx_range`
returns one shared null context, so the cost per op call is a global lookup and a branch.
Uses the ``nvtx`` package when installed (real domains), else ``torch.cuda.nvtx`` (ranges named
``burstkern:<name>``, since that API has no domains).
"""

from __future__ import annotations

import contextlib
import os

DOMAIN = "burstkern"
_NULL = contextlib.nullcontext()
_enabled = os.environ.get("BURSTKERN_NVTX", "0") == "1"
_nvtx = None


def enable(on: bool = True) -> None:
    """Turn NVTX ranges on or off for the whole process."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def _nvtx_module():
    global _nvtx
    if _nvtx is None:
        try:
            import nvtx  # type: ignore

            _nvtx = nvtx
        except ImportError:
            _nvtx = False
    return _nvtx


@contextlib.contextmanager
def _torch_range(name: str):
    import torch

    if not torch.cuda.is_available():  # torch.cuda.nvtx needs a CUDA build and a device
        yield
        return
    torch.cuda.nvtx.range_push(f"{DOMAIN}:{name}")
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


def nvtx_range(name: str):
    """A context manager: an NVTX range ``name`` in the burstkern domain, or nothing when disabled."""
    if not _enabled:
        return _NULL
    mod = _nvtx_module()
    if mod:
        return mod.annotate(name, domain=DOMAIN)
    return _torch_range(name)
