"""One call per kernel and dtype, at small shapes with tails everywhere, for compute-sanitizer memcheck
(stage 3 of ``bash python/gpu_run.sh --quick``):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 python/gpu_sanitize.py

(without the caching allocator every tensor is its own allocation, so a read or write past a tensor's end is
outside any allocation and memcheck sees it). Prints one line per call as it goes, so a run cut off at its time
limit still shows how far it got, then ``calls=N failed=M``. ``--list`` prints the calls without running them
(the dry run counts them); ``--backends native,triton`` picks the fused backends (default both).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import torch

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = {"fp32": FP32, "fp16": FP16, "bf16": BF16}
SD, SMIN = 0.5, 0.002
DEV = "cuda"


def native_name() -> str:
    for mod in ("burstkern.registry", "burstkern.backend"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if "native" in getattr(m, "BACKENDS", ()):
            return "native"
    return "cuda"


def _r(shape, dtype, scale=1.0):
    return (torch.randn(shape, device=DEV) * scale).to(dtype)


def _grad(fn, inputs):
    """Forward, then backward into every floating input (the backward kernels run too)."""
    inputs = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    out.backward(torch.randn_like(out))
    return out


def calls():
    """name -> callable(dtype) for every kernel family; each callable runs forward (and backward where there is one)."""
    from burstkern import ops

    def dcn(dt, deterministic=False):
        n, cin, cout, h, w, og = 1, 5, 3, 4, 3, 5
        x, off = _r((n, cin, h, w), dt), _r((n, 2 * og * 9, h, w), dt, 3.0)
        wt, b, m = _r((cout, cin, 3, 3), dt, 0.3), _r((cout,), dt), torch.rand(n, og * 9, h, w, device=DEV).to(dt)
        prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        try:
            _grad(lambda *a: ops.deform_conv2d(a[0], a[1], a[2], a[3], padding=1, mask=a[4]), [x, off, wt, b, m])
        finally:
            torch.use_deterministic_algorithms(prev)

    def dcn_strided(dt):  # groups, dilation, stride, a 3x2 kernel, no mask
        x, off = _r((2, 8, 7, 6), dt), _r((2, 2 * 2 * 6, 3, 5), dt, 2.0)
        wt = _r((6, 4, 3, 2), dt, 0.3)
        _grad(lambda a, o, w: ops.deform_conv2d(a, o, w, None, stride=(2, 1), padding=(1, 0), dilation=(2, 1)),
              [x, off, wt])

    def sft_mod(dt):
        x = _r((2, 64, 5, 7), dt)
        _grad(lambda x, g, b: ops.sft_modulate(x, g, b, act="silu"), [x, _r((2, 64, 5, 7), dt), _r((2, 64, 5, 7), dt)])
        _grad(lambda x, g: ops.sft_modulate(x, g, act="leaky_relu(0.2)"), [x, _r((2, 128, 1, 1), dt)])

    def sft_gn(dt):
        x = _r((2, 64, 5, 7), dt)
        _grad(lambda x, g: ops.sft_group_norm(x, g, None, 32, act="silu"), [x, _r((2, 128, 5, 7), dt)])
        w, b = torch.rand(64, device=DEV).to(dt) + 0.5, _r((64,), dt)
        _grad(lambda x, g, w, b: ops.sft_group_norm(x, g, None, 32, w, b, act="relu"),
              [x.contiguous(memory_format=torch.channels_last), _r((2, 128, 1, 1), dt), w, b])

    def denoise(dt):
        shape = (3, 3, 7, 5)
        x, F, y, eps = (_r(shape, dt) for _ in range(4))
        s = torch.exp(torch.empty(3, device=DEV).uniform_(-3, 2))
        sn = s * 0.5
        _grad(lambda x, F: ops.denoise_combine(x, F, s, return_d=True), [x, F])
        ops.edm_euler_update(x, F, s, sn)
        ops.edm_heun_update(x, F, y, eps, s, sn)
        ops.add_noise(x, s, sigma_base=sn)
        ops.add_noise(x, s, noise=eps)
        _grad(lambda x, F: ops.cm_update(x, F, s, clamp=1.0), [x, F])
        ops.cm_update(x, F, s, sigma_next=sn, clamp=1.0)
        _grad(lambda x, F, y: ops.edm_loss(x, F, y, s), [x, F, y])
        if dt == FP32:
            sg = s.clone().requires_grad_(True)
            sum(c.sum() for c in ops.edm_scalings(sg)).backward()
            ops.cm_scalings(s)

    return {
        "deform_conv2d": dcn,
        "deform_conv2d_deterministic": lambda dt: dcn(dt, deterministic=True),
        "deform_conv2d_strided": dcn_strided,
        "sft_modulate": sft_mod,
        "sft_group_norm": sft_gn,
        "denoise": denoise,
    }


FAMILIES = ["deform_conv2d", "deform_conv2d_deterministic", "deform_conv2d_strided", "sft_modulate",
            "sft_group_norm", "denoise"]


def plan(backends):
    return [(b, fam, dt) for b in backends for fam in FAMILIES for dt in DTYPES]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="native,triton")
    ap.add_argument("--list", action="store_true", help="print the calls, run nothing")
    ap.add_argument("--device", default="cuda", help="cpu: a self-check of this script (reference / Triton "
                    "interpreter), no sanitizer")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    todo = plan(backends)
    if args.list:
        for b, fam, dt in todo:
            print(f"{b} {fam} {dt}")
        print(f"calls={len(todo)}")
        return 0
    global DEV
    DEV = args.device
    import burstkern
    from burstkern.ops import _common

    if hasattr(_common, "set_poison_outputs"):
        _common.set_poison_outputs(True)
    torch.manual_seed(0)
    fns = calls()
    failed = 0
    t0 = time.time()
    for b, fam, dt in todo:
        name = native_name() if b == "native" else b
        t = time.time()
        try:
            with burstkern.backend(name):
                fns[fam](DTYPES[dt])
            if DEV == "cuda":
                torch.cuda.synchronize()
            status = "ok"
        except Exception as exc:  # an unavailable backend or a CUDA error: recorded, the next call still runs
            failed += 1
            status = f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        print(f"call {b} {fam} {dt}: {status} ({time.time() - t:.1f}s)", flush=True)
    print(f"calls={len(todo)} failed={failed} seconds={time.time() - t0:.0f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
