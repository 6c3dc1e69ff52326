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


@pytest.fixture
def native_on_cpu(poisoned_outputs):
    """The native backend takes CPU tensors for the test even in a build whose CPU path is not the fast one (the
    kernels then run the CPU build of the burstkern_C ops), with outputs poisoned."""
    from burstkern import registry

    with registry.testing.available("native", "cpu", "the CPU build of the burstkern_C ops (tests)"):
        yield


@pytest.fixture
def simt_emulation(request):
    """The CPU build of the burstkern_C ops runs the CUDA kernels themselves (csrc/<op>/*kernels.cuh, compiled by
    the C++ compiler) on the SIMT emulation of csrc/common/simt_emu.h instead of its loops: tiling, shared memory,
    barriers, shuffles, tensor-core tile products and atomics are exercised without a GPU. Threads of a block run
    in order; tests that want the reverse order (a missing barrier then changes the result) set mode 2 themselves.
    Fails the test if no kernel ran under the emulation while it was on, unless the test expects none."""
    B = torch.ops.burstkern_C
    if not hasattr(B, "set_simt_emulation"):
        pytest.skip("the SIMT emulation is test machinery: build burstkern._C with BURSTKERN_TESTING=1")
    before = B.simt_emulation_stats()[0]
    prev = B.set_simt_emulation(1)
    yield
    B.set_simt_emulation(prev)
    if "no_kernel_launch" not in request.keywords:
        assert B.simt_emulation_stats()[0] > before, "no CUDA kernel ran under the SIMT emulation"
