"""Test session setup.

Without a GPU, Triton kernels run on the CPU through Triton's interpreter, so the triton backend's parity
tests run in CI too. TRITON_INTERPRET must be set before any @triton.jit function is defined, hence here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
