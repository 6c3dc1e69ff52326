"""The deform_conv2d kernels once each, for Nsight Compute (the ``ncu`` unit of ``python/gpu_run.sh --full``):

    ncu --clock-control none --kernel-name regex:deform_conv --csv --page details --log-file ncu.csv \\
        python3 python/gpu_ncu.py

Forward and backward at the issue's bar shape (N8 C64 96x96, og 8, K 3), fp16 / bf16 / fp32, on the native and
triton backends: one launch of each kernel per configuration (Triton compiles on the first call, outside any
kernel, so no warm-up is needed: ncu replays each launch itself).
"""

from __future__ import annotations

import importlib
import sys

import torch


def native_name() -> str:
    for mod in ("burstkern.registry", "burstkern.backend"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if "native" in getattr(m, "BACKENDS", ()):
            return "native"
    return "cuda"


def main() -> int:
    import burstkern
    from burstkern.ops import deform_conv2d

    n, c, hw, og, k = 8, 64, 96, 8, 3
    failed = 0
    for backend in (native_name(), "triton"):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            x = torch.randn(n, c, hw, hw, device="cuda", dtype=dtype, requires_grad=True)
            off = (torch.randn(n, 2 * og * k * k, hw, hw, device="cuda") * 2).to(dtype).requires_grad_()
            w = (torch.randn(c, c, k, k, device="cuda") * (c * k * k) ** -0.5).to(dtype).requires_grad_()
            b = torch.randn(c, device="cuda", dtype=dtype, requires_grad=True)
            m = torch.rand(n, og * k * k, hw, hw, device="cuda").to(dtype).requires_grad_()
            try:
                with burstkern.backend(backend):
                    out = deform_conv2d(x, off, w, b, padding=1, mask=m)
                    out.backward(torch.randn_like(out))
                torch.cuda.synchronize()
                print(f"ncu config {backend} {dtype}: ok", flush=True)
            except Exception as exc:
                failed += 1
                print(f"ncu config {backend} {dtype}: FAILED {type(exc).__name__}: {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
