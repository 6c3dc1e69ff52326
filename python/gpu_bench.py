"""Headline GPU benchmarks (stage 4 of ``bash python/gpu_run.sh --quick``): one case per op family at the shapes the
issues set bars on, with their peers measured side by side in this process, plus the one-step E-BSRD ``paper``
pipeline per backend, eager and replayed from a CUDA graph.

    python3 python/gpu_bench.py --out bench.json [--time-limit S] [-k SUBSTRING] [--list]

Timing: ``triton.testing.do_bench`` (device events, median, warm-up first), argument sets rotated so one pass over
them exceeds twice the L2 cache, fresh random data (never zeros). Floors: the minimum bytes of one call at the
copy bandwidth measured here, and its FLOPs at the bf16 matrix rate measured here (the larger of the two).
The JSON is rewritten after every case, so a run cut off at its limit keeps every finished case; a case that
raises is recorded with its error (a failure is a result, not a gap). Independent of benchmarks/ (the full
suites there run under ``--full``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

K = 3
FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
DT = {FP32: "fp32", FP16: "fp16", BF16: "bf16"}


def native_name() -> str:
    for mod in ("burstkern.registry", "burstkern.backend"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if "native" in getattr(m, "BACKENDS", ()):
            return "native"
    return "cuda"


def _es(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------------------------
# cases: (id, group, provider, setup) where setup() -> (fn, make_args, nbytes, flops)
# ----------------------------------------------------------------------------------------------
class Case:
    def __init__(self, family, group, provider, setup, nbytes=None, flops=None, heavy_compile=False):
        self.family, self.group, self.provider, self.setup = family, group, provider, setup
        self.nbytes, self.flops, self.heavy_compile = nbytes, flops, heavy_compile

    @property
    def id(self) -> str:
        return f"{self.group} [{self.provider}]"


def _with(name: str, fn: Callable) -> Callable:
    import burstkern

    def run(*a):
        with burstkern.backend(native_name() if name == "native" else name):
            return fn(*a)
    return run


def _fwd_bwd(fn, grad_idx):
    def run(*args):
        args = list(args)
        for i in grad_idx:
            args[i] = args[i].detach().requires_grad_()
        out = fn(*args)
        out.backward(torch.ones_like(out))
        return out
    return run


# --- deform_conv2d: N8 C64 96² og8 (the bar shape), its og1 twin, Burstormer's layer --------------------
DCN_SHAPES = {"N8 C64 96x96 og8": (8, 64, 96, 1, 1, 8), "N8 C64 96x96 og1": (8, 64, 96, 1, 1, 1),
              "N14 C48 48x48 g8 d2 og8": (14, 48, 48, 8, 2, 8)}


def _dcn_args(shape, dtype):
    n, c, hw, groups, dil, og = shape

    def make():
        x = torch.randn(n, c, hw, hw, device="cuda", dtype=dtype)
        off = (torch.randn(n, 2 * og * K * K, hw, hw, device="cuda") * 2).to(dtype)
        w = (torch.randn(c, c // groups, K, K, device="cuda") * (c // groups * K * K) ** -0.5).to(dtype)
        b = torch.randn(c, device="cuda", dtype=dtype)
        m = torch.rand(n, og * K * K, hw, hw, device="cuda").to(dtype)
        return x, off, w, b, m
    return make


def _dcn_cost(shape, dtype, mode):
    n, c, hw, groups, dil, og = shape
    es = _es(dtype)
    x, off, m = n * c * hw * hw, n * 2 * og * K * K * hw * hw, n * og * K * K * hw * hw
    w = c * c // groups * K * K
    flops = 2 * n * c * hw * hw * (c // groups) * K * K
    fwd = (x + off + m + w + x) * es
    if mode == "fwd":
        return fwd, flops
    return fwd + (x + x + off + m + w + x + off + m + w) * es, 3 * flops


def _dcn_case(label, dtype, mode, provider):
    shape = DCN_SHAPES[label]
    n, c, hw, groups, dil, og = shape

    def setup():
        if provider in ("native", "triton"):
            from burstkern.ops import deform_conv2d
            fn = _with(provider, lambda x, o, w, b, m: deform_conv2d(x, o, w, b, padding=dil, dilation=dil, mask=m))
            grads = (0, 1, 2, 3, 4)
        elif provider == "torchvision":
            import torchvision.ops
            fn = lambda x, o, w, b, m: torchvision.ops.deform_conv2d(x, o, w, b, padding=dil, dilation=dil, mask=m)  # noqa: E731
            grads = (0, 1, 2, 3, 4)
        else:  # cudnn: the dense conv of the same shape, the speed a deformable conv could approach
            fn = lambda x, o, w, b, m: F.conv2d(x, w, b, 1, dil, dil, groups)  # noqa: E731
            grads = (0, 2, 3)
        if mode == "fwd+bwd":
            fn = _fwd_bwd(fn, grads)
        return fn, _dcn_args(shape, dtype)

    nbytes, flops = _dcn_cost(shape, dtype, mode)
    return Case("deform_conv2d", f"deform_conv2d {label} {DT[dtype]} {mode}", provider, setup, nbytes, flops)


def dcn_cases():
    out = []
    main = "N8 C64 96x96 og8"
    for dtype, mode, providers in [
        (FP16, "fwd", ["native", "triton", "torchvision", "cudnn"]),
        (FP16, "fwd+bwd", ["native", "triton", "torchvision", "cudnn"]),
        (BF16, "fwd", ["native", "triton", "cudnn"]),  # torchvision has no bf16 kernel
        (FP32, "fwd", ["native", "triton", "torchvision", "cudnn"]),
    ]:
        out += [_dcn_case(main, dtype, mode, p) for p in providers]
    for label in ("N8 C64 96x96 og1", "N14 C48 48x48 g8 d2 og8"):
        out += [_dcn_case(label, FP16, "fwd", p) for p in ("native", "triton", "torchvision")]
    return out


# --- sft_group_norm (SPADE GroupNorm32 + SiLU, merged spatial gamma|beta): the two bar shapes --------------------
def _sft_eager(x, gb):
    c = x.shape[1]
    h = F.group_norm(x.float(), 32, None, None, 1e-5)
    return F.silu(h * (1 + gb[:, :c].float()) + gb[:, c:].float()).to(x.dtype)


@functools.lru_cache(maxsize=None)
def _sft_compiled():
    return torch.compile(_sft_eager)


def _sft_case(n, c, hw, dtype, mode, provider):
    def make():
        return (torch.randn(n, c, hw, hw, device="cuda", dtype=dtype),
                torch.randn(n, 2 * c, hw, hw, device="cuda", dtype=dtype) * 0.5)

    def setup():
        if provider in ("native", "triton"):
            from burstkern.ops import sft_group_norm
            fn = _with(provider, lambda x, gb: sft_group_norm(x, gb, None, 32, act="silu"))
        elif provider == "compile":
            fn = _sft_compiled()
        else:
            fn = _sft_eager
        return (_fwd_bwd(fn, (0, 1)) if mode == "fwd+bwd" else fn), make

    x = n * c * hw * hw
    nbytes = (x + 2 * x + x) * _es(dtype)
    if mode == "fwd+bwd":
        nbytes += (2 * x + 2 * x + x + 2 * x) * _es(dtype)
    return Case("sft", f"sft_group_norm spade N{n} C{c} {hw}x{hw} {DT[dtype]} {mode}", provider, setup, nbytes,
                heavy_compile=provider == "compile")


def sft_cases():
    out = [_sft_case(4, 128, 192, BF16, "fwd", p) for p in ("native", "triton", "eager", "compile")]
    out += [_sft_case(4, 128, 192, BF16, "fwd+bwd", p) for p in ("native", "triton", "eager")]
    out += [_sft_case(1, 64, 384, FP32, "fwd", p) for p in ("native", "triton", "eager", "compile")]
    return out


# --- denoise: the Heun update and the consistency update with in-kernel noise; a 40-step Heun loop --------------
def _den_case(name, shape, dtype, provider):
    from burstkern.ops.denoise import reference as R

    n = shape[0]
    eager = {
        "edm_heun_update": lambda xh, d, xn, Fn, sh, sn: R.edm_heun_update(xh, d, xn, Fn, sh, sn, 0.5),
        "cm_update": lambda x, Fo, s, sn: R.cm_update(x, Fo, s, 0.002, 0.5, sn, 1.0, torch.randn_like(x), None),
    }[name]
    n_img = 4 if name == "edm_heun_update" else 2

    def make():
        imgs = [torch.randn(shape, device="cuda", dtype=dtype) for _ in range(n_img)]
        s = torch.exp(torch.empty(n, device="cuda").uniform_(-3.0, 2.0))
        return (*imgs, s, s * 0.5)

    def setup():
        from burstkern import ops
        if provider in ("native", "triton"):
            fused = {"edm_heun_update": lambda xh, d, xn, Fn, sh, sn: ops.edm_heun_update(xh, d, xn, Fn, sh, sn),
                     "cm_update": lambda x, Fo, s, sn: ops.cm_update(x, Fo, s, sigma_next=sn, clamp=1.0)}[name]
            return _with(provider, fused), make
        if provider == "compile":
            return torch.compile(eager), make
        return eager, make

    numel = 1
    for s in shape:
        numel *= s
    rw = 5 if name == "edm_heun_update" else 3
    return Case("denoise", f"{name} {'x'.join(map(str, shape))} {DT[dtype]}", provider, setup,
                rw * numel * _es(dtype), heavy_compile=provider == "compile")


def _graph(fn, static_args):
    """Capture fn(*static_args); the returned callable replays (its inputs are the static buffers)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn(*static_args)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(*static_args)
    return lambda *a: g.replay()


