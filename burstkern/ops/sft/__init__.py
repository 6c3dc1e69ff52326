"""SFT feature modulation: ``sft_modulate`` (SFTGAN) and ``sft_group_norm`` (SPADE / GroupNorm scale-shift)."""

from ..._extension import triton_error
from .op import sft_group_norm, sft_modulate

if triton_error() is None:
    from . import triton as _triton  # noqa: F401  (registers the Triton kernels)

__all__ = ["sft_modulate", "sft_group_norm"]
