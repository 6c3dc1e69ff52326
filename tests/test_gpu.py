"""GPU checks: ``pytest -m gpu`` (stage 2 of ``bash python/gpu_run.sh --quick``, the first thing a lent GPU runs).

Every fused kernel (``native``: the compiled csrc/ kernels; ``triton``) against the fp64 reference on the GPU list
of shapes (the alignment, U-Net and image shapes of the E-BSRD pipeline, plus tails), outputs NaN-poisoned so an
element a kernel never writes fails; gradients; CUDA-graph capture and replay; determinism; cases of more than
2^31 elements (int32 index overflow); the E-BSRD pipeline. Public ops only (``burstkern.ops.*`` under ``burstkern.backend(...)``).

Without a GPU every test skips. ``BURSTKERN_GPU_TESTS_ON_CPU=1`` runs this file's logic on the CPU instead, at
shrunk shapes, with the native CPU kernels and the Triton interpreter (the reference where those cannot run): a
self-check of the test code, not a GPU result. Under ``python/gpu_run.sh`` (``BURSTKERN_GPU_RUN=1``) a fused backend that cannot run is a failure,
not a skip: the script built the extension, so a missing kernel is a result.

Tolerance: ``max(TOL[dtype], 2 x the error of the reference backend run in the kernel's own dtype)``, relative
norm against fp64 on the very inputs the kernel saw.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os

import pytest
import torch

import burstkern
from burstkern import ops

ON_CPU = os.environ.get("BURSTKERN_GPU_TESTS_ON_CPU") == "1"
GPU_RUN = os.environ.get("BURSTKERN_GPU_RUN") == "1"
DEV = "cpu" if ON_CPU else "cuda"

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (ON_CPU or torch.cuda.is_available()), reason="needs a CUDA GPU")]

# the >2^31-element cases share one xdist worker (tens of GB each) when the run is spread over workers
large = pytest.mark.xdist_group("large") if importlib.util.find_spec("xdist") else (lambda f: f)

TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = [FP32, FP16, BF16]
KINDS = ["native", "triton"]


def _dt(d: torch.dtype) -> str:
    return {FP32: "fp32", FP16: "fp16", BF16: "bf16"}[d]


# ----------------------------------------------------------------------------------------------
# backends: "native" (alias "cuda" before the rename) and "triton"
# ----------------------------------------------------------------------------------------------
def _registry():
    for name in ("burstkern.registry", "burstkern.backend"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "backend_available"):
            return mod
    raise ImportError("neither burstkern.registry nor burstkern.backend has backend_available")


def native_name() -> str:
    return "native" if "native" in getattr(_registry(), "BACKENDS", ()) else "cuda"


def _available(reg, name, device_type, op):
    ok, why = reg.backend_available(name, device_type, op)  # a tuple, or (registry) an Availability that unpacks
    return bool(ok), str(why)


def backend_for(kind: str, *op_names: str) -> str:
    """The backend name to run ``kind`` under, after checking it can run every op in ``op_names`` on the GPU."""
    name = native_name() if kind == "native" else kind
    reg = _registry()
    if ON_CPU:  # self-check: the fused backend where it runs CPU tensors (native CPU kernels, Triton interpreter)
        name = "native" if kind == "native" else kind
        if not all(_available(reg, name, "cpu", op)[0] for op in op_names):
            return "reference"
        return name
    for op in op_names:
        ok, why = _available(reg, name, "cuda", op)
        if not ok:
            msg = f"{name} cannot run {op} on the GPU: {why}"
            if GPU_RUN:
                pytest.fail(msg)
            pytest.skip(msg)
    return name


@pytest.fixture(autouse=True)
def _poisoned_and_freed():
    """NaN-fill every output buffer a fused launcher allocates (an unwritten element fails), free memory after."""
    from burstkern.ops import _common

    prev = _common.set_poison_outputs(True) if hasattr(_common, "set_poison_outputs") else None
    yield
    if prev is not None:
        _common.set_poison_outputs(prev)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# comparisons
# ----------------------------------------------------------------------------------------------
def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64 on out's device; any NaN/inf in out is an infinite error."""
    o = out.detach().to(torch.float64)
    r = ref.detach().to(device=o.device, dtype=torch.float64)
    if not bool(torch.isfinite(o).all()):
        return math.inf
    den = r.norm().item()
    num = (o - r).norm().item()
    return num / den if den > 0 else num