def _heun_loop_case(provider):
    shape = (1, 3, 384, 384)
    backend, graphed = provider.split("+")[0], provider.endswith("+graph")

    def setup():
        from burstkern.models.samplers import edm_heun_sampler

        def loop(x):
            return edm_heun_sampler(lambda x_in, c: x_in * 0.5, x, num_steps=40, sigma_min=1e-8, sigma_max=0.03,
                                    start="early")
        fn = _with(backend, loop)
        make = lambda: (torch.randn(shape, device="cuda"),)  # noqa: E731
        if graphed:
            static = make()
            return _graph(fn, static), lambda: ()
        return fn, make
    return Case("denoise", "heun40 loop 1x3x384x384 fp32 (trivial denoiser)", provider, setup)


def denoise_cases():
    out = [_den_case("edm_heun_update", (16, 3, 384, 384), BF16, p) for p in ("native", "triton", "eager", "compile")]
    out += [_den_case("cm_update", (16, 3, 384, 384), BF16, p) for p in ("native", "triton", "eager", "compile")]
    out += [_heun_loop_case(p) for p in ("reference", "native", "triton", "native+graph", "triton+graph")]
    return out


# --- E-BSRD paper one step: burst 1x8x4x48x48 -> 3x384x384 ----------------------------------------------------
_MODELS = {}


