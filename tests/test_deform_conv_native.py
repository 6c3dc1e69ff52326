"""The native CPU deform_conv2d kernels (csrc/deform_conv/deform_conv_cpu_kernels*), and the reference's own fixes.

Kernels are pinned to the fp64 reference (burstkern/ops/deform_conv/reference.py) in every dtype and layout, forward
and every gradient; NaN / inf offsets to torchvision; determinism across thread counts bitwise; memory bounded.
They are called through ``torch.ops.burstkern_C`` when the loaded burstkern._C carries them (its build_flags list
deform_conv in cpu_ops), else through a private JIT build of the same sources (tests/native_dev.py); the vector
paths other than the one this CPU picks run in a subprocess with BURSTKERN_CPU_PATH set.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from burstkern.ops.deform_conv import reference as R

torch.manual_seed(0)
HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------------------------------
# the kernels under test
class _Native:
    def __init__(self):
        self.how = None
        self.reason = None
        self.fwd = self.bwd = None
        self.path = None
        if os.environ.get("BURSTKERN_TEST_DEV_BUILD") != "1":
            try:
                from burstkern import _extension as E

                st = E.state()
                if st.loaded and "deform_conv" in E._parse_flags(st.flags).get("cpu_ops", "").split(","):
                    ops = torch.ops.burstkern_C
                    self.fwd, self.bwd, self.how = ops.deform_conv2d, ops.deform_conv2d_backward, "burstkern_C"
                    self.path = E._parse_flags(st.flags).get("cpu_vec")
                    return
            except Exception as exc:  # noqa: BLE001
                self.reason = f"burstkern._C: {exc}"
        sys.path.insert(0, os.path.dirname(HERE))
        from tests.native_dev import load

        mod = load("deform_conv", ["deform_conv2d", "deform_conv2d_backward", "cpu_path"])
        if mod is None:
            self.reason = load.reason
            return
        self.fwd, self.bwd, self.how, self.path = mod.deform_conv2d, mod.deform_conv2d_backward, "dev", mod.cpu_path()


_N = None


def native() -> _Native:
    global _N
    if _N is None:
        _N = _Native()
    if _N.fwd is None:
        pytest.skip(f"native deform_conv2d CPU kernels unavailable: {_N.reason}")
    return _N


# ----------------------------------------------------------------------------------------------------------------
# cases
def make(n=2, c=8, h=9, w=11, cout=6, groups=1, og=2, k=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1),
         mask=True, bias=True, dtype=torch.float64, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    kh, kw = k
    ho = (h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (w + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    off = torch.randn(n, 2 * og * kh * kw, ho, wo, generator=g, dtype=torch.float64) * scale
    wt = torch.randn(cout, c // groups, kh, kw, generator=g, dtype=torch.float64) / math.sqrt(c // groups * kh * kw)
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    m = torch.rand(n, og * kh * kw, ho, wo, generator=g, dtype=torch.float64) if mask else None
    gr = torch.randn(n, cout, ho, wo, generator=g, dtype=torch.float64)
    cv = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    ints = (stride[0], stride[1], pad[0], pad[1], dil[0], dil[1])
    return dict(x=cv(x), off=cv(off), w=cv(wt), b=cv(b), m=cv(m), g=cv(gr), ints=ints)


def ref(a):
    up = lambda t: None if t is None else t.double()  # noqa: E731
    y = R.deform_conv2d(up(a["x"]), up(a["off"]), up(a["w"]), up(a["b"]), *a["ints"], up(a["m"]))
    grads = R.deform_conv2d_backward(up(a["g"]), up(a["x"]), up(a["off"]), up(a["w"]), up(a["b"]), *a["ints"],
                                     up(a["m"]))
    return y, grads


def run(a):
    nat = native()
    y = nat.fwd(a["x"], a["off"], a["w"], a["b"], *a["ints"], a["m"])
    grads = nat.bwd(a["g"], a["x"], a["off"], a["w"], a["b"], *a["ints"], a["m"])
    return y, grads


TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
NAMES = ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask")


def relerr(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def check(a, dtype=None):
    dtype = dtype or a["x"].dtype
    y, grads = run(a)
    yr, gref = ref(a)
    assert y.dtype == a["x"].dtype and y.shape == yr.shape
    assert relerr(y, yr) <= TOL[dtype], ("forward", relerr(y, yr))
    for name, gn, gr_, like in zip(NAMES, grads, gref, (a["x"], a["off"], a["w"], a["b"], a["m"])):
        if like is None:
            assert gn.numel() == 0, name
            continue
        assert gn.shape == like.shape and gn.dtype == like.dtype, name
        e = relerr(gn, gr_)
        assert e <= TOL[dtype], (name, e)
    return y, grads


# ----------------------------------------------------------------------------------------------------------------
# numerics against the fp64 reference
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    check(make(dtype=dtype))


@pytest.mark.parametrize("cfg", [
    dict(groups=2, og=4, c=8, cout=6),
    dict(groups=4, og=2, c=8, cout=8),          # offset groups span several weight groups
    dict(groups=3, og=2, c=12, cout=6),         # weight groups straddle an offset group boundary
    dict(groups=1, og=1, c=3, cout=5),
    dict(k=(3, 2), stride=(2, 1), pad=(1, 0), dil=(2, 1)),
    dict(k=(1, 1), pad=(0, 0)),
    dict(k=(5, 5), pad=(2, 2), dil=(1, 1), h=7, w=6),
    dict(stride=(2, 3), pad=(2, 1), dil=(2, 2), h=13, w=12),
    dict(mask=False, bias=False),
    dict(n=1, h=1, w=1, k=(1, 1), pad=(0, 0)),
    dict(n=1, h=5, w=23, c=16, og=1, cout=3),
    dict(n=5, h=4, w=5),                        # more samples than units of work per wave boundary
    dict(n=17, h=3, w=4, c=4, cout=2),          # more than one wave of 16 units
    dict(scale=25.0),                            # large offsets: most points far outside
    dict(scale=1e6),
])
def test_shapes(cfg):
    check(make(**cfg))
    check(make(dtype=torch.float32, **cfg))


@pytest.mark.parametrize("layout", ["channels_last", "strided", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_layouts(layout, dtype):
    a = make(dtype=dtype, n=3, c=8, h=10, w=9, og=2, groups=2)
    if layout == "channels_last":
        for k in ("x", "off", "m", "g"):
            a[k] = a[k].contiguous(memory_format=torch.channels_last)
        a["w"] = a["w"].contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        for k in ("x", "off", "m", "g"):
            t = a[k]
            big = torch.zeros(t.shape[0], t.shape[1] * 2, t.shape[2], t.shape[3] * 2, dtype=t.dtype)
            big[:, ::2, :, ::2] = t
            a[k] = big[:, ::2, :, ::2]
        a["w"] = a["w"].transpose(2, 3).contiguous().transpose(2, 3)
    else:
        a["x"] = a["x"].contiguous(memory_format=torch.channels_last)
        a["off"] = a["off"].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        a["g"] = a["g"].contiguous(memory_format=torch.channels_last)
    y, grads = check(a)
    cl = layout in ("channels_last", "mixed")
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert grads[0].is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert grads[1].is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert grads[2].is_contiguous()


def test_batch_zero():
    a = make(n=0)
    y, grads = run(a)
    assert y.shape == (0, 6, 9, 11)
    assert grads[0].shape == a["x"].shape and grads[1].shape == a["off"].shape and grads[4].shape == a["m"].shape
    assert torch.equal(grads[2], torch.zeros_like(a["w"])) and torch.equal(grads[3], torch.zeros_like(a["b"]))


def test_gradcheck():
    nat = native()
    a = make(n=2, c=4, h=5, w=4, cout=4, og=2, groups=2, scale=1.5)
    ints = a["ints"]

    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, off, w, b, m):
            ctx.save_for_backward(x, off, w, b, m)
            return nat.fwd(x, off, w, b, *ints, m)

        @staticmethod
        def backward(ctx, g):
            x, off, w, b, m = ctx.saved_tensors
            return nat.bwd(g.contiguous(), x, off, w, b, *ints, m)

    args = [a[k].clone().requires_grad_() for k in ("x", "off", "w", "b", "m")]
    assert torch.autograd.gradcheck(F.apply, args, eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# non-finite offsets: torchvision's CPU kernel is the spec (it segfaults on a NaN x-offset, so that case is checked
# against the reference alone)
def _torchvision(a):
    tv = pytest.importorskip("torchvision.ops")
    ts = [a[k].clone().requires_grad_() for k in ("x", "off", "w", "b", "m")]
    y = tv.deform_conv2d(ts[0], ts[1], ts[2], ts[3], stride=a["ints"][0:2], padding=a["ints"][2:4],
                         dilation=a["ints"][4:6], mask=ts[4])
    y.backward(a["g"])
    return y.detach(), (ts[0].grad, ts[1].grad, ts[2].grad, ts[3].grad, ts[4].grad)


def _poke(a, value, channels):
    off = a["off"].clone()
    for i, ch in enumerate(channels):
        off[0, ch, 1 + i % 3, 2 + i] = value
    a["off"] = off
    return a


def _same(x, y, tol):
    x, y = x.double(), y.double()
    assert torch.equal(torch.isnan(x), torch.isnan(y))
    fin = ~torch.isnan(y)
    assert torch.allclose(x[fin], y[fin], rtol=tol, atol=tol)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nonfinite_offsets_vs_torchvision(value, dtype):
    # y-offsets only for NaN (even width: torchvision reads in bounds); both for +-inf
    chans = [0, 4, 20] if math.isnan(value) else [0, 5, 20, 23]
    a = _poke(make(dtype=dtype, n=1, c=4, h=6, w=8, cout=3, og=2), value, chans)
    yt, gt = _torchvision(a)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for impl in (lambda: run(a), lambda: ref(a)):
        y, grads = impl()
        _same(y, yt, tol)
        for gn, gv in zip(grads, gt):
            _same(gn, gv, tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_x_offset_matches_reference(dtype):
    a = _poke(make(dtype=dtype, n=1, c=4, h=6, w=7, cout=3, og=2), math.nan, [1, 23])
    y, grads = run(a)
    yr, gref = ref(a)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    _same(y, yr, tol)
    for gn, gr_ in zip(grads, gref):
        _same(gn, gr_, tol)
    assert torch.isnan(y).any() and not torch.isnan(grads[0]).any()


# reference fixes (issue 11 must-have 3): each failed before the fix
@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_reference_inf_offsets_match_torchvision(value):
    a = _poke(make(n=1, c=4, h=6, w=8, cout=3, og=2), value, [0, 5, 20, 23])
    yt, gt = _torchvision(a)
    y, grads = ref(a)
    assert not torch.isnan(y).any()
    _same(y, yt, 1e-10)
    for gn, gv in zip(grads, gt):
        _same(gn, gv, 1e-10)


def test_reference_nan_offset_no_error():
    a = _poke(make(n=1, c=4, h=6, w=8, cout=3, og=2), math.nan, [0, 20])
    yt, gt = _torchvision(a)
    y, grads = ref(a)  # raised "index out of bounds" before the fix
    _same(y, yt, 1e-10)
    for gn, gv in zip(grads, gt):
        _same(gn, gv, 1e-10)


def test_reference_index_exact_beyond_2_24():
    """H*W > 2**24 in fp32: the flat gather index must not be computed in fp32 (0.62 relative error before)."""
    tv = pytest.importorskip("torchvision.ops")
    h = w = 4100
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, h, w, generator=g)
    off = torch.randn(1, 2, h, w, generator=g) * 0.5
    wt = torch.ones(1, 1, 1, 1)
    y = R.deform_conv2d(x, off, wt, None, 1, 1, 0, 0, 1, 1, None)
    with torch.no_grad():
        yt = tv.deform_conv2d(x, off, wt, None)
    assert relerr(y, yt) < 1e-6


def test_native_index_exact_beyond_2_24():
    nat = native()
    tv = pytest.importorskip("torchvision.ops")
    h = w = 4100
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, h, w, generator=g)
    off = torch.randn(1, 2, h, w, generator=g) * 0.5
    wt = torch.ones(1, 1, 1, 1)
    y = nat.fwd(x, off, wt, None, 1, 1, 0, 0, 1, 1, None)
    with torch.no_grad():
        yt = tv.deform_conv2d(x, off, wt, None)
    assert relerr(y, yt) < 1e-6


# ----------------------------------------------------------------------------------------------------------------
# determinism, threads, memory
def _bitwise_run(threads, a):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run(a)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("n", [1, 2, 3, 9, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_thread_count_bitwise(n, dtype):
    a = make(n=n, c=16, h=24, w=20, cout=16, og=4, dtype=dtype)
    y1, g1 = _bitwise_run(1, a)
    y2, g2 = _bitwise_run(2, a)
    y4, g4 = _bitwise_run(4, a)
    assert torch.equal(y1, y2) and torch.equal(y1, y4)
    for x1, x2, x4 in zip(g1, g2, g4):
        assert torch.equal(x1, x2) and torch.equal(x1, x4)


def test_deterministic_repeat():
    a = make(n=3, c=8, h=16, w=16, cout=8, og=2)
    y1, g1 = run(a)
    torch.use_deterministic_algorithms(True)
    try:
        y2, g2 = run(a)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(y1, y2) and all(torch.equal(p, q) for p, q in zip(g1, g2))


_MEM_SCRIPT = r"""
import resource, sys, torch
sys.path.insert(0, {root!r})
from tests.test_deform_conv_native import native, make
nat = native()
torch.set_num_threads(1)
a = make(n={n}, c=32, h=48, w=48, cout=32, og=4, dtype=torch.float32)
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
nat.fwd(a["x"][:1], a["off"][:1], a["w"], a["b"], *a["ints"], a["m"][:1])
base = peak()
y = nat.fwd(a["x"], a["off"], a["w"], a["b"], *a["ints"], a["m"])
g = nat.bwd(a["g"], a["x"], a["off"], a["w"], a["b"], *a["ints"], a["m"])
print(peak() - base)
"""


def test_memory_bounded():
    """Peak extra memory of forward + backward stays near the size of the outputs themselves: an N*Cin*K*H*W column
    buffer (N=32: 32*32*9*48*48*4 B = 85 MiB) would show."""
    native()
    n = 32
    code = _MEM_SCRIPT.format(root=os.path.dirname(HERE), n=n)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    extra = float(out.stdout.strip().splitlines()[-1])
    io = n * (32 * 48 * 48 * 2 + 2 * 36 * 48 * 48 * 2 + 2 * 18 * 48 * 48) * 4 / 2**20  # y, grad in, offset, mask
    columns = n * 32 * 9 * 48 * 48 * 4 / 2**20
    assert extra < io + 0.25 * columns, (extra, io, columns)


_PATH_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {root!r})
import tests.test_deform_conv_native as T
nat = T.native()
print("PATH", nat.path)
for dtype in (torch.float64, torch.float32, torch.bfloat16):
    for cfg in (dict(), dict(groups=3, og=2, c=12, cout=6), dict(og=1, c=20, cout=4), dict(scale=30.0)):
        T.check(T.make(dtype=dtype, **cfg))
print("OK")
"""