def check(out, ref64, plain, dtype, what):
    """out (a fused kernel in dtype) vs ref64 (fp64 reference) within max(TOL, 2 x plain's own error)."""
    assert out is not None and ref64 is not None, what
    assert tuple(out.shape) == tuple(ref64.shape), f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert out.dtype == (plain.dtype if plain is not None else out.dtype), f"{what}: dtype {out.dtype}"
    bound = TOL[dtype]
    if plain is not None:
        bound = max(bound, 2 * rel_err(plain, ref64))
    err = rel_err(out, ref64)
    assert err <= bound, f"{what}: relative error {err:.3e} > {bound:.1e} ({_dt(dtype)})"


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def randn(shape, dtype, g, scale=1.0):
    return (torch.randn(shape, device=DEV, generator=g) * scale).to(dtype)


def _as64(ts):
    return [None if t is None else t.detach().to(torch.float64) for t in ts]


def run_fwd_bwd(fn, inputs, grad_idx, backend_name, gout=None):
    """out = fn(*inputs) under backend_name, then the gradients of the inputs at grad_idx for upstream gout."""
    inputs = [None if t is None else t.detach().clone() for t in inputs]
    for i in grad_idx:
        inputs[i].requires_grad_(True)
    with burstkern.backend(backend_name):
        out = fn(*inputs)
        if gout is None:
            gout = torch.randn(out.shape, device=out.device, generator=gen(999), dtype=torch.float32).to(out.dtype)
        grads = torch.autograd.grad(out, [inputs[i] for i in grad_idx], gout.to(out.dtype), allow_unused=True)
    return out.detach(), [None if g is None else g.detach() for g in grads], gout


def parity(fn, inputs, grad_idx, backend_name, dtype, what):
    """fused (backend_name) vs fp64 reference vs the reference in dtype: output and every gradient."""
    ref, ref_g, gout = run_fwd_bwd(fn, _as64(inputs), grad_idx, "reference")
    plain, plain_g, _ = run_fwd_bwd(fn, inputs, grad_idx, "reference", gout=gout)
    out, out_g, _ = run_fwd_bwd(fn, inputs, grad_idx, backend_name, gout=gout)
    check(out, ref, plain, dtype, f"{what} output")
    for i, g, r, p in zip(grad_idx, out_g, ref_g, plain_g):
        assert (g is None) == (r is None), f"{what}: grad of input {i} is {'missing' if g is None else 'extra'}"
        if g is not None:
            check(g, r, p, dtype, f"{what} grad of input {i}")
    return out, out_g


# ----------------------------------------------------------------------------------------------
# deform_conv2d
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Dcn:
    name: str
    n: int
    cin: int
    cout: int
    h: int
    w: int
    groups: int = 1
    og: int = 8
    k: tuple = (3, 3)
    stride: tuple = (1, 1)
    padding: tuple = (1, 1)
    dilation: tuple = (1, 1)
    mask: bool = True
    bias: bool = True
    offset_scale: float = 2.0

    def out_hw(self):
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                     for size, p, d, k, s in zip((self.h, self.w), self.padding, self.dilation, self.k, self.stride))

    def shrunk(self):
        """CPU self-check size."""
        return dataclasses.replace(self, n=min(self.n, 2), h=min(self.h, 9), w=min(self.w, 8))


# the alignment shapes that matter (K = 3), og 1 twin, large offsets, and odd cases with tails everywhere
DCN_CASES = [
    Dcn("N8C64_96og8", 8, 64, 64, 96, 96),
    Dcn("N8C64_96og1", 8, 64, 64, 96, 96, og=1),
    Dcn("N14C48_48g8d2og8", 14, 48, 48, 48, 48, groups=8, padding=(2, 2), dilation=(2, 2)),
    Dcn("N2C64_40og1off20", 2, 64, 64, 40, 40, og=1, offset_scale=20.0),
    Dcn("N2C72x100_13x11g2og6s21", 2, 72, 100, 13, 11, groups=2, og=6, stride=(2, 1)),
    Dcn("N1C40x70_9x10og5k32nomask", 1, 40, 70, 9, 10, og=5, k=(3, 2), padding=(1, 0), mask=False),
]