def _model(dtype):
    if dtype not in _MODELS:
        from burstkern.models import EBSRD

        torch.manual_seed(0)
        model = EBSRD("paper").eval()
        with torch.no_grad():  # zero-initialised output layers would make the U-Net a constant
            for p in model.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.02)
        _MODELS[dtype] = model.to("cuda", dtype)
    return _MODELS[dtype]


def _ebsrd_case(dtype, provider):
    backend, graphed = provider.split("+")[0], provider.endswith("+graph")

    def setup():
        model = _model(dtype)
        make = lambda: (torch.rand(1, 8, 4, 48, 48, device="cuda", dtype=dtype),)  # noqa: E731
        fn = torch.no_grad()(_with(backend, lambda b: model.one_step(b)))
        if graphed:
            static = make()
            with torch.no_grad():
                return _graph(fn, static), lambda: ()
        return fn, make
    return Case("ebsrd", f"ebsrd one-step paper 384 {DT[dtype]}", provider, setup)


def ebsrd_cases():
    return [_ebsrd_case(dt, p) for dt in (FP32, BF16)
            for p in ("reference", "triton", "native", "reference+graph", "triton+graph", "native+graph")]


def all_cases():
    return dcn_cases() + sft_cases() + denoise_cases() + ebsrd_cases()


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def l2_bytes() -> int:
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    return 0


