"""Static checks of the compiled CUDA kernels in burstkern._C, readable without a GPU (cuobjdump on the fatbin):
the tile products of deform_conv2d run on the tensor cores for half/bfloat16 and in exact fp32 for float, and no
kernel spills registers to local memory or asks for more static shared memory than a block may have."""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache

import pytest

from burstkern import _extension
from utils import find_cuobjdump, parse_res_usage


def _library():
    import burstkern._C as C  # noqa: N812

    return C.__file__


if _extension.cuda_extension_error() is not None:
    pytest.skip(f"burstkern._C is not built ({_extension.cuda_extension_error()})", allow_module_level=True)
CUOBJDUMP = find_cuobjdump()
if CUOBJDUMP is None:
    pytest.skip("no cuobjdump (CUDA toolkit or Triton's NVIDIA backend)", allow_module_level=True)


def _run(*args):
    out = subprocess.run([CUOBJDUMP, *args, _library()], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and "does not contain device code" in out.stderr + out.stdout:
        pytest.skip("burstkern._C was built without device code (CPU-only build)")
    assert out.returncode == 0, out.stderr
    return out.stdout


@lru_cache(maxsize=None)
def resources():
    """{mangled kernel name: {"REG": n, "STACK": n, "SHARED": n, "LOCAL": n}} over every arch in the fatbin."""
    kernels = parse_res_usage(_run("-res-usage"))
    assert kernels, "cuobjdump listed no kernels"
    return kernels


@lru_cache(maxsize=None)
def sass_by_kernel():
    text = _run("-sass")
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def _named(table, *parts):
    hits = {k: v for k, v in table.items() if all(p in k for p in parts)}
    assert hits, f"no kernel whose name contains {parts}"
    return hits


def test_every_op_family_has_kernels():
    names = " ".join(resources())
    for kernel in ("deform_conv2d_fwd_kernel", "deform_conv2d_bwd_kernel", "deform_conv2d_bwd_weight_kernel",
                   "tile_kernel", "each_kernel", "elementwise_kernel", "group_reduce_kernel", "poison_kernel"):
        assert kernel in names, kernel


def test_no_register_spills_and_shared_memory_fits():
    for name, r in resources().items():
        assert r["LOCAL"] == 0, f"{name} uses {r['LOCAL']} bytes of local memory per thread"
        # a small frame is the libdevice slow path of sinf/cosf (Payne-Hanek argument reduction), not a spill
        assert r["STACK"] <= 64, f"{name} has a {r['STACK']}-byte stack frame (register spills?)"
        assert r["SHARED"] <= 48 * 1024, f"{name} declares {r['SHARED']} bytes of static shared memory"


@pytest.mark.parametrize("kernel", ["deform_conv2d_fwd_kernel", "deform_conv2d_bwd_kernel",
                                    "deform_conv2d_bwd_weight_kernel"])
def test_deform_conv_tile_products_on_tensor_cores(kernel):
    sass = sass_by_kernel()
    for dtype in ("Half", "BFloat16"):
        for name, code in _named(sass, kernel + "I", dtype).items():
            assert re.search(r"\bHMMA\.", code), f"{name}: no tensor-core instruction"
    for name, code in _named(sass, kernel + "If").items():  # float: exact fp32 FMAs, no TF32
        assert not re.search(r"\bHMMA\.", code), f"{name} uses the tensor cores (TF32) for float32"
        assert re.search(r"\bFFMA\b", code), f"{name}: no fp32 FMA"