def dcn_inputs(cfg: Dcn, dtype, seed=0, offset_clamp=None):
    if ON_CPU:
        cfg = cfg.shrunk()
    g = gen(seed)
    ho, wo = cfg.out_hw()
    kk = cfg.k[0] * cfg.k[1]
    x = randn((cfg.n, cfg.cin, cfg.h, cfg.w), dtype, g)
    off = torch.randn((cfg.n, 2 * cfg.og * kk, ho, wo), device=DEV, generator=g) * cfg.offset_scale
    if offset_clamp is not None:
        off = off.clamp(-offset_clamp, offset_clamp)
    off = off.to(dtype)
    w = randn((cfg.cout, cfg.cin // cfg.groups, *cfg.k), dtype, g, (cfg.cin // cfg.groups * kk) ** -0.5)
    b = randn((cfg.cout,), dtype, g) if cfg.bias else None
    m = torch.rand((cfg.n, cfg.og * kk, ho, wo), device=DEV, generator=g).to(dtype) if cfg.mask else None
    return [x, off, w, b, m]


def dcn_fn(cfg: Dcn):
    return lambda x, off, w, b, m: ops.deform_conv2d(x, off, w, b, stride=cfg.stride, padding=cfg.padding,
                                                     dilation=cfg.dilation, mask=m)


def _grad_idx(inputs):
    return [i for i, t in enumerate(inputs) if t is not None]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dt)
@pytest.mark.parametrize("cfg", DCN_CASES, ids=lambda c: c.name)
def test_deform_conv2d(cfg, dtype, kind):
    name = backend_for(kind, "deform_conv2d", "deform_conv2d_backward")
    inputs = dcn_inputs(cfg, dtype, seed=1)
    parity(dcn_fn(cfg), inputs, _grad_idx(inputs), name, dtype, f"deform_conv2d {cfg.name} [{name}]")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_deform_conv2d_layouts(layout, kind):
    name = backend_for(kind, "deform_conv2d", "deform_conv2d_backward")
    cfg = DCN_CASES[0]
    inputs = dcn_inputs(cfg, FP16, seed=2)
    for i in (0, 1, 4):  # input, offset, mask
        t = inputs[i]
        if layout == "channels_last":
            inputs[i] = t.contiguous(memory_format=torch.channels_last)
        else:  # every other column of a twice-as-wide buffer
            wide = torch.empty((*t.shape[:-1], 2 * t.shape[-1]), device=t.device, dtype=t.dtype)
            wide[..., ::2] = t
            inputs[i] = wide[..., ::2]
    out, _ = parity(dcn_fn(cfg), inputs, _grad_idx(inputs), name, FP16, f"deform_conv2d {layout} [{name}]")
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"


# ----------------------------------------------------------------------------------------------
# sft_modulate / sft_group_norm
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sft:
    name: str
    use: str      # "spade" (GN, merged spatial gamma|beta), "scale_shift" (GN + affine, per-channel merged),
    #               "gn_split" (GN, separate spatial gamma and beta), "sft" (modulate, spatial), "sft_pc" (per-channel)
    n: int
    c: int
    h: int
    w: int
    dtype: torch.dtype
    act: object = "silu"
    groups: int = 32

    def shrunk(self):
        return dataclasses.replace(self, n=min(self.n, 2), h=min(self.h, 6), w=min(self.w, 5))


SFT_CASES = [
    Sft("spade_N4C128_192_bf16", "spade", 4, 128, 192, 192, BF16),      # the bar shape
    Sft("spade_N1C64_384_fp32", "spade", 1, 64, 384, 384, FP32),        # the bar shape
    Sft("spade_N16C256_48_bf16", "spade", 16, 256, 48, 48, BF16),
    Sft("spade_N4C64_256_fp16", "spade", 4, 64, 256, 256, FP16),
    Sft("scale_shift_N4C128_192_bf16", "scale_shift", 4, 128, 192, 192, BF16),
    Sft("scale_shift_N16C256_48_fp32", "scale_shift", 16, 256, 48, 48, FP32),
    Sft("gn_split_N2C96_50x37_fp16_leaky", "gn_split", 2, 96, 50, 37, FP16, act="leaky_relu(0.2)"),
    Sft("sft_N4C128_192_bf16", "sft", 4, 128, 192, 192, BF16, act=None),
    Sft("sft_N1C64_384_fp32_leaky", "sft", 1, 64, 384, 384, FP32, act="leaky_relu(0.2)"),
    Sft("sft_pc_N2C64_96_fp16_relu", "sft_pc", 2, 64, 96, 96, FP16, act="relu"),
]


def sft_inputs(cfg: Sft, seed=0):
    if ON_CPU:
        cfg = cfg.shrunk()
    g = gen(seed)
    n, c, h, w, dt = cfg.n, cfg.c, cfg.h, cfg.w, cfg.dtype
    x = randn((n, c, h, w), dt, g)
    if cfg.use == "spade":
        return [x, randn((n, 2 * c, h, w), dt, g, 0.5), None, None, None]
    if cfg.use == "scale_shift":
        wt = (torch.rand((c,), device=DEV, generator=g) + 0.5).to(dt)
        return [x, randn((n, 2 * c, 1, 1), dt, g, 0.5), None, wt, randn((c,), dt, g)]
    if cfg.use in ("gn_split", "sft"):
        return [x, randn((n, c, h, w), dt, g, 0.5), randn((n, c, h, w), dt, g), None, None]
    return [x, randn((n, c, 1, 1), dt, g, 0.5), randn((n, c, 1, 1), dt, g), None, None]  # sft_pc


def sft_fn(cfg: Sft):
    if cfg.use in ("sft", "sft_pc"):
        return lambda x, ga, be, w, b: ops.sft_modulate(x, ga, be, act=cfg.act)
    return lambda x, ga, be, w, b: ops.sft_group_norm(x, ga, be, cfg.groups, w, b, act=cfg.act)


def sft_op(cfg: Sft):
    return ("sft_modulate", "sft_modulate_backward") if cfg.use.startswith("sft") else \
        ("sft_group_norm", "sft_group_norm_backward")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cfg", SFT_CASES, ids=lambda c: c.name)
def test_sft(cfg, kind):
    name = backend_for(kind, *sft_op(cfg))
    inputs = sft_inputs(cfg, seed=3)
    parity(sft_fn(cfg), inputs, _grad_idx(inputs), name, cfg.dtype, f"{cfg.name} [{name}]")


@pytest.mark.parametrize("kind", KINDS)
def test_sft_group_norm_channels_last(kind):
    name = backend_for(kind, "sft_group_norm", "sft_group_norm_backward")
    cfg = SFT_CASES[0]
    inputs = [None if t is None else t.contiguous(memory_format=torch.channels_last) for t in sft_inputs(cfg, 4)]
    out, _ = parity(sft_fn(cfg), inputs, _grad_idx(inputs), name, cfg.dtype, f"channels_last {cfg.name} [{name}]")
    assert out.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------
# denoise updates
# ----------------------------------------------------------------------------------------------
# (shape, dtype, sigma form): the pipeline's image shapes; scalar sigma on one of them
DENOISE_CASES = [((1, 3, 384, 384), FP32, "per_sample"), ((16, 3, 384, 384), BF16, "per_sample"),
                 ((4, 3, 1024, 1024), FP16, "scalar"), ((16, 4, 128, 128), FP32, "per_sample")]
SD, SMIN = 0.5, 0.002


def _den_id(case):
    shape, dtype, form = case
    return f"{'x'.join(map(str, shape))}_{_dt(dtype)}" + ("_scalar" if form == "scalar" else "")


def denoise_inputs(case, seed):
    shape, dtype, form = case
    if ON_CPU:
        shape = (min(shape[0], 3), shape[1], 5, 7)
    g = gen(seed)
    imgs = [randn(shape, dtype, g) for _ in range(5)]
    n = shape[0] if form == "per_sample" else None

    def sig(lo, hi):
        s = torch.exp(torch.empty(n if n else (), device=DEV).uniform_(lo, hi, generator=g))
        return s

    return imgs, sig


# name -> (op names that must be available, grad input indices, builder(imgs, sig) -> (fn, inputs))
def _den_ops():
    def combine(mode, return_d):
        def build(imgs, sig):
            s = sig(-5.0, 4.0)
            fn = (lambda x, F: ops.denoise_combine(x, F, s, SD, mode=mode, sigma_min=SMIN, return_d=return_d))
            return fn, imgs[:2]
        return build

    def euler(imgs, sig):
        s, sn = sig(-3.0, 4.0), sig(-6.0, -3.5)
        return (lambda x, F: ops.edm_euler_update(x, F, s, sn, SD)), imgs[:2]

    def heun(imgs, sig):
        sh, sn = sig(-3.0, 4.0), sig(-6.0, -3.5)
        if sn.dim():
            sn[0] = 0.0  # sigma_next == 0: the result is x_next there
        return (lambda xh, d, xn, Fn: ops.edm_heun_update(xh, d, xn, Fn, sh, sn, SD)), imgs[:4]

    def add_noise(imgs, sig):
        s, sb = sig(-3.0, 2.0), sig(-6.0, -3.5)
        return (lambda x, eps: ops.add_noise(x, s, sigma_base=sb, s_noise=1.003, noise=eps)), imgs[:2]

    def cm(imgs, sig):
        s, sn = sig(-3.0, 2.0), sig(-5.0, -3.5)
        return (lambda x, F, eps: ops.cm_update(x, F, s, SMIN, SD, sigma_next=sn, clamp=1.0, noise=eps)), imgs[:3]

    def cm_plain(imgs, sig):
        s = sig(-3.0, 2.0)
        return (lambda x, F: ops.cm_update(x, F, s, SMIN, SD)), imgs[:2]

    def loss(imgs, sig):
        s = sig(-3.0, 2.0)
        return (lambda x, F, y: ops.edm_loss(x, F, y, s, SD)), imgs[:3]

    return {
        "combine_edm_d": (("denoise_combine", "denoise_combine_backward"), True, combine("edm", True)),
        "combine_cm": (("denoise_combine", "denoise_combine_backward"), True, combine("cm", False)),
        "euler": (("edm_euler_update",), False, euler),
        "heun": (("edm_heun_update",), False, heun),
        "add_noise_explicit": (("add_noise",), True, add_noise),
        "cm_update_clamp_renoise": (("cm_update",), False, cm),
        "cm_update": (("cm_update", "cm_update_backward"), True, cm_plain),
        "edm_loss": (("edm_loss", "edm_loss_backward"), True, loss),
    }


DENOISE_OPS = _den_ops()


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", DENOISE_CASES, ids=_den_id)
@pytest.mark.parametrize("op", list(DENOISE_OPS))
def test_denoise(op, case, kind):
    op_names, differentiable, build = DENOISE_OPS[op]
    name = backend_for(kind, *op_names)
    dtype = case[1]
    imgs, sig = denoise_inputs(case, seed=5)
    fn, inputs = build(imgs, sig)
    if differentiable:
        def first(*a):  # grads flow through the first output (D, x_next, loss, ...)
            return _outputs(fn(*a))[0]
        parity(first, inputs, list(range(len(inputs))), name, dtype, f"{op} {_den_id(case)} [{name}]")
    with burstkern.backend("reference"):
        ref = _outputs(fn(*_as64(inputs)))
        plain = _outputs(fn(*inputs))
    with burstkern.backend(name):
        out = _outputs(fn(*inputs))
    assert len(out) == len(ref)
    for i, (o, r, p) in enumerate(zip(out, ref, plain)):
        check(o, r, p, dtype, f"{op} {_den_id(case)} output {i} [{name}]")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["edm", "cm"])
