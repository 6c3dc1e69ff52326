"""burstkern: fused CUDA C++ / Triton kernels for burst super-resolution with one-step diffusion."""

from . import _extension, profiling
from .backend import BackendUnavailableError, backend, get_backend, set_backend
from . import ops
from . import nn
from .patching import patch

__version__ = "0.1.0"

__all__ = ["ops", "nn", "patch", "profiling", "backend", "set_backend", "get_backend", "BackendUnavailableError",
           "__version__"]
