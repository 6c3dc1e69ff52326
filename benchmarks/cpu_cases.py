"""The CPU benchmark cases of every suite: shapes, providers, baselines and checks (issue 11, must-haves 4 and 5).

Each :class:`cpu_harness.Group` is one piece of work measured by several providers on the same inputs; the pytest
suites (``bench_*.py``) make one test per (group, dtype, threads, provider), ``cpu_suite.py`` times a group's
providers interleaved. Optional peers (onnxruntime, OpenVINO) are imported only when a case is built, so
collecting the benchmarks never needs them; absent, they skip with the reason.

Groups and baselines (ratios are ``t_provider / t_baseline``: below 1 is faster than the baseline):

* ``dcn``      deform_conv2d forward (K3, padding = dilation, weight groups 1): torchvision (baseline; fp32 on
               the same bf16-rounded data in the bf16 groups, it has no bf16 CPU kernel), burstkern native and
               reference, inductor (torch.compile of the reference composition), onnxruntime DeformConv
               (opset 19), OpenVINO DeformableConvolution-8 (bilinear_interpolation_pad=True), dense conv2d of the
               same shape (the no-sampling floor, not checked).
* ``dcn_bwd``  deform_conv2d forward + backward (every gradient): torchvision, native, reference, inductor, dense
               conv2d; the peak extra memory of one call is measured in a fresh process.
* ``sft``      sft_group_norm + SiLU (SPADE form: merged spatial gamma|beta, 32 groups, no affine), forward and
               forward + backward: eager composition (baseline), torch.compile of it, reference, native, and a
               copy of the same number of bytes (the memory floor).
* ``denoise``  edm_heun_update: eager composition (baseline), torch.compile, reference, native, memcpy floor.
* ``e2e``      EBSRD one step (``tiny`` and ``paper``, burst 1xTx4x48x48 -> 3x384x384), per backend and
               torch.compile of the model on the reference backend (baseline: the reference backend), with a
               per-stage breakdown (encoder incl. alignment, alignment alone, initial head, U-Net, the rest:
               rest = denoise ops, the x_init base outside the head, glue).
"""

from __future__ import annotations

import functools
import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F

import burstkern
from burstkern import ops
from cpu_harness import Group, Skip

FP32, BF16 = torch.float32, torch.bfloat16
K = 3


def _with_backend(name: str, fn):
    def run():
        with burstkern.backend(name):
            return fn()

    return run


def _check_backend(name: str, probe) -> None:
    """Skip unless backend ``name`` exists and runs ``probe()`` (a tiny call of the op) on CPU tensors."""
    try:
        with burstkern.backend(name):
            probe()
    except Skip:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise Skip(f"burstkern backend {name!r} cannot run on CPU tensors here: {msg[:240]}")