@pytest.mark.parametrize("path", ["default", "avx2", "avx512"])
def test_vector_paths(path):
    nat = native()
    code = _PATH_SCRIPT.format(root=os.path.dirname(HERE))
    env = dict(os.environ, BURSTKERN_CPU_PATH=path, OMP_NUM_THREADS="1")
    if nat.how == "dev":
        env["BURSTKERN_TEST_DEV_BUILD"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = [ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("PATH")]
    if nat.how == "dev" or got[0] not in (None, "None"):
        order = ["default", "avx2", "avx512"]
        if got[0] != path:  # a path this CPU lacks falls back to the best it has
            assert order.index(got[0]) < order.index(path), got
    assert "OK" in out.stdout


_GEMM_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {root!r})
import tests.test_deform_conv_native as T
print("FLAGS", torch.ops.burstkern_C.build_flags() if hasattr(torch.ops, "burstkern_C") and
      hasattr(torch.ops.burstkern_C, "build_flags") else "")
for dtype in (torch.float32, torch.bfloat16):
    for cfg in (dict(), dict(groups=3, og=2, c=12, cout=6), dict(og=1, c=20, cout=4, bias=False)):
        T.check(T.make(dtype=dtype, **cfg))
    a = T.make(dtype=dtype)
    a["x"] = a["x"].contiguous(memory_format=torch.channels_last)  # channels_last output: the other GEMM form
    T.check(a)
