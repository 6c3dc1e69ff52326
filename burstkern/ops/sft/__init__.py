"""SFT feature modulation: ``sft_modulate`` (SFTGAN) and ``sft_group_norm`` (SPADE / GroupNorm scale-shift)."""

from ... import _extension
from .op import sft_group_norm, sft_modulate

if _extension.triton_error() is None:
    from . import triton as _triton  # noqa: F401  (registers the Triton kernels)
if _extension.has_ops("sft_modulate", "sft_group_norm"):
    from . import native as _native  # noqa: F401  (registers the compiled kernels)

__all__ = ["sft_modulate", "sft_group_norm"]