def test_scalings(mode, kind):
    name = backend_for(kind, "denoise_scalings")
    s = torch.exp(torch.empty(4096, device=DEV).uniform_(-9.0, 4.5, generator=gen(6)))
    fn = ops.edm_scalings if mode == "edm" else ops.cm_scalings
    with burstkern.backend("reference"):
        ref = fn(s.double())
    sg = s.clone().requires_grad_(True)
    with burstkern.backend(name):
        out = fn(sg)
        (g,) = torch.autograd.grad(sum(o.sum() for o in out), sg)
    s64 = s.double().requires_grad_(True)
    with burstkern.backend("reference"):
        (g64,) = torch.autograd.grad(sum(o.sum() for o in fn(s64)), s64)
    for i, (o, r) in enumerate(zip(out, ref)):
        check(o, r, None, FP32, f"{mode} scalings {i} [{name}]")
    check(g, g64, None, FP32, f"{mode} scalings grad [{name}]")


@pytest.mark.parametrize("kind", KINDS)
def test_in_kernel_noise_matches_reference_stream(kind):
    """Noise drawn in-kernel (counter-based RNG seeded from the generator) is the reference's stream: same seed,
    same noise (within rounding); another seed, other noise; mean 0, std 1."""
    name = backend_for(kind, "add_noise", "cm_update")
    shape = (16, 3, 384, 384) if not ON_CPU else (2, 3, 8, 8)
    x = torch.zeros(shape, device=DEV)
    s = torch.full((shape[0],), 1.0, device=DEV)
    outs = {}
    for backend_name in (name, "reference"):
        with burstkern.backend(backend_name):
            outs[backend_name] = ops.add_noise(x, s, generator=torch.Generator(device=DEV).manual_seed(7))
            outs[backend_name + "/cm"] = ops.cm_update(x, x, s, SMIN, SD, sigma_next=s, clamp=1.0,
                                                       generator=torch.Generator(device=DEV).manual_seed(8))
    with burstkern.backend(name):
        again = ops.add_noise(x, s, generator=torch.Generator(device=DEV).manual_seed(7))
        other = ops.add_noise(x, s, generator=torch.Generator(device=DEV).manual_seed(70))
    a = outs[name]
    assert torch.equal(a, again), "same seed, same noise (bitwise)"
    assert not torch.equal(a, other), "another seed, other noise"
    check(a, outs["reference"].double(), None, FP32, f"in-kernel noise vs the reference stream [{name}]")
    check(outs[name + "/cm"], outs["reference/cm"].double(), None, FP32, f"cm_update re-noise stream [{name}]")
    if not ON_CPU:
        assert abs(a.mean().item()) < 0.01 and abs(a.std().item() - 1) < 0.01


