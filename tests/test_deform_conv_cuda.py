"""The cuda backend of deform_conv2d (csrc/deform_conv/, burstkern/ops/deform_conv/cuda.py).

The CUDA kernels and the CPU build of the same ``burstkern_C`` ops run the same element code (element.cuh), so
most of it is tested here on the CPU: the ``native_on_cpu`` fixture lets the ``native`` backend take CPU tensors
(through native.py's glue into the CPU build of the ``burstkern_C`` ops, outputs NaN-poisoned before the kernels
write) and pins it to the fp64 reference: forward and every gradient, fp32/fp16/bf16, weight groups, offset groups
1/2/several/one channel each, stride/padding/dilation, mask None, far offsets, N = 0/1, odd sizes,
channels_last/strided inputs, deterministic mode, opcheck and torch.compile. The sampling itself is pinned bit for
bit to the reference's columns. The tiled tensor-core kernels themselves run without a GPU on the SIMT emulation
(the ``emu`` device and the ``*_emulated`` tests: multi-tile shapes with tails, deterministic chunks); on a GPU the
GPU-only tests add the issue's full shape and small compute-sanitizer-friendly cases.
"""

from __future__ import annotations


import pytest
import torch

import burstkern
from burstkern import _extension
from burstkern.ops.deform_conv import native as glue
from burstkern.ops.deform_conv import reference

from test_deform_conv import NAMES, Cfg, _opcheck_both, _seed, bk, make_inputs, ref_bk, run
from utils import COMPILED_DEVICES, compiled_device, DTYPES, assert_rel_close, requires_cuda

if _extension.cuda_extension_error() is not None or not hasattr(torch.ops.burstkern_C, "deform_conv2d"):
    pytest.skip(f"burstkern._C without the deform_conv2d ops ({_extension.cuda_extension_error()})",
                allow_module_level=True)

from burstkern import registry as BK
B = torch.ops.burstkern_C
DEVICES = COMPILED_DEVICES