def _compile(fn, **kw):
    """torch.compile (inductor) of ``fn`` with fresh dynamo caches (thread count and shapes baked in anew)."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False, **kw)


def _grads(fn, args, idx, gout):
    """Forward ``fn(*args)`` with ``args[idx]`` requiring grad, backward with ``gout``; the gradients."""
    a = list(args)
    for i in idx:
        a[i] = a[i].detach().requires_grad_()
    out = fn(*a)
    out.backward(gout)
    return tuple(a[i].grad for i in idx)


# ----------------------------------------------------------------------------------------------
# deform_conv2d
# ----------------------------------------------------------------------------------------------
# (N, C, H = W, dilation, offset groups); weight groups 1, K3, stride 1, padding = dilation
DCN_SHAPES = [(8, 64, 48, 1, 8), (4, 64, 96, 1, 8), (14, 48, 48, 2, 8), (1, 64, 128, 1, 1)]
DCN_BWD_SHAPES = [(8, 64, 48, 1, 8)]
DCN_FWD_PROVIDERS = ["torchvision", "bk_native", "bk_reference", "inductor", "onnxruntime", "openvino",
                     "dense_conv2d"]
DCN_BWD_PROVIDERS = ["torchvision", "bk_native", "bk_reference", "inductor", "dense_conv2d"]
DCN_MEM_PROVIDERS = ["torchvision", "bk_native", "bk_native_dev", "bk_reference", "dense_conv2d"]


def dcn_name(shape) -> str:
    n, c, hw, dil, og = shape
    return f"deform_conv2d N{n} C{c} {hw}x{hw} og{og}" + (f" dil{dil}" if dil != 1 else "")


def _dcn_args(shape, bwd):
    n, c, hw, dil, og = shape

    def make(dtype):
        x = torch.randn(n, c, hw, hw)
        off = torch.randn(n, 2 * og * K * K, hw, hw) * 2  # a few pixels, as an alignment network predicts
        w = torch.randn(c, c, K, K) * (c * K * K) ** -0.5
        b = torch.randn(c)
        m = torch.rand(n, og * K * K, hw, hw)
        args = [x, off, w, b, m] + ([torch.randn(n, c, hw, hw)] if bwd else [])
        return tuple(t.to(dtype).contiguous() for t in args)

    return make


def _tv(dil):
    def f(x, off, w, b, m):
        import torchvision.ops

        return torchvision.ops.deform_conv2d(x, off, w, b, padding=dil, dilation=dil, mask=m)

    return f


def _bk(dil):
    return lambda x, off, w, b, m: ops.deform_conv2d(x, off, w, b, padding=dil, dilation=dil, mask=m)


def _dcn_ref_composition(dil):
    from burstkern.ops.deform_conv import reference as R

    return lambda x, off, w, b, m: R.deform_conv2d(x, off, w, b, 1, 1, dil, dil, dil, dil, m)


def _native_dev():
    """The CPU kernels of csrc/deform_conv built apart from burstkern._C by tests/native_dev.py (opt-in with
    BURSTKERN_BENCH_NATIVE_DEV=1: times the kernels before the extension is rebuilt)."""
    import os
    import sys

    if os.environ.get("BURSTKERN_BENCH_NATIVE_DEV") != "1":
        raise Skip("dev build of the native kernels: opt in with BURSTKERN_BENCH_NATIVE_DEV=1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        from tests.native_dev import load
    except ImportError as e:
        raise Skip(f"tests/native_dev.py not importable: {e}")
    mod = load("deform_conv", ["deform_conv2d", "deform_conv2d_backward", "cpu_path"])
    if mod is None:
        raise Skip(f"dev build failed: {load.reason}")

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, off, w, b, m, dil):
            ctx.save_for_backward(x, off, w, b, m)
            ctx.dil = dil
            return mod.deform_conv2d(x, off, w, b, 1, 1, dil, dil, dil, dil, m)

        @staticmethod
        def backward(ctx, g):
            x, off, w, b, m = ctx.saved_tensors
            d = ctx.dil
            gi, go, gw, gb, gm = mod.deform_conv2d_backward(g.contiguous(), x, off, w, b, 1, 1, d, d, d, d, m)
            return gi, go, gw, gb, gm, None

    return Fn


def _dense(dil):
    return lambda x, off, w, b, m: F.conv2d(x, w, b, 1, dil, dil, 1)


def _dcn_group(shape, bwd: bool) -> Group:
    n, c, hw, dil, og = shape
    idx = (0, 1, 2, 3, 4)

    def wrap(f, fp32_copy=False, grad_idx=idx):
        """A provider from fn(x, off, w, b, m): forward, or forward + backward returning the gradients."""

        def provider(args, dtype, nthreads):
            if fp32_copy and dtype != FP32:
                args = tuple(a.float() for a in args)
            a5 = args[:5]
            if not bwd:
                return lambda: f(*a5)
            return lambda: _grads(f, a5, grad_idx, args[5])

        return provider

    def torchvision(args, dtype, nthreads):
        try:
            import torchvision  # noqa: F401
        except ImportError as e:
            raise Skip(f"torchvision is not installed ({e})")
        return wrap(_tv(dil), fp32_copy=True)(args, dtype, nthreads)

    def backend(name):
        def provider(args, dtype, nthreads):
            small = tuple(t[:1, :, :4, :4].contiguous() if t.dim() == 4 and t.shape[2] == hw else t
                          for t in args[:5])
            _check_backend(name, lambda: _bk(dil)(*small))
            return _with_backend(name, wrap(_bk(dil))(args, dtype, nthreads))

        return provider

    def inductor(args, dtype, nthreads):
        return wrap(_compile(_dcn_ref_composition(dil)))(args, dtype, nthreads)

    def native_dev(args, dtype, nthreads):
        fn = _native_dev()
        return wrap(lambda x, off, w, b, m: fn.apply(x, off, w, b, m, dil))(args, dtype, nthreads)

    def onnxruntime(args, dtype, nthreads):
        if dtype != FP32:
            raise Skip("onnxruntime's DeformConv has float32 kernels only")
        try:
            import onnx
            import onnx.helper as oh
            import onnxruntime as ort
        except ImportError as e:
            raise Skip(f"onnx / onnxruntime not installed (pip install -e '.[bench]'): {e}")
        x, off, w, b, m = args[:5]
        T = onnx.TensorProto.FLOAT
        inputs = [oh.make_tensor_value_info(nm, T, list(t.shape))
                  for nm, t in zip(("X", "W", "offset", "B", "mask"), (x, w, off, b, m))]
        node = oh.make_node("DeformConv", ["X", "W", "offset", "B", "mask"], ["Y"], dilations=[dil, dil], group=1,
                            kernel_shape=[K, K], offset_group=og, pads=[dil] * 4, strides=[1, 1])
        out = oh.make_tensor_value_info("Y", T, [n, c, hw, hw])
        model = oh.make_model(oh.make_graph([node], "dcn", inputs, [out]), opset_imports=[oh.make_opsetid("", 19)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = nthreads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spinning into the next slot
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = {"X": x.numpy(), "W": w.numpy(), "offset": off.numpy(), "B": b.numpy(), "mask": m.numpy()}
        return lambda: sess.run(None, feed)[0]

    def openvino(args, dtype, nthreads):
        try:
            import openvino as ov
            try:
                import openvino.opset8 as o8
            except ImportError:  # older releases
                import openvino.runtime.opset8 as o8
        except ImportError as e:
            raise Skip(f"openvino not installed (pip install -e '.[bench]'): {e}")
        x, off, w, b, m = (a.float() for a in args[:5])  # fp32 interface; bf16 compute by the precision hint
        P = lambda t: o8.parameter(list(t.shape), ov.Type.f32)  # noqa: E731
        px, po, pw, pb, pm = P(x), P(off), P(w), o8.parameter([1, c, 1, 1], ov.Type.f32), P(m)
        y = o8.deformable_convolution(px, po, pw, strides=[1, 1], pads_begin=[dil, dil], pads_end=[dil, dil],
                                      dilations=[dil, dil], mask=pm, auto_pad="explicit", group=1,
                                      deformable_group=og, bilinear_interpolation_pad=True)
        model = ov.Model([o8.add(y, pb)], [px, po, pw, pb, pm], "dcn")
        cfg = {"INFERENCE_NUM_THREADS": nthreads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
               "INFERENCE_PRECISION_HINT": "bf16" if dtype == BF16 else "f32"}
        compiled = ov.Core().compile_model(model, "CPU", cfg)
        req = compiled.create_infer_request()
        feed = [x.numpy(), off.numpy(), w.numpy(), b.view(1, c, 1, 1).numpy(), m.numpy()]

        def run():
            req.infer(feed, share_inputs=True)
            return req.get_output_tensor(0).data

        return run

    def reference(args, dtype):
        f = _tv(dil)
        a = tuple(t.double() for t in args)
        if not bwd:
            with torch.no_grad():
                return f(*a[:5])
        return _grads(f, a[:5], idx, a[5])

    providers = {"torchvision": torchvision, "bk_native": backend("native"), "bk_reference": backend("reference"),
                 "inductor": inductor, "dense_conv2d": wrap(_dense(dil), grad_idx=(0, 2, 3)),
                 "bk_native_dev": native_dev}
    if not bwd:
        providers = {"torchvision": torchvision, "bk_native": providers["bk_native"],
                     "bk_reference": providers["bk_reference"], "inductor": inductor, "onnxruntime": onnxruntime,
                     "openvino": openvino, "dense_conv2d": providers["dense_conv2d"], "bk_native_dev": native_dev}

    def elems():
        x = n * c * hw * hw
        return x, n * 2 * og * K * K * hw * hw, n * og * K * K * hw * hw, c * c * K * K

    def nbytes(dtype):
        es = torch.empty((), dtype=dtype).element_size()
        x, off, m, w = elems()
        fwd = x + off + m + w + x
        return (fwd if not bwd else fwd + x + x + off + m + w + x + off + m + w) * es

    def flops(dtype):
        return 2 * n * c * hw * hw * c * K * K * (3 if bwd else 1)

    g = Group("dcn_bwd" if bwd else "dcn", dcn_name(shape) + (" fwd+bwd" if bwd else " fwd"), "torchvision",
              providers, _dcn_args(shape, bwd), reference, unchecked=("dense_conv2d",), nbytes=nbytes, flops=flops,
              tol={"float32": 1e-4, "bfloat16": 5e-2 if bwd else 2e-2})
    g.small = lambda: _dcn_group((1, c, 8, dil, og), bwd)
    g.spec = ("dcn_group", [list(shape), bwd])
    def mem_floor(dtype):  # inputs (with the upstream gradient) + output + every gradient
        es = torch.empty((), dtype=dtype).element_size()
        x, off, m, w = elems()
        return (x + off + m + w + c + x) * es + x * es + (x + off + m + w + c) * es

    g.mem_floor_bytes = mem_floor
    return g


# ----------------------------------------------------------------------------------------------
# sft_group_norm + SiLU
# ----------------------------------------------------------------------------------------------
SFT_SHAPES = [(2, 128, 96)]
SFT_PROVIDERS = ["eager", "torch_compile", "bk_native", "bk_reference", "memcpy"]
GROUPS = 32


def _sft_eager(x, gb):
    from burstkern.ops.sft import reference as R

    h = F.group_norm(x.float(), GROUPS, None, None, 1e-5)
    return R.modulate(h, gb.float(), None, R.ACT_SILU, 0.0).to(x.dtype)


def _sft_fused(x, gb):
    return ops.sft_group_norm(x, gb, None, GROUPS, act="silu")


def _memcpy_provider(nbytes_of):
    """A copy moving the same bytes as one call (read + write = nbytes): the memory floor measured side by side."""

    def provider(args, dtype, nthreads):
        src = torch.empty(max(1, nbytes_of(dtype) // 8), dtype=torch.float32).normal_()
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    return provider


def _sft_group(shape, bwd: bool) -> Group:
    n, c, hw = shape

    def make(dtype):
        x = torch.randn(n, c, hw, hw)
        gb = torch.randn(n, 2 * c, hw, hw) * 0.5
        return tuple(t.to(dtype) for t in (x, gb)) + ((torch.randn(n, c, hw, hw).to(dtype),) if bwd else ())

    def wrap(f):
        def provider(args, dtype, nthreads):
            if not bwd:
                return lambda: f(*args)
            return lambda: _grads(f, args[:2], (0, 1), args[2])

        return provider

    def backend(name):
        def provider(args, dtype, nthreads):
            _check_backend(name, lambda: _sft_fused(args[0][:1, :, :4, :4].contiguous(),
                                                    args[1][:1, :, :4, :4].contiguous()))
            return _with_backend(name, wrap(_sft_fused)(args, dtype, nthreads))

        return provider

    def compiled(args, dtype, nthreads):
        return wrap(_compile(_sft_eager))(args, dtype, nthreads)

    def reference(args, dtype):
        a = tuple(t.double() for t in args)
        if not bwd:
            with torch.no_grad():
                return _sft_eager(*a[:2])
        return _grads(_sft_eager, a[:2], (0, 1), a[2])

    def nbytes(dtype):
        es = torch.empty((), dtype=dtype).element_size()
        x = n * c * hw * hw
        fwd = x + 2 * x + x
        return (fwd if not bwd else fwd + (x + x + 2 * x) + (x + 2 * x)) * es  # bwd: read dy, x, gb; write dx, dgb

    providers = {"eager": wrap(_sft_eager), "torch_compile": compiled, "bk_native": backend("native"),
                 "bk_reference": backend("reference"), "memcpy": _memcpy_provider(nbytes)}
    g = Group("sft", f"sft_group_norm+silu N{n} C{c} {hw}x{hw}" + (" fwd+bwd" if bwd else " fwd"), "eager",
              providers, make, reference, unchecked=("memcpy",), nbytes=nbytes,
              tol={"float32": 1e-4, "bfloat16": 2e-2})
    g.small = lambda: _sft_group((1, GROUPS, 4), bwd)
    g.spec = ("sft_group", [list(shape), bwd])
    return g


# ----------------------------------------------------------------------------------------------
# edm_heun_update
# ----------------------------------------------------------------------------------------------
DENOISE_SHAPES = [(16, 3, 192, 192)]
DENOISE_PROVIDERS = ["eager", "torch_compile", "bk_native", "bk_reference", "memcpy"]
SD = 0.5


def _heun_eager(xh, d, xn, fn, sh, sn):
    from burstkern.ops.denoise import reference as R

    return R.edm_heun_update(xh, d, xn, fn, sh, sn, SD)


def _heun_fused(xh, d, xn, fn, sh, sn):
    return ops.edm_heun_update(xh, d, xn, fn, sh, sn, SD)


def _denoise_group(shape) -> Group:
    numel = 1
    for s in shape:
        numel *= s

    def make(dtype):
        imgs = [torch.randn(shape).to(dtype) for _ in range(4)]
        sig = [torch.exp(torch.empty(shape[0]).uniform_(-5.0, 4.0)) for _ in range(2)]
        return (*imgs, *sig)

    def wrap(f):
        return lambda args, dtype, nthreads: (lambda: f(*args))

    def backend(name):
        def provider(args, dtype, nthreads):
            small = tuple(a[:1].contiguous() for a in args)
            _check_backend(name, lambda: _heun_fused(*small))
            return _with_backend(name, wrap(_heun_fused)(args, dtype, nthreads))

        return provider

    def compiled(args, dtype, nthreads):
        return wrap(_compile(_heun_eager))(args, dtype, nthreads)

    def reference(args, dtype):
        return _heun_eager(*(a.double() for a in args))

    def nbytes(dtype):  # read x_hat, d, x_next, F_next; write the result
        return 5 * numel * torch.empty((), dtype=dtype).element_size()

    providers = {"eager": wrap(_heun_eager), "torch_compile": compiled, "bk_native": backend("native"),
                 "bk_reference": backend("reference"), "memcpy": _memcpy_provider(nbytes)}
    g = Group("denoise", "edm_heun_update " + "x".join(map(str, shape)), "eager", providers, make, reference,
              unchecked=("memcpy",), nbytes=nbytes)
    g.small = lambda: _denoise_group((1, 3, 4, 4))
    g.spec = ("denoise_group", [list(shape)])
    return g


# ----------------------------------------------------------------------------------------------
# end to end: EBSRD one step
# ----------------------------------------------------------------------------------------------
E2E_PRESETS = {"tiny": 4, "paper": 8}  # preset -> burst size
E2E_PROVIDERS = ["bk_reference", "bk_native", "torch_compile_reference", "bk_auto"]
STAGES = ("encoder", "align", "head", "unet")
E2E_OPS = ("deform_conv2d", "sft_group_norm", "sft_modulate", "add_noise", "cm_update", "denoise_scalings")


@functools.lru_cache(maxsize=2)
def e2e_model(preset: str):
    from burstkern.models import EBSRD

    torch.manual_seed(0)
    model = EBSRD(preset).eval()
    with torch.no_grad():  # zero-initialised output layers would make the U-Net a constant
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def _stage_timer(model, log: list):
    """Pre/post forward hooks timing the stages of one call into a dict appended to ``log``."""
    mods = {"encoder": model.encoder, "align": model.encoder.align, "head": model.head,
            "unet": model.student if model.student is not None else model.denoiser}
    cur: Dict[str, float] = {}

    def install():
        handles = []
        for name, mod in mods.items():
            def pre(_m, _a, name=name):
                cur[name + "_t0"] = time.perf_counter()

            def post(_m, _a, _o, name=name):
                cur[name] = cur.get(name, 0.0) + time.perf_counter() - cur.pop(name + "_t0")

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        return handles

    def run(call):
        cur.clear()
        handles = install()
        t0 = time.perf_counter()
        try:
            out = call()
        finally:
            for h in handles:
                h.remove()
        total = time.perf_counter() - t0
        rec = {k: cur.get(k, 0.0) * 1e3 for k in STAGES}
        rec["total"] = total * 1e3
        rec["rest"] = rec["total"] - rec["encoder"] - rec["head"] - rec["unet"]
        log.append(rec)
        return out

    return run


def _e2e_group(preset: str, hw: int = 48) -> Group:
    T = E2E_PRESETS.get(preset, 4)

    def make(dtype):
        return (torch.rand(1, T, 4, hw, hw).to(dtype),)

    def model_for(dtype):
        return e2e_model(preset).to(dtype)

    def one_step(model, burst):
        torch.manual_seed(0)  # the same noise for every provider (the counter-based RNG is backend-independent)
        return model.one_step(burst)

    def backend(name):
        def provider(args, dtype, nthreads):
            model = model_for(dtype)
            probe = _dcn_group((1, 8, 4, 1, 8), False)
            pa = probe.make_args(dtype)
            _check_backend(name, lambda: _bk(1)(*pa[:5]))
            log: list = []
            timed = _stage_timer(model, log)

            @torch.no_grad()
            def run():
                with burstkern.backend(name):
                    return timed(lambda: one_step(model, args[0]))

            run.stages = log
            return run

        return provider

    def compiled(args, dtype, nthreads):
        model = model_for(dtype)
        torch._dynamo.reset()
        fn = torch.compile(model.one_step, dynamic=False)

        @torch.no_grad()
        def run():
            with burstkern.backend("reference"):
                torch.manual_seed(0)
                return fn(args[0])

        return run

    def reference(args, dtype):
        with torch.no_grad(), burstkern.backend("reference"):
            return one_step(model_for(dtype), args[0])

    def auto(args, dtype, nthreads):
        """The ``auto`` backend, timed only when it differs from native (some op without a native CPU kernel)."""
        try:
            from burstkern.registry import backend_available
        except ImportError as e:
            raise Skip(f"no burstkern.registry: {e}")
        missing = [op for op in E2E_OPS if not tuple(backend_available("native", "cpu", op))[0]]
        if not missing:
            raise Skip("auto runs the native kernels of every op here: the bk_native row")
        fn = backend("auto")(args, dtype, nthreads)
        fn.note = f"auto: reference for {', '.join(missing)}"
        return fn

    providers = {"bk_reference": backend("reference"), "bk_native": backend("native"),
                 "torch_compile_reference": compiled, "bk_auto": auto}
    g = Group("e2e", f"EBSRD('{preset}') one_step 1x{T}x4x{hw}x{hw}", "bk_reference", providers, make, reference,
              tol={"float32": 1e-3, "bfloat16": 5e-2}, dtypes=(FP32,))
    g.small = None
    g.spec = ("e2e_group", [preset, hw])
    return g


# ----------------------------------------------------------------------------------------------
# registry (the memory subprocess rebuilds a group from its suite and name)
# ----------------------------------------------------------------------------------------------
def all_groups(e2e_presets=("tiny", "paper")) -> list:
    gs = [_dcn_group(s, False) for s in DCN_SHAPES] + [_dcn_group(s, True) for s in DCN_BWD_SHAPES]
    gs += [_sft_group(s, bwd) for s in SFT_SHAPES for bwd in (False, True)]
    gs += [_denoise_group(s) for s in DENOISE_SHAPES]
    gs += [_e2e_group(p) for p in e2e_presets]
    return gs


def group_from_spec(spec) -> Group:
    """Rebuild a group from its ``spec`` (constructor name, arguments): how the memory subprocess gets it."""
    ctor, args = spec
    return globals()[ctor](*args)


def small_twin(group: Group) -> Optional[Group]:
    small = getattr(group, "small", None)
    return small() if small else None


dcn_group, sft_group, denoise_group, e2e_group = _dcn_group, _sft_group, _denoise_group, _e2e_group
