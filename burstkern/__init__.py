"""burstkern: fused C++ / CUDA / Triton kernels for burst super-resolution with one-step diffusion."""

from . import registry

registry.validate_environment()  # an unknown BURSTKERN_BACKEND is one clear error here, not at the first op

from . import _extension, profiling  # noqa: E402
from .registry import BackendUnavailableError, Reason, backend, get_backend, set_backend  # noqa: E402
from . import ops  # noqa: E402
from .ops._common import ArgumentError, ArgumentTypeError  # noqa: E402
from . import nn  # noqa: E402
from .patching import patch  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ops", "nn", "patch", "profiling", "registry", "backend", "set_backend", "get_backend",
           "BackendUnavailableError", "Reason", "ArgumentError", "ArgumentTypeError", "__version__"]
