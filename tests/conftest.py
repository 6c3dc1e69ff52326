"""Test session setup.

Without a GPU, Triton kernels run on the CPU through Triton's interpreter, so the triton backend's parity
tests run in CI too. TRITON_INTERPRET must be set before any @triton.jit function is defined, hence here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture
def poisoned_outputs():
    """Every buffer a fused launcher allocates for its outputs starts as NaN for the test's duration, so an
    element a kernel never writes fails the comparison instead of passing on stale memory."""
    from burstkern.ops import _common

    prev = _common.set_poison_outputs(True)
    yield
    _common.set_poison_outputs(prev)