def ceilings() -> dict:
    import triton.testing

    n = 1 << 28
    src = torch.rand(n, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median")
    copy = 2 * n * 4 / (ms * 1e-3)
    del src, dst
    m = 8192
    a = torch.randn(m, m, device="cuda", dtype=BF16)
    b = torch.randn(m, m, device="cuda", dtype=BF16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=10, rep=50, return_mode="median")
    mm = 2 * m ** 3 / (ms * 1e-3)
    del a, b
    torch.cuda.empty_cache()
    return {"copy_GBps": copy / 1e9, "bf16_mm_TFLOPs": mm / 1e12}


def measure(case: Case, ceil: dict) -> dict:
    import triton.testing

    rec = {"id": case.id, "family": case.family, "group": case.group, "provider": case.provider}
    t0 = time.time()
    fn, make = case.setup()
    sets, total = [], 0
    while len(sets) < 8 and (not sets or total < 2 * l2_bytes()):
        args = tuple(make())
        sets.append(args)
        total += _nbytes(args) or 2 * l2_bytes()  # graph replays take no arguments
    i = [0]

    def run():
        i[0] = (i[0] + 1) % len(sets)
        return fn(*sets[i[0]])

    for _ in range(2):  # compilation, autotuning, allocator
        run()
    torch.cuda.synchronize()
    rec["setup_s"] = round(time.time() - t0, 2)
    ms = triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")
    rec["median_ms"] = ms
    floor = 0.0
    if case.nbytes:
        rec["GBps"] = case.nbytes / (ms * 1e-3) / 1e9
        rec["pct_copy_bw"] = 100 * rec["GBps"] / ceil["copy_GBps"]
        floor = max(floor, case.nbytes / (ceil["copy_GBps"] * 1e9) * 1e3)
    if case.flops:
        rec["TFLOPs"] = case.flops / (ms * 1e-3) / 1e12
        floor = max(floor, case.flops / (ceil["bf16_mm_TFLOPs"] * 1e12) * 1e3)
    if floor:
        rec["floor_ms"] = floor
        rec["x_floor"] = ms / floor
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


def _write(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_bench.json")
    ap.add_argument("--time-limit", type=float, default=None, help="start no case after this many seconds")
    ap.add_argument("-k", default=None, help="only cases whose id contains this substring")
    ap.add_argument("--list", action="store_true", help="print the case ids (tab, family, heavy_compile), run nothing")
    args = ap.parse_args(argv)
    cases = [c for c in all_cases() if args.k is None or args.k in c.id]
    if args.list:
        for c in cases:
            print(f"{c.id}\t{c.family}\t{int(c.heavy_compile)}")
        return 0
    t_start = time.time()
    import burstkern  # noqa: F401
    import triton

    doc = {"tool": "python/gpu_bench.py", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                       "triton": triton.__version__, "L2_MB": l2_bytes() / 2 ** 20,
                       "sm_count": torch.cuda.get_device_properties(0).multi_processor_count},
           "results": [], "not_run": []}
    ceil = ceilings()
    doc["ceilings"] = ceil
    print(f"ceilings: copy {ceil['copy_GBps']:.0f} GB/s, bf16 matrix {ceil['bf16_mm_TFLOPs']:.0f} TFLOP/s", flush=True)
    _write(args.out, doc)
    failed = 0
    for n, case in enumerate(cases):
        if args.time_limit is not None and time.time() - t_start > args.time_limit:
            doc["not_run"] = [c.id for c in cases[n:]]
            print(f"time limit: {len(cases) - n} cases not run", flush=True)
            break
        try:
            rec = measure(case, ceil)
            line = f"{rec['median_ms']:.4f} ms" + (f", {rec['x_floor']:.2f}x floor" if "x_floor" in rec else "")
        except Exception as exc:  # recorded as a failure: never dropped
            failed += 1
            rec = {"id": case.id, "family": case.family, "group": case.group, "provider": case.provider,
                   "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            line = "FAILED " + rec["error"]
            try:
                torch.cuda.synchronize()
            except Exception:  # a sticky CUDA error: the next cases fail too, and are recorded so
                pass
        doc["results"].append(rec)
        _write(args.out, doc)
        print(f"bench {case.id}: {line}", flush=True)
        try:
            torch.cuda.empty_cache()
        except Exception:
            pass
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write(args.out, doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