print("OK")
"""


@pytest.mark.parametrize("library", ["aten", "onednn"])
def test_gemm_library(library):
    """The block GEMMs (csrc/common/cpu_gemm.h) through oneDNN (default where torch exports it) and through at::mm
    (BURSTKERN_CPU_GEMM=aten) both match the fp64 reference, forward and every gradient; build_flags names the one
    in use."""
    nat = native()
    if nat.how != "burstkern_C":
        pytest.skip("the GEMM library is reported by burstkern._C's build_flags")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("BURSTKERN_CPU_GEMM", None)
    if library == "aten":
        env["BURSTKERN_CPU_GEMM"] = "aten"
    out = subprocess.run([sys.executable, "-c", _GEMM_SCRIPT.format(root=os.path.dirname(HERE))],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    flags = next(ln for ln in out.stdout.splitlines() if ln.startswith("FLAGS")).split()
    has_onednn = torch.backends.mkldnn.is_available()
    want = library if (library == "aten" or has_onednn) else "aten"
    assert f"cpu_gemm={want}" in flags, flags
    assert "OK" in out.stdout


# ----------------------------------------------------------------------------------------------------------------
# through the public op
def test_public_op_native_backend():
    import burstkern

    reg = getattr(burstkern, "registry", None)
    if reg is None or "native" not in getattr(reg, "BACKENDS", ()):
        pytest.skip("burstkern has no 'native' backend yet")
    nat = native()
    if nat.how != "burstkern_C":
        pytest.skip("burstkern._C does not carry the native deform_conv CPU kernels")
    a = make(dtype=torch.float32)
    ts = [a[k].clone().requires_grad_() for k in ("x", "off", "w", "b", "m")]
    with burstkern.backend("native"):
        y = burstkern.ops.deform_conv2d(ts[0], ts[1], ts[2], ts[3], stride=1, padding=1, dilation=1, mask=ts[4])
        y.backward(a["g"])
    yr, gref = ref(a)
    assert relerr(y, yr) < 2e-5
    for t, gr_ in zip(ts, (gref[0], gref[1], gref[2], gref[3], gref[4])):
        assert relerr(t.grad, gr_) < 2e-5