# ----------------------------------------------------------------------------------------------
# running the cuda backend on CPU tensors (the CPU build of the burstkern_C ops)
# ----------------------------------------------------------------------------------------------
class _Spy:
    """Stands in for torch.ops.burstkern_C in the glue and records which compiled ops ran (so a test cannot pass
    on another backend's result)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        op = getattr(B, name)

        def call(*args):
            self.calls.append(name)
            return op(*args)

        return call


@pytest.fixture
def compiled_spy(monkeypatch, poisoned_outputs):
    spy = _Spy()
    monkeypatch.setattr(glue, "_B", spy)
    return spy


@pytest.fixture(params=DEVICES)
def dev(request):
    return compiled_device(request, every=("compiled_spy",))


def parity(cfg, dtype, device, layout="contiguous", seed=0):
    """cuda backend vs the fp64 reference (on the very inputs the kernel sees): output and every gradient."""
    args = make_inputs(cfg, dtype=dtype, device=device, seed=seed, layout=layout)
    ref_args = [None if t is None else t.detach().to(torch.float64) for t in args]
    ref, ref_grads, gout = run(ref_bk, cfg, *ref_args)
    calls = glue._B.calls
    del calls[:]
    with burstkern.backend("native"):
        out, grads, _ = run(bk, cfg, *args, grad_out=gout)
    assert calls == ["deform_conv2d", "deform_conv2d_backward"], calls
    assert out.dtype == dtype and out.device.type == device
    assert_rel_close(out, ref, dtype, "cuda output")
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert (g is None) == (r is None), name
        if g is not None:
            assert g.dtype == dtype and g.shape == r.shape, name
            assert_rel_close(g, r, dtype, f"cuda grad {name}")
    return out, grads


# ----------------------------------------------------------------------------------------------
# the CPU build vs the reference
# ----------------------------------------------------------------------------------------------
CASES = [
    Cfg(cin=8, cout=8, og=1),
    Cfg(n=1, cin=8, cout=8, og=8, h=5, w=6),  # og = C: one channel per offset group; batch 1
    Cfg(cin=8, cout=16, groups=2, og=4, h=8, w=8),
    Cfg(cin=12, cout=8, groups=2, og=3),  # offset groups straddle weight groups
    Cfg(cin=6, cout=9, groups=3, og=2, h=6, w=5),  # weight groups straddle offset groups
    Cfg(n=1, cin=4, cout=6, h=9, w=7, stride=(2, 2), padding=(2, 2), dilation=(2, 2)),
    Cfg(cin=16, cout=16, groups=8, og=8, dilation=(2, 2), padding=(2, 2), h=7, w=5),  # Burstormer, scaled down
    Cfg(cin=6, cout=4, og=3, kh=3, kw=2, stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
    Cfg(cin=4, cout=4, offset_scale=40.0),  # far outside the image
    Cfg(cin=4, cout=4, mask=False, bias=False),
    Cfg(cin=4, cout=5, mask=False, kh=1, kw=1, padding=(0, 0)),
    Cfg(n=3, cin=3, cout=2, h=3, w=4, kh=3, kw=3, padding=(0, 1), og=3),  # odd sizes, a single output row
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CASES, ids=str)
def test_parity_cpu_build(cfg, dtype, native_on_cpu, compiled_spy):
    parity(cfg, dtype, "cpu", seed=_seed(cfg, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(layout, dtype, dev):
    cfg = Cfg(cin=8, cout=8, groups=2, og=4)
    out, grads = parity(cfg, dtype, dev, layout=layout, seed=21)
    if layout == "channels_last":
        # outputs follow input's layout, as op.py's fake impls say
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("path", ["cpu kernels", "emulated CUDA kernels"])
def test_sampling_bit_exact(path, native_on_cpu, compiled_spy, request):
    """A depthwise 1x1 conv with unit weights returns the sampled, modulated columns: the CUDA kernels' element
    functions (stencil, corner validity, weights, mask) equal the reference's bit for bit in fp32; the CPU kernels
    (their own stencil arithmetic) to fp32 rounding."""
    if path != "cpu kernels":
        request.getfixturevalue("simt_emulation")
    g = torch.Generator().manual_seed(5)
    n, c, h, w, og = 2, 6, 7, 9, 3
    x = torch.randn(n, c, h, w, generator=g)
    # integer, half-integer, far and in-between offsets, incl. points exactly on the border
    off = torch.randn(n, 2 * og, h, w, generator=g) * 3
    off[:, :, 0, :3] = torch.tensor([-1.0, 0.0, float(h)])
    off[:, :, 1, :3] = torch.tensor([0.5, -0.5, -50.0])
    m = torch.rand(n, og, h, w, generator=g)
    weight = torch.ones(c, 1, 1, 1)
    with burstkern.backend("native"):
        out = burstkern.ops.deform_conv2d(x, off, weight, None, 1, 0, 1, m)
    assert glue._B.calls == ["deform_conv2d"]
    cols = reference.bilinear_columns(x, off, m, 1, 1, (1, 1), (0, 0), (1, 1)).reshape(n, c, h, w)
    if path == "cpu kernels":
        assert_rel_close(out, cols, torch.float32, "sampled columns", scale=0.05)
    else:
        assert torch.equal(out, cols)


@pytest.mark.no_kernel_launch
def test_empty_batch(dev):
    cfg = Cfg(n=0)
    args = make_inputs(cfg, dtype=torch.float32, device=dev)
    with burstkern.backend("native"):
        out, grads, _ = run(bk, cfg, *args)
    assert out.shape == (0, cfg.cout, *cfg.out_hw())
    assert torch.equal(grads[2], torch.zeros_like(grads[2])) and torch.equal(grads[3], torch.zeros_like(grads[3]))


def test_deterministic_backward(dev):
    cfg = Cfg(cin=8, cout=8, groups=2, og=2, h=7, w=7, offset_scale=3.0)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _, g1 = parity(cfg, torch.float32, dev, seed=23)
        _, g2 = parity(cfg, torch.float32, dev, seed=23)
    finally:
        torch.use_deterministic_algorithms(prev)
    for name, a, b in zip(NAMES, g1, g2):
        assert torch.equal(a, b), f"grad {name} differs between two deterministic runs"


@pytest.mark.parametrize("cfg,layout", [(Cfg(n=1, h=5, w=6, groups=2, og=2), "contiguous"),
                                        (Cfg(n=1, h=5, w=6, mask=False, bias=False), "channels_last")],
                         ids=["mask", "nomask"])
def test_opcheck(cfg, layout, native_on_cpu, compiled_spy):
    with burstkern.backend("native"):
        _opcheck_both(cfg, layout)


def test_opcheck_compiled_ops():
    """The burstkern_C ops themselves (CPU build): their schemas match what the kernels do (no mutation, no
    aliasing)."""
    cfg = Cfg(n=1, h=5, w=6, groups=2, og=2)
    x, off, w, b, m = make_inputs(cfg, dtype=torch.float32, seed=3)
    ints = (*cfg.stride, *cfg.padding, *cfg.dilation)
    grad = torch.randn(cfg.n, cfg.cout, *cfg.out_hw())
    tests = ("test_schema",)
    torch.library.opcheck(B.deform_conv2d.default, (x, off, w, b, *ints, m), test_utils=tests)
    torch.library.opcheck(B.deform_conv2d_backward.default, (grad, x, off, w, b, *ints, m), test_utils=tests)


def test_compile_fullgraph(native_on_cpu, compiled_spy):
    cfg = Cfg(cin=8, cout=8, og=2)
    args = make_inputs(cfg, dtype=torch.float32, seed=29)
    compiled = torch.compile(lambda *a: bk(*a), fullgraph=True, backend="aot_eager")
    with burstkern.backend("native"):
        eager_out, eager_grads, gout = run(bk, cfg, *args)
        comp_out, comp_grads, _ = run(compiled, cfg, *args, grad_out=gout)
    assert torch.equal(comp_out, eager_out)
    for name, g, r in zip(NAMES, comp_grads, eager_grads):
        assert_rel_close(g, r, torch.float64, f"compiled grad {name}")


@pytest.mark.parametrize("case", ["offset_dtype", "mask_shape", "bias_shape", "grad_shape", "input_int"])
def test_compiled_op_errors(case):
    """The burstkern_C ops check their own arguments (they are callable directly) and name the argument."""
    cfg = Cfg()
    x, off, w, b, m = make_inputs(cfg, dtype=torch.float32)
    ints = (*cfg.stride, *cfg.padding, *cfg.dilation)
    grad = torch.randn(cfg.n, cfg.cout, *cfg.out_hw())
    if case == "offset_dtype":
        call, match = lambda: B.deform_conv2d(x, off.half(), w, b, *ints, m), "offset has dtype Half"
    elif case == "mask_shape":
        call, match = lambda: B.deform_conv2d(x, off, w, b, *ints, m[:, :3]), "mask must have shape"
    elif case == "bias_shape":
        call, match = lambda: B.deform_conv2d(x, off, w, b[:2], *ints, m), "bias must have shape"
    elif case == "grad_shape":
        call, match = lambda: B.deform_conv2d_backward(grad[:1], x, off, w, b, *ints, m), "grad must have"
    else:
        call, match = lambda: B.deform_conv2d(x.int(), off, w, b, *ints, m), "input must be float32"
    with pytest.raises(RuntimeError, match=match):
        call()


# ----------------------------------------------------------------------------------------------
# GPU only: the tiled kernels (tensor cores, multi-tile with tails, atomics vs deterministic path)
# ----------------------------------------------------------------------------------------------
GPU_CASES = [
    # the shape (Burstormer alignment: N8 C64 96x96, offset groups 8)
    Cfg(n=8, cin=64, cout=64, h=96, w=96, og=8, offset_scale=2.0),
    Cfg(n=4, cin=64, cout=64, h=33, w=31, og=8, offset_scale=4.0),
    Cfg(n=3, cin=48, cout=48, h=24, w=24, groups=8, og=8, dilation=(2, 2), padding=(2, 2)),
    Cfg(n=2, cin=64, cout=64, h=40, w=40, og=1, offset_scale=20.0),
    # several channel chunks and output-channel tiles with tails, chunks straddling offset/weight groups
    Cfg(n=2, cin=72, cout=100, h=13, w=11, groups=2, og=6, stride=(2, 1)),
    Cfg(n=1, cin=40, cout=70, h=9, w=10, og=5, mask=False, kh=3, kw=2, padding=(1, 0)),
]


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", GPU_CASES, ids=str)
def test_parity_gpu(cfg, dtype, compiled_spy):
    parity(cfg, dtype, "native", seed=31)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", GPU_CASES[1:], ids=str)
def test_parity_tiled_emulated(cfg, dtype, native_on_cpu, compiled_spy, simt_emulation):
    """The GPU cases but the issue's full shape, the CUDA kernels on the SIMT emulation: several pixel and
    output-channel tiles with tails, channel chunks straddling offset and weight groups, the tensor-core path."""
    parity(cfg, dtype, "cpu", seed=31)


def test_deterministic_chunks_emulated(native_on_cpu, compiled_spy, simt_emulation):
    """More contributions than one deterministic grad-input launch holds: two launches, reduced with index_put_;
    bitwise equal between runs."""
    cfg = Cfg(n=1, cin=64, cout=64, h=48, w=48, og=8)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        before = B.simt_emulation_stats()[0]
        _, g1 = parity(cfg, torch.float16, "cpu", seed=43)
        launches = B.simt_emulation_stats()[0] - before
        _, g2 = parity(cfg, torch.float16, "cpu", seed=43)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert launches == 1 + 2 + 1, launches  # forward, grad data in two chunks, grad weight
    for name, a, b in zip(NAMES, g1, g2):
        assert torch.equal(a, b), f"grad {name} differs between two deterministic runs"


@requires_cuda
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts_gpu_large(layout, compiled_spy):
    parity(Cfg(n=2, cin=64, cout=64, h=24, w=24, og=8), torch.float16, "cuda", layout=layout, seed=41)


@requires_cuda
def test_deterministic_gpu_large(compiled_spy):
    """Several deterministic grad-input launches (chunks of pixels) give bitwise-equal gradients."""
    cfg = Cfg(n=4, cin=64, cout=64, h=48, w=48, og=8)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _, g1 = parity(cfg, torch.float16, "native", seed=43)
        _, g2 = parity(cfg, torch.float16, "native", seed=43)
    finally:
        torch.use_deterministic_algorithms(prev)
    for name, a, b in zip(NAMES, g1, g2):
        assert torch.equal(a, b), f"grad {name} differs between two deterministic runs"


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_small_sanitizer_case(dtype, compiled_spy):
    """Small enough to run under compute-sanitizer (memcheck / racecheck): every tail at once."""
    parity(Cfg(n=1, cin=5, cout=3, h=4, w=3, og=5, offset_scale=3.0), dtype, "native", seed=47)


@requires_cuda
def test_cuda_glue_rejects_cpu_tensors():
    x, off, w, b, m = make_inputs(Cfg(), dtype=torch.float32)
    with pytest.raises(RuntimeError, match="offset must be a CUDA tensor"):
        B.deform_conv2d(x.cuda(), off, w, b, 1, 1, 1, 1, 1, 1, m)