# ----------------------------------------------------------------------------------------------
# CUDA graphs
# ----------------------------------------------------------------------------------------------
def _capture(fn, static_inputs):
    """Warm up on a side stream, capture fn(*static_inputs) into a CUDA graph; (graph, static output)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_inputs)
    return graph, out


def _graph_cases():
    cfg, sft = DCN_CASES[0], SFT_CASES[0]
    den = DENOISE_CASES[1]
    return {
        "deform_conv2d": (("deform_conv2d",), FP16, dcn_fn(cfg), lambda seed: dcn_inputs(cfg, FP16, seed)),
        "sft_group_norm": (("sft_group_norm",), sft.dtype, sft_fn(sft), lambda seed: sft_inputs(sft, seed)),
        "edm_heun_update": (("edm_heun_update",), den[1], DENOISE_OPS["heun"][2](*denoise_inputs(den, 0))[0],
                            lambda seed: denoise_inputs(den, seed)[0][:4]),
    }


@pytest.mark.skipif(ON_CPU, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", ["deform_conv2d", "sft_group_norm", "edm_heun_update"])
def test_cuda_graph_replay(op, kind):
    """Capture once, replay on fresh inputs copied into the static buffers: each replay equals eager on those
    inputs (nothing of the capture-time inputs is baked in) and the reference."""
    op_names, dtype, fn, make = _graph_cases()[op]
    name = backend_for(kind, *op_names)
    static = [None if t is None else t.clone() for t in make(10)]
    with torch.no_grad(), burstkern.backend(name):
        graph, out = _capture(fn, static)
        for seed in (11, 12):
            fresh = make(seed)
            for st, t in zip(static, fresh):
                if st is not None:
                    st.copy_(t)
            graph.replay()
            torch.cuda.synchronize()
            eager = fn(*fresh)
            # the same kernels on the same inputs: bitwise equal unless a reduction order varies; a replay that
            # used anything of the capture-time inputs would be off by O(1)
            assert rel_err(out, eager) <= TOL[dtype] / 10, f"{op} [{name}]: replay != eager on the same inputs"
            with burstkern.backend("reference"):
                ref = fn(*_as64(fresh))
                plain = fn(*fresh)
            check(out, ref, plain, dtype, f"{op} replay [{name}]")


@pytest.mark.skipif(ON_CPU, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_graph_in_kernel_noise(kind):
    """Noise drawn inside a captured graph is fresh on every replay (the seed is drawn on the device)."""
    name = backend_for(kind, "add_noise", "cm_update")
    x = torch.zeros(4, 3, 64, 64, device="cuda")
    s = torch.tensor([1.0, 2.0, 0.5, 1.0], device="cuda")
    with burstkern.backend(name):
        graph, out = _capture(lambda x: ops.add_noise(x, s), [x])
        graph.replay()
        a = out.clone()
        graph.replay()
        b = out.clone()
        g2, out2 = _capture(lambda x: ops.cm_update(x, x, s, SMIN, SD, sigma_next=s * 0.5, clamp=1.0), [x])
        g2.replay()
        c = out2.clone()
        g2.replay()
    assert torch.isfinite(a).all() and not torch.equal(a, b), "each replay draws fresh noise"
    assert abs(a[1].std().item() - 2) < 0.1 and abs(a[2].std().item() - 0.5) < 0.03
    assert torch.isfinite(c).all() and not torch.equal(c, out2), "cm_update re-noise is fresh on each replay"


# ----------------------------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [FP32, FP16], ids=_dt)
def test_deterministic_deform_conv2d_backward(dtype, kind, deterministic):
    """torch.use_deterministic_algorithms(True): two backward passes give bitwise-equal gradients."""
    name = backend_for(kind, "deform_conv2d", "deform_conv2d_backward")
    cfg = Dcn("N4C64_48og8", 4, 64, 64, 48, 48)
    inputs = dcn_inputs(cfg, dtype, seed=13)
    out1, g1, gout = run_fwd_bwd(dcn_fn(cfg), inputs, _grad_idx(inputs), name)
    out2, g2, _ = run_fwd_bwd(dcn_fn(cfg), inputs, _grad_idx(inputs), name, gout=gout)
    assert torch.equal(out1, out2), "forward differs between two runs"
    for i, a, b in zip(_grad_idx(inputs), g1, g2):
        assert torch.equal(a, b), f"grad of input {i} differs between two deterministic runs"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["spade_N4C128_192_bf16", "scale_shift_N16C256_48_fp32"])
def test_deterministic_sft_group_norm_backward(case, kind, deterministic):
    cfg = next(c for c in SFT_CASES if c.name == case)
    name = backend_for(kind, *sft_op(cfg))
    inputs = sft_inputs(cfg, seed=14)
    out1, g1, gout = run_fwd_bwd(sft_fn(cfg), inputs, _grad_idx(inputs), name)
    out2, g2, _ = run_fwd_bwd(sft_fn(cfg), inputs, _grad_idx(inputs), name, gout=gout)
    assert torch.equal(out1, out2), "forward differs between two runs"
    for i, a, b in zip(_grad_idx(inputs), g1, g2):
        assert torch.equal(a, b), f"grad of input {i} differs between two deterministic runs"


# ----------------------------------------------------------------------------------------------
# more than 2^31 elements: int32 index arithmetic overflows here; compare slices at both ends
# ----------------------------------------------------------------------------------------------
BIG = 2 ** 31


def _big_skip():
    if ON_CPU:
        pytest.skip(">2^31-element tensors are for the GPU")


@large
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", ["cm_update", "edm_loss"])
def test_large_denoise(op, kind):
    """[8, 4, 8192, 8193] bf16 (2^31 + 2^18 elements): the last sample, past 2^31, against the reference."""
    _big_skip()
    name = backend_for(kind, op)
    shape = (8, 4, 8192, 8193)
    assert math.prod(shape) > BIG
    g = gen(20)
    x, F = randn(shape, BF16, g), randn(shape, BF16, g)
    s = torch.exp(torch.empty(8, device=DEV).uniform_(-3.0, 2.0, generator=g))
    if op == "cm_update":
        fn = lambda x, F, s: ops.cm_update(x, F, s, SMIN, SD, clamp=1.0)  # noqa: E731
        args = (x, F)
    else:
        y = randn(shape, BF16, g)
        fn = lambda x, F, y, s: ops.edm_loss(x, F, y, s, SD)  # noqa: E731
        args = (x, F, y)
    with burstkern.backend(name):
        out = fn(*args, s)
    assert bool(torch.isfinite(out).all()), f"{op}: NaN (unwritten) elements in a >2^31-element output"
    for idx in (slice(0, 1), slice(7, 8)):
        part = [a[idx] for a in args]
        with burstkern.backend("reference"):
            ref = fn(*_as64(part), s[idx])
            plain = fn(*part, s[idx])
        check(out[idx], ref, plain, BF16, f"{op} >2^31 sample {idx.start} [{name}]")


@large
@pytest.mark.parametrize("kind", KINDS)
def test_large_sft_group_norm(kind):
    """x [2, 64, 4100, 4100] bf16 (2.15e9 elements), merged spatial gamma|beta: the first and last two groups of
    the first and last sample against the reference (GroupNorm statistics are per sample and group)."""
    _big_skip()
    name = backend_for(kind, "sft_group_norm")
    n, c, hw, groups = 2, 64, 4100, 32
    assert n * c * hw * hw > BIG
    g = gen(21)
    x = randn((n, c, hw, hw), BF16, g)
    gb = randn((n, 2 * c, hw, hw), BF16, g, 0.5)
    with burstkern.backend(name):
        out = ops.sft_group_norm(x, gb, None, groups, act="silu")
    assert bool(torch.isfinite(out).all()), "NaN (unwritten) elements in a >2^31-element output"
    cpg = c // groups
    for ni in (0, n - 1):
        for c0 in (0, c - 2 * cpg):
            ch = slice(c0, c0 + 2 * cpg)
            xs = x[ni:ni + 1, ch]
            gs = torch.cat([gb[ni:ni + 1, ch], gb[ni:ni + 1, c + c0:c + c0 + 2 * cpg]], dim=1)
            with burstkern.backend("reference"):
                ref = ops.sft_group_norm(xs.double(), gs.double(), None, 2, act="silu")
                plain = ops.sft_group_norm(xs, gs, None, 2, act="silu")
            check(out[ni:ni + 1, ch], ref, plain, BF16, f"sft_group_norm >2^31 n{ni} c{c0} [{name}]")
            del ref, plain


@large
@pytest.mark.parametrize("kind", KINDS)
def test_large_deform_conv2d(kind):
    """input [2, 64, 4100, 4100] bf16 (2.15e9 elements), og 1, offsets within 8 px: the bottom rows of the last
    sample (past 2^31) against the reference on a crop (32 rows of margin: the crop edge is never sampled)."""
    _big_skip()
    name = backend_for(kind, "deform_conv2d")
    cfg = Dcn("N2C64_4100og1", 2, 64, 64, 4100, 4100, og=1, bias=True)
    assert cfg.n * cfg.cin * cfg.h * cfg.w > BIG
    x, off, w, b, m = dcn_inputs(cfg, BF16, seed=22, offset_clamp=8.0)
    with torch.no_grad(), burstkern.backend(name):
        out = dcn_fn(cfg)(x, off, w, b, m)
    assert bool(torch.isfinite(out).all()), "NaN (unwritten) elements in a >2^31-element output"
    margin, rows = 32, 96
    for ni in (0, cfg.n - 1):
        r0 = cfg.h - rows - margin if ni else 0
        crop = slice(r0, r0 + rows + margin) if ni else slice(0, rows + margin)
        keep = slice(margin, None) if ni else slice(0, rows)
        part = [x[ni:ni + 1, :, crop], off[ni:ni + 1, :, crop], w, b, m[ni:ni + 1, :, crop]]
        with torch.no_grad(), burstkern.backend("reference"):
            ref = dcn_fn(cfg)(*_as64(part))[:, :, keep]
            plain = dcn_fn(cfg)(*part)[:, :, keep]
        got = out[ni:ni + 1, :, crop][:, :, keep]
        check(got, ref, plain, BF16, f"deform_conv2d >2^31 sample {ni} rows {r0}+ [{name}]")


# ----------------------------------------------------------------------------------------------
# the pipeline: E-BSRD one step on the fused kernels vs the reference, and graph-captured
# ----------------------------------------------------------------------------------------------
def _ebsrd(preset="tiny"):
    from burstkern.models import EBSRD

    torch.manual_seed(0)
    model = EBSRD(preset).eval()
    with torch.no_grad():  # zero-initialised output layers would make the U-Net a constant
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model.to(DEV)


PIPELINE_OPS = ("deform_conv2d", "sft_group_norm", "add_noise", "cm_update")


@pytest.mark.parametrize("kind", KINDS)
def test_ebsrd_one_step_matches_reference(kind):
    name = backend_for(kind, *PIPELINE_OPS)
    model = _ebsrd()
    burst = torch.rand((1, 8, 4, 48, 48) if not ON_CPU else (1, 2, 4, 8, 8), device=DEV, generator=gen(30))
    outs = {}
    with torch.no_grad():
        for b in ("reference", name):
            with burstkern.backend(b):
                outs[b] = model.one_step(burst, generator=torch.Generator(device=DEV).manual_seed(31))
    err = rel_err(outs[name], outs["reference"])
    assert err <= 1e-3, f"E-BSRD tiny one step [{name}] vs reference: relative error {err:.2e}"


@pytest.mark.skipif(ON_CPU, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_ebsrd_cuda_graph(kind):
    """The deterministic part (initial SR) replays exactly as eager; the whole one step captures and replays."""
    name = backend_for(kind, *PIPELINE_OPS)
    model = _ebsrd()
    burst = torch.rand((1, 8, 4, 48, 48), device=DEV, generator=gen(32))
    with torch.no_grad(), burstkern.backend(name):
        graph, (x_init, _) = _capture(lambda b: model.initial(b), [burst])
        fresh = torch.rand_like(burst)
        burst.copy_(fresh)
        graph.replay()
        eager, _ = model.initial(fresh)
        assert rel_err(x_init, eager) <= 1e-4, "initial SR: replay != eager on the same burst"
        g2, sr = _capture(lambda b: model.one_step(b), [burst])
        g2.replay()
        torch.cuda.synchronize()
        eager = model.one_step(fresh)
    assert torch.isfinite(sr).all()
    assert rel_err(sr, eager) < 0.2, "one step replayed is far from eager (beyond the 0.03-sigma noise)"
