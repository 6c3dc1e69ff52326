"""SFT feature modulation: ``sft_modulate`` (SFTGAN) and ``sft_group_norm`` (SPADE / GroupNorm scale-shift)."""

from ..._extension import triton_error
from .op import sft_group_norm, sft_modulate

if triton_error() is None:
    from . import triton as _triton  # noqa: F401  (registers the Triton kernels)
from ... import _extension as _ext  # noqa: E402
if _ext.cuda_extension_error() is None and hasattr(_ext.torch.ops.burstkern_C, "sft_modulate"):
    from . import cuda as _cuda  # noqa: F401  (registers the compiled CUDA kernels)

__all__ = ["sft_modulate", "sft_group_norm"]
