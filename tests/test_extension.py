"""The compiled extension: optional at import, loaded when built, its trivial kernel runs on a GPU."""

import pytest
import torch

import burstkern
from burstkern import _extension
from utils import requires_cuda


def test_import_never_requires_the_extension():
    # burstkern imported above whatever the state of _C; the state is recorded, not raised
    err = _extension.cuda_extension_error()
    assert err is None or isinstance(err, str)


def test_build_record_matches_the_loaded_state():
    info = _extension.build_info()
    if _extension.cuda_extension_error() is None and info:
        assert info.get("built") is True
        assert info.get("torch") == torch.__version__, "extension built for another torch: rebuild"


@pytest.mark.skipif(_extension.cuda_extension_error() is not None, reason="burstkern._C not built")
def test_extension_registers_its_ops():
    flags = torch.ops.burstkern_C.build_flags()
    st = _extension.state()
    assert st.flags == flags and ("testing=1" in flags) == hasattr(torch.ops.burstkern_C, "poison_")
    for op in ("deform_conv2d", "sft_group_norm", "denoise_combine", "edm_heun_update"):
        assert hasattr(torch.ops.burstkern_C, op), op
    if st.testing:  # the test op poison_ has CUDA kernels only
        with pytest.raises((RuntimeError, NotImplementedError), match="poison_"):
            torch.ops.burstkern_C.poison_(torch.zeros(3))


@requires_cuda
@pytest.mark.skipif(not _extension.has_ops("poison_"), reason="needs a BURSTKERN_TESTING=1 build of burstkern._C")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_trivial_kernel_runs_on_the_gpu(dtype):
    for n in (1, 1000, 3 * 2 ** 20 + 7):
        t = torch.zeros(n, device="cuda", dtype=dtype)
        torch.ops.burstkern_C.poison_(t)
        torch.cuda.synchronize()
        assert torch.isnan(t).all()
