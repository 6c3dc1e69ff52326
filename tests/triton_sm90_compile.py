"""Compiles every Triton kernel of burstkern for sm_90 (through ptxas to a cubin) on a machine without a GPU, with
the launch configurations the GPU path uses, and prints one JSON line per compiled specialization.

The Triton interpreter (how the parity tests run the kernels without a GPU) executes kernels with numpy and never
lowers them, so it cannot see what only the compiler rejects or does badly: a type or shape tl.dot refuses, a
block too large for shared memory, register spills. Here a compile-only driver stands in for the CUDA one: each
launch is compiled (`warmup`) and not run, so outputs are garbage and only the compilation is checked. Run as a
separate process (tests/test_triton_compile.py), because tests/conftest.py turns the interpreter on.

    python tests/triton_sm90_compile.py [deform_conv] [sft] [denoise] > kernels.jsonl
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402
from utils import find_cuobjdump, parse_res_usage  # noqa: E402  (tests/, the script's folder)

TARGET = GPUTarget("cuda", 90, 32)


class CompileOnlyDriver:
    """What JITFunction.run asks of the active driver, for a launch that only compiles."""

    def get_current_target(self):
        return TARGET

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def resources(cubin: bytes) -> dict:
    """REG / STACK / SHARED / LOCAL of the kernel in a cubin, read by cuobjdump (no GPU, no driver)."""
    tool = find_cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    (usage,) = parse_res_usage(out).values()
    return usage


RECORDS = []


def install():
    driver.set_active(CompileOnlyDriver())
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        t0 = time.perf_counter()
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        ptx = kernel.asm["ptx"]
        RECORDS.append({
            "kernel": self.fn.__name__,
            "signature": {k: str(v) for k, v in kernel.src.signature.items()} if hasattr(kernel, "src") else {},
            "constexprs": {str(k): repr(v) for k, v in getattr(kernel.src, "constants", {}).items()}
            if hasattr(kernel, "src") else {},
            "seconds": round(time.perf_counter() - t0, 2),
            "num_warps": kernel.metadata.num_warps,
            "num_stages": kernel.metadata.num_stages,
            "shared": kernel.metadata.shared,
            "mma": bool(re.search(r"\b(wgmma|mma)\.", ptx)),
            "cubin_bytes": len(kernel.asm["cubin"]),
            **{k.lower(): v for k, v in resources(kernel.asm["cubin"]).items()},
        })
        return kernel

    JITFunction.run = compile_only

    # the GPU launch configuration (tile sizes, split counts), not the interpreter's
    dct = importlib.import_module("burstkern.ops.deform_conv.triton")
    blocks, splits = dct._blocks, dct._weight_splits
    dct._blocks = lambda cin_g, cout_g, on_gpu, *dtype: blocks(cin_g, cout_g, True, *dtype)
    dct._weight_splits = lambda m_total, tiles, bm, on_gpu: splits(m_total, tiles, bm, True)


def _fmt(t, layout):
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" and t.dim() == 4 else t


def _leaf(*shape, dtype, layout="contiguous", scale=1.0):
    return _fmt(scale * torch.randn(*shape), layout).to(dtype).requires_grad_()


def backward(out, *inputs):
    ins = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    torch.autograd.grad(out, ins, torch.ones_like(out), allow_unused=True)


def deform_conv(dtype, layout):
    import burstkern

    for cin, cout, groups, og, mask, bias in [(64, 64, 1, 8, True, True), (12, 8, 2, 3, False, False)]:
        x = _leaf(2, cin, 24, 24, dtype=dtype, layout=layout)
        off = _leaf(2, 2 * og * 9, 24, 24, dtype=dtype, layout=layout)
        m = _leaf(2, og * 9, 24, 24, dtype=dtype, layout=layout) if mask else None
        w = _leaf(cout, cin // groups, 3, 3, dtype=dtype)
        b = _leaf(cout, dtype=dtype) if bias else None
        y = burstkern.ops.deform_conv2d(x, off, w, b, padding=1, mask=m)
        backward(y, x, off, w, b, m)


def sft(dtype, layout):
    import burstkern

    x = _leaf(2, 64, 24, 24, dtype=dtype, layout=layout)
    for i, form in enumerate(("spatial", "channel", "merged")):
        c2 = 128 if form == "merged" else 64
        hw = 1 if form == "channel" else 24
        gamma = _leaf(2, c2, hw, hw, dtype=dtype, layout=layout)
        beta = None if form == "merged" else _leaf(2, 64, hw, hw, dtype=dtype, layout=layout)
        # every activation with every form over the dtypes, not the whole product (compile time)
        for act in ((None, "silu", "leaky_relu")[i], "silu"):
            backward(burstkern.ops.sft_modulate(x, gamma, beta, act=act), x, gamma, beta)
            w, b = _leaf(64, dtype=dtype), _leaf(64, dtype=dtype)
            backward(burstkern.ops.sft_group_norm(x, gamma, beta, 32, w, b, act=act), x, gamma, beta, w, b)


def denoise(dtype, layout):
    import burstkern

    o = burstkern.ops
    shape = (2, 3, 40, 41)
    x, F, y = (_leaf(*shape, dtype=dtype, layout=layout) for _ in range(3))
    s = (torch.rand(2) + 0.5).requires_grad_()
    s2 = torch.rand(2) + 0.1
    g = torch.Generator().manual_seed(0)
    for mode in ("edm", "cm"):
        D, d = o.denoise_combine(x, F, s, mode=mode, return_d=True)
        backward(D + d, x, F, s)
    xe, de = o.edm_euler_update(x.detach(), F.detach(), s.detach(), s2)
    o.edm_heun_update(x.detach(), de, xe, F.detach(), s.detach(), s2)
    o.add_noise(x.detach(), s2, generator=g)
    o.add_noise(x.detach(), s2, s.detach(), noise=torch.randn(shape).to(dtype))
    backward(o.cm_update(x, F, s, sigma_next=s2, clamp=1.0, generator=g), x, F)
    backward(o.edm_loss(x, F, y, s).sum(), x, F)
    o.edm_scalings(s.detach())
    importlib.import_module("burstkern.ops.denoise.triton").randn(torch.tensor([3]), shape, "cpu")


def main(argv):
    import burstkern

    families = [f for f in (deform_conv, sft, denoise) if not argv or f.__name__ in argv]
    install()
    with burstkern.registry.testing.available("triton", "cpu", "compile-only"), burstkern.backend("triton"):
        for family in families:
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                for layout in ("contiguous", "channels_last"):
                    family(dtype, layout)
    seen = set()
    for r in RECORDS:
        key = (r["kernel"], json.dumps(r["signature"], sort_keys=True), json.dumps(r["constexprs"], sort_keys=True))
        if key not in seen:
            seen.add(key)
            print(json.dumps(r, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
