"""The cuda backend of the denoise ops (csrc/denoise/, burstkern/ops/denoise/cuda.py).

The CUDA kernels and the CPU build of the same ``burstkern_C`` ops run the same element code (element.cuh,
functors.cuh), so most of it is tested here on the CPU: the ``cpu`` parametrisation lets the ``cuda`` backend run
CPU tensors (through native.py's glue into the CPU build of the ``burstkern_C`` ops, outputs NaN-poisoned before
the kernels write) and pins it to the fp64 reference: forward and every gradient, fp32/fp16/bf16, odd sizes,
batch 1, per-sample and scalar σ, contiguous / channels_last / strided inputs, explicit noise and in-kernel noise
drawn from the same seed tensor as the reference, the RNG word for word against rng.py. The ``cuda``
parametrisation and the GPU-only tests (one launch per op, CUDA-graph replay) run where a GPU is present.
"""

from __future__ import annotations

import math

import pytest
import torch

import burstkern
from burstkern import _extension, ops
from burstkern.ops.denoise import reference as R
from burstkern.ops.denoise import rng

from utils import COMPILED_DEVICES, compiled_device, cuda_kernel_names, DTYPES, assert_rel_close, rel_err, requires_cuda

if _extension.cuda_extension_error() is not None or not hasattr(torch.ops.burstkern_C, "denoise_combine"):
    pytest.skip(f"burstkern._C without the denoise ops ({_extension.cuda_extension_error()})", allow_module_level=True)

from burstkern.ops.denoise import native as glue  # noqa: E402

from burstkern import registry as BK
B = torch.ops.burstkern_C
SD = 0.5
SMIN = 0.002
LAYOUTS = ("contiguous", "channels_last", "strided")
# odd sizes, batch 1, more than one 2048-element reduction chunk per sample (1, 3, 41, 37)
SHAPES = ((3, 3, 7, 5), (1, 3, 41, 37), (2, 3, 23, 19))
DEVICES = COMPILED_DEVICES


# ----------------------------------------------------------------------------------------------
# running the cuda backend on CPU tensors (the CPU build of the burstkern_C ops)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(params=DEVICES)
def dev(request):
    return compiled_device(request)


# ----------------------------------------------------------------------------------------------
# inputs and references
# ----------------------------------------------------------------------------------------------
def make(shape, dtype=torch.float32, layout="contiguous", seed=0, scale=1.0, device="cpu"):
    """Fresh random tensor; layout contiguous | channels_last | strided (every other column)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "strided":
        big = torch.randn(*shape[:-1], 2 * shape[-1], generator=g, dtype=torch.float64).mul_(scale)
        return big.to(dtype=dtype, device=device)[..., ::2]
    t = torch.randn(*shape, generator=g, dtype=torch.float64).mul_(scale).to(dtype=dtype, device=device)
    if layout == "channels_last" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def make_sigma(n, kind, seed=0, lo=0.002, hi=80.0, dtype=torch.float32, device="cpu"):
    """σ log-uniform in [lo, hi]: shape [] ('scalar') or [N] ('per_sample')."""
    g = torch.Generator().manual_seed(1000 + seed)
    u = torch.rand(n if kind == "per_sample" else (), generator=g, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).to(dtype=dtype, device=device)


def _ref(fn, *args, **kw):
    """fn on fp64 CPU copies of the tensor arguments, on the reference backend."""
    def up(a):
        return a.detach().cpu().double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    with burstkern.backend("reference"):
        return fn(*[up(a) for a in args], **{k: up(v) for k, v in kw.items()})


def check_out(out, x, dtype, what):
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    fmt = burstkern.ops._common.memory_format_of(x)
    assert out.is_contiguous(memory_format=fmt), f"{what}: strides {out.stride()} are not {fmt} like x"


def _req(t):
    return t.detach().clone().requires_grad_()


def _seed(value, device="cpu"):
    return torch.tensor([value], dtype=torch.int64, device=device)


# ----------------------------------------------------------------------------------------------
# the RNG: Philox words bit for bit, normals to the float32 rounding of log/cos/sqrt
# ----------------------------------------------------------------------------------------------
def _ulps(a, b):
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


def _stepwise_spec(words):
    """rng.py's normals from the compiled words, each step evaluated in fp64 and rounded once to fp32."""
    u1 = rng._uniform(words[:, 0]).clamp_min(1e-7)
    u2 = rng._uniform(words[:, 1])
    r = (-2.0 * u1.double().log().float().double()).float().double().sqrt().float()
    th = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    return (r.double() * th.double().cos().float().double()).float()


@pytest.mark.parametrize("seed", [0, 1, 123456789, (1 << 62) - 1, 1 << 40])
def test_rng_matches_spec(dev, seed):
    device = dev
    big = [2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 5, 2 ** 40 + 3, 2 ** 62 + 11]
    offs = torch.cat([torch.arange(3000), torch.tensor(big)])
    s = _seed(seed)
    normal, words = glue.randn(s.to(device), offs.to(device))
    normal, words = normal.cpu(), words.cpu()
    want = rng.philox(s, offs & 0xFFFFFFFF, (offs >> 32) & 0xFFFFFFFF)
    for k in range(4):
        assert torch.equal(words[:, k], want[k]), f"Philox word {k} differs"
    assert torch.isfinite(normal).all()
    # glibc's logf/cosf are within 1 ulp, so the normal is within 2 ulp of the stepwise-rounded spec; CUDA's are
    # within 1 (logf) and 2 (cosf) ulp, hence 4 on the GPU
    close, loose = (2, 4) if device == "cpu" else (4, 6)
    assert _ulps(normal, _stepwise_spec(words)).max().item() <= close
    # rng.randn_flat's torch log/cos carry their own ulp
    ref = rng.randn_flat(s, offs)
    assert _ulps(normal, ref).max().item() <= loose
    assert (normal - ref).abs().max().item() < loose * 1e-6


def test_rng_known_answer():
    # Random123 Philox4x32-10 known answer: counter 0, key 0
    _, words = glue.randn(_seed(0), torch.zeros(1, dtype=torch.int64))
    assert [int(w) for w in words[0]] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


# ----------------------------------------------------------------------------------------------
# forward vs the fp64 reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["edm", "cm"])
@pytest.mark.parametrize("sdtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scalings(dev, mode, sdtype):
    s = make_sigma(9, "per_sample", dtype=sdtype, device=dev)
    with burstkern.backend("native"):
        got = ops.edm_scalings(s) if mode == "edm" else ops.cm_scalings(s, sigma_min=0.01, sigma_data=0.7)
    want = _ref(ops.edm_scalings, s) if mode == "edm" else _ref(ops.cm_scalings, s, sigma_min=0.01, sigma_data=0.7)
    for name, g, w in zip(("c_skip", "c_out", "c_in", "c_noise"), got, want):
        assert g.shape == s.shape and g.dtype == torch.float32 and g.device.type == dev
        assert_rel_close(g, w, torch.float32, f"{mode} {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward(dev, dtype, layout, shape):
    n = shape[0]
    x, F = make(shape, dtype, layout, 1, 2.0, dev), make(shape, dtype, layout, 2, device=dev)
    y, eps = make(shape, dtype, layout, 3, device=dev), make(shape, dtype, layout, 4, device=dev)
    kind = "scalar" if shape == SHAPES[2] else "per_sample"
    s = make_sigma(n, kind, 1, device=dev)
    sn = make_sigma(n, kind, 2, dtype=torch.float64, device=dev)  # any float dtype of σ is read as it is
    with burstkern.backend("native"):
        for mode in ("edm", "cm"):
            D, d = ops.denoise_combine(x, F, s, mode=mode, return_d=True)
            rD, rd = _ref(ops.denoise_combine, x, F, s, mode=mode, return_d=True)
            assert_rel_close(D, rD, dtype, f"D {mode}")
            assert_rel_close(d, rd, dtype, f"d {mode}")
            check_out(D, x, dtype, "D")
            check_out(d, x, dtype, "d")
            assert_rel_close(ops.denoise_combine(x, F, s, mode=mode), rD, dtype, "D only")
        xn, d = ops.edm_euler_update(x, F, s, sn)
        rxn, rd = _ref(ops.edm_euler_update, x, F, s, sn)
        assert_rel_close(xn, rxn, dtype, "euler x_next")
        assert_rel_close(d, rd, dtype, "euler d")
        check_out(xn, x, dtype, "euler x_next")
        sn0 = sn.clone()
        if kind == "per_sample":
            sn0[-1] = 0.0  # last step: the Euler result
        out = ops.edm_heun_update(x, d, xn, F, s, sn0)
        assert_rel_close(out, _ref(ops.edm_heun_update, x, d, xn, F, s, sn0), dtype, "heun")
        check_out(out, x, dtype, "heun")
        for sb in (None, s * 0.5, s * 2.0):  # σ_base > σ: no noise
            out = ops.add_noise(x, s, sigma_base=sb, s_noise=1.01, noise=eps)
            assert_rel_close(out, _ref(ops.add_noise, x, s, sigma_base=sb, s_noise=1.01, noise=eps), dtype,
                             "add_noise")
            check_out(out, x, dtype, "add_noise")
        for clamp in (None, 1.0):
            for nxt in (None, sn):
                noise = None if nxt is None else eps
                out = ops.cm_update(x, F, s, sigma_next=nxt, clamp=clamp, noise=noise)
                assert_rel_close(out, _ref(ops.cm_update, x, F, s, sigma_next=nxt, clamp=clamp, noise=noise), dtype,
                                 f"cm clamp={clamp} renoise={nxt is not None}")
                check_out(out, x, dtype, "cm")
        loss = ops.edm_loss(x, F, y, s)
        assert loss.shape == (n,) and loss.dtype == dtype
        assert_rel_close(loss, _ref(ops.edm_loss, x, F, y, s), dtype, "edm_loss")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_in_kernel_noise_same_seed_as_reference(dev, dtype, layout):
    """No explicit noise: the same seed tensor gives the reference's rng.py normals in the kernel."""
    shape = (2, 3, 23, 19)
    x, F = make(shape, dtype, layout, 1, device=dev), make(shape, dtype, layout, 2, device=dev)
    s, sn = make_sigma(2, "per_sample", 1, device=dev), make_sigma(2, "scalar", 2, device=dev)
    seed = _seed(987654321, dev)
    # the burstkern_C ops directly (glue: layouts), against reference.py in fp64 with the very seed tensor
    out = BK.kernel("add_noise", "native")(x, s, s * 0.3, 1.0, None, seed)
    want = R.add_noise(x.double().cpu(), s.cpu(), s.cpu() * 0.3, 1.0, None, seed.cpu())
    assert_rel_close(out, want, dtype, "add_noise seed")
    check_out(out, x, dtype, "add_noise seed")
    out = BK.kernel("cm_update", "native")(x, F, s, SMIN, SD, sn, 1.0, None, seed)
    want = R.cm_update(x.double().cpu(), F.double().cpu(), s.cpu(), SMIN, SD, sn.cpu(), 1.0, None, seed.cpu())
    assert_rel_close(out, want, dtype, "cm_update seed")
    # the public ops: the same generator state draws the same seed on both backends
    outs = {}
    for be in ("native", "reference"):
        with burstkern.backend(be):
            g = torch.Generator(device=dev).manual_seed(11)
            xs = x if be == "native" else x.double()
            outs[be] = (ops.add_noise(xs, s, generator=g), ops.cm_update(xs, F if be == "native" else F.double(), s,
                                                                         sigma_next=sn, generator=g))
    for a, b in zip(outs["native"], outs["reference"]):
        assert_rel_close(a, b, dtype, "public op in-kernel noise")
    # reproducible, and a new seed is new noise
    with burstkern.backend("native"):
        a = ops.add_noise(x, s, generator=torch.Generator(device=dev).manual_seed(5))
        b = ops.add_noise(x, s, generator=torch.Generator(device=dev).manual_seed(5))
        c = ops.add_noise(x, s, generator=torch.Generator(device=dev).manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("shape", [(7,), (2, 1500), (2, 3, 4, 5, 3), (67, 2, 3), (130, 1), (1, 5000)])
def test_other_ranks_and_sample_walk(dev, shape):
    """Grid strides both shorter and longer than a sample (the CPU build walks like a 61-thread grid)."""
    x, F, y = (make(shape, torch.float32, seed=i, device=dev) for i in range(3))
    s = make_sigma(shape[0], "per_sample", 1, device=dev)
    with burstkern.backend("native"):
        assert_rel_close(ops.denoise_combine(x, F, s), _ref(ops.denoise_combine, x, F, s), torch.float32, "D")
        assert_rel_close(ops.edm_loss(x, F, y, s), _ref(ops.edm_loss, x, F, y, s), torch.float32, "loss")
        a = ops.add_noise(x, s, generator=torch.Generator(device=dev).manual_seed(0))
    with burstkern.backend("reference"):
        want = ops.add_noise(x, s, generator=torch.Generator(device=dev).manual_seed(0))
    assert_rel_close(a, want, torch.float32, "noise")


@pytest.mark.no_kernel_launch
def test_empty(dev):
    x = torch.empty(0, 3, 4, 4, device=dev)
    s = torch.empty(0, device=dev)
    with burstkern.backend("native"):
        assert ops.denoise_combine(x, x, s).shape == x.shape
        assert ops.edm_loss(x, x, x, s).shape == (0,)
        assert ops.add_noise(x, s, generator=torch.Generator(device=dev)).shape == x.shape


# ----------------------------------------------------------------------------------------------
# gradients vs the fp64 reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 3, 7, 5), (1, 3, 41, 37)])
def test_gradients(dev, dtype, layout, shape):
    n = shape[0]
    x, F = make(shape, dtype, layout, 1, 2.0, dev), make(shape, dtype, layout, 2, device=dev)
    y = make(shape, dtype, layout, 3, device=dev)
    gD, gd = make(shape, dtype, layout, 5, device=dev), make(shape, dtype, layout, 6, device=dev)
    s_ps = make_sigma(n, "per_sample", 1, lo=0.05, hi=20.0, device=dev)
    s_sc = make_sigma(n, "scalar", 2, lo=0.05, hi=20.0, device=dev)
    gl = make((n,), dtype, seed=7, device=dev)

    def grads(fn, inputs, cot, sigma, be):
        # the reference runs fp64 on the CPU; σ that is not differentiated is passed along as a constant
        up = be == "reference"
        with burstkern.backend(be):
            ins = [_req(t.detach().cpu().double() if up else t) for t in inputs]
            outs = fn(*ins, sigma=sigma.cpu() if up else sigma)
            outs = outs if isinstance(outs, tuple) else (outs,)
            return torch.autograd.grad(outs, ins, [c.cpu().double() if up else c for c in cot])

    cases = []
    for s in (s_ps, s_sc):  # σ differentiated: a per-sample sum, or one sum over everything
        cases += [
            ("combine edm", lambda a, b, c, sigma: ops.denoise_combine(a, b, c, return_d=True), (x, F, s), (gD, gd)),
            ("combine cm", lambda a, b, c, sigma: ops.denoise_combine(a, b, c, mode="cm", return_d=True), (x, F, s),
             (gD, gd)),
            ("combine D", lambda a, b, c, sigma: ops.denoise_combine(a, b, c), (x, F, s), (gD,)),
        ]
    cases = [case + (s_ps,) for case in cases]  # σ among the inputs: the trailing σ is unused
    for s in (s_ps, s_sc):  # σ a constant, per-sample or scalar
        cases += [
            ("combine no σ", lambda a, b, sigma: ops.denoise_combine(a, b, sigma, return_d=True), (x, F), (gD, gd), s),
            ("cm_update clamp", lambda a, b, sigma: ops.cm_update(a, b, sigma, clamp=1.0), (x, F), (gD,), s),
            ("cm_update", lambda a, b, sigma: ops.cm_update(a, b, sigma), (x, F), (gD,), s),
            ("edm_loss", lambda a, b, c, sigma: ops.edm_loss(a, b, c, sigma), (x, F, y), (gl,), s),
            ("add_noise", lambda a, e, sigma: ops.add_noise(a, sigma, noise=e), (x, y), (gD,), s),
        ]
    for name, fn, inputs, cot, sigma in cases:
        got = grads(fn, inputs, cot, sigma, "native")
        want = grads(fn, inputs, cot, sigma, "reference")
        for i, (a, b) in enumerate(zip(got, want)):
            if a.shape == x.shape:
                assert_rel_close(a, b, dtype, f"{name} grad {i}")
                if name != "add_noise":  # add_noise's x-gradient is the incoming one
                    check_out(a, x, dtype, f"{name} grad {i}")
            else:  # σ's gradient: a sum over a sample of fp32 terms from low-precision inputs
                assert a.shape == inputs[i].shape and a.dtype == inputs[i].dtype
                assert_rel_close(a, b, dtype, f"{name} grad σ", scale=5.0)


# ----------------------------------------------------------------------------------------------
# opcheck (real vs fake strides, schema, autograd) and torch.compile with the cuda backend
# ----------------------------------------------------------------------------------------------
def test_opcheck(dev):
    shape = (2, 3, 5, 4)
    x, F, y, eps, gD = (make(shape, layout="channels_last", seed=i, device=dev) for i in range(5))
    s, s0 = make_sigma(2, "per_sample", 1, device=dev), make_sigma(2, "scalar", 2, device=dev)
    seed = rng.draw_seed(torch.device(dev), torch.Generator(device=dev).manual_seed(3))
    g1 = make((2,), seed=10, device=dev)
    P = torch.ops.burstkern
    cases = [
        (P.denoise_scalings.default, (_req(s), SD, SMIN, "cm")),
        (P.denoise_combine.default, (_req(x), _req(F), _req(s), SD, SMIN, "cm", True)),
        (P.denoise_combine.default, (_req(x), _req(F), s0, SD, SMIN, "edm", False)),
        (P.denoise_combine_backward.default, (gD, gD, x, F, s, SD, SMIN, "edm", True, True)),
        (P.edm_euler_update.default, (x, F, s, s0, SD)),
        (P.edm_heun_update.default, (x, y, F, eps, s, s0, SD)),
        (P.add_noise.default, (_req(x), s, s0, 1.0, _req(eps), None)),
        (P.add_noise.default, (x, s, None, 1.0, None, seed)),
        (P.cm_update.default, (_req(x), _req(F), s, SMIN, SD, s0, 1.0, None, seed)),
        (P.cm_update_backward.default, (gD, x, F, s, SMIN, SD, 0.5)),
        (P.edm_loss.default, (_req(x), _req(F), _req(y), s, SD)),
        (P.edm_loss_backward.default, (g1, x, F, y, s, SD)),
    ]
    with burstkern.backend("native"):
        for op, args in cases:
            torch.library.opcheck(op, args)


def test_compile_fullgraph_matches_eager(dev):
    torch._dynamo.reset()
    shape = (2, 3, 6, 5)
    x, F, y, eps = (make(shape, seed=i, device=dev) for i in range(4))

    def pipeline(x, F, y, s, sn):
        D, d = ops.denoise_combine(x, F, s, return_d=True)
        xn, d1 = ops.edm_euler_update(x, F, s, sn)
        x2 = ops.edm_heun_update(x, d1, xn, D, s, sn)
        x3 = ops.cm_update(ops.add_noise(x2, s, sigma_base=sn, noise=eps), F, s, sigma_next=sn, clamp=1.5, noise=eps)
        return x3 + d, ops.edm_loss(x, F, y, s)

    comp = torch.compile(pipeline, backend="aot_eager", fullgraph=True)
    with burstkern.backend("native"):
        for i in range(2):
            s, sn = make_sigma(2, "per_sample", 10 + i, device=dev), make_sigma(2, "per_sample", 20 + i, device=dev)
            for a, b in zip(comp(x, F, y, s, sn), pipeline(x, F, y, s, sn)):
                assert torch.equal(a, b), "compiled != eager with the same kernels"


# ----------------------------------------------------------------------------------------------
# argument errors of the compiled ops (messages name the argument)
# ----------------------------------------------------------------------------------------------
def test_errors():
    x = torch.randn(2, 3, 4, 4)
    s = torch.tensor([0.5, 1.0])
    seed = _seed(1)
    with pytest.raises(RuntimeError, match=r"x must be contiguous or channels_last.*strides"):
        B.denoise_combine(x[..., ::2], x[..., ::2], s, SD, SMIN, "edm", False)
    with pytest.raises(RuntimeError, match=r"F must be laid out as x \(ChannelsLast\)"):
        B.denoise_combine(x.contiguous(memory_format=torch.channels_last), x, s, SD, SMIN, "edm", False)
    with pytest.raises(RuntimeError, match=r"F must have the shape of x \[2, 3, 4, 4\], got \[2, 3, 4, 5\]"):
        B.denoise_combine(x, torch.randn(2, 3, 4, 5), s, SD, SMIN, "edm", False)
    with pytest.raises(RuntimeError, match=r"F has dtype Half but x has Float"):
        B.edm_euler_update(x, x.half(), s, s, SD)
    with pytest.raises(RuntimeError, match=r"x must be float32, float16 or bfloat16 or float64, got Int"):
        B.denoise_combine(x.int(), x.int(), s, SD, SMIN, "edm", False)  # the CPU kernels take float64 too
    with pytest.raises(RuntimeError, match=r"sigma must have shape \[\] or \[N\] = \[2\], got \[3\]"):
        B.denoise_combine(x, x, torch.ones(3), SD, SMIN, "edm", False)
    with pytest.raises(RuntimeError, match=r"sigma_next must be a floating-point tensor, got Long"):
        B.edm_euler_update(x, x, s, torch.ones(2, dtype=torch.int64), SD)
    with pytest.raises(RuntimeError, match=r"add_noise needs noise or seed"):
        B.add_noise(x, s, None, 1.0, None, None)
    with pytest.raises(RuntimeError, match=r"seed must be an int64 tensor with one element, got dtype Int"):
        B.add_noise(x, s, None, 1.0, None, seed.int())
    with pytest.raises(RuntimeError, match=r"noise must have the shape of x"):
        B.cm_update(x, x, s, SMIN, SD, s, None, torch.randn(2, 3), None)
    with pytest.raises(RuntimeError, match=r"x_noisy must have a batch dimension"):
        B.edm_loss(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0), s, SD)
    with pytest.raises(RuntimeError, match=r"offsets must be int64, got Float"):
        B.denoise_randn(seed, torch.zeros(3))
    # the cuda backend itself stays GPU-only
    if not torch.cuda.is_available():
        with burstkern.backend("cuda"), pytest.raises(BK.BackendUnavailableError,
                                                      match="runs CUDA tensors.*use backend 'native'"):
            ops.denoise_combine(x, x, s)


def test_poison_switch_catches_unwritten_elements():
    """The poisoning the tests rely on works: a fresh output is all NaN until a kernel writes it."""
    prev = B.set_poison_outputs(True)
    try:
        empty_out, _ = B.denoise_combine(torch.randn(0, 3), torch.randn(0, 3), torch.tensor(1.0), SD, SMIN, "edm",
                                         False)
        assert empty_out.numel() == 0
        D, d = B.denoise_combine(torch.randn(2, 3), torch.randn(2, 3), torch.tensor(1.0), SD, SMIN, "edm", True)
        assert torch.isfinite(D).all() and torch.isfinite(d).all()
        assert rel_err(torch.full((2,), float("nan")), torch.ones(2)) == float("inf")
    finally:
        B.set_poison_outputs(prev)
    assert B.set_poison_outputs(prev) == prev


# ----------------------------------------------------------------------------------------------
# GPU only: launches, CUDA graphs, large shapes
# ----------------------------------------------------------------------------------------------
def _kernels(fn):
    return cuda_kernel_names(fn)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_launch_per_op(dtype):
    shape = (4, 3, 96, 80)
    x, F, y, eps, gD = (make(shape, dtype, seed=i, device="cuda") for i in range(5))
    s, sn = make_sigma(4, "per_sample", 1, device="cuda"), make_sigma(4, "scalar", 2, device="cuda")
    seed = _seed(42, "cuda")
    g1 = make((4,), dtype, seed=9, device="cuda")
    P = torch.ops.burstkern
    calls = {
        "scalings": lambda: P.denoise_scalings(s, SD, SMIN, "cm"),
        "combine": lambda: P.denoise_combine(x, F, s, SD, SMIN, "edm", True),
        "combine_backward": lambda: P.denoise_combine_backward(gD, gD, x, F, s, SD, SMIN, "edm", True, False),
        "combine_backward σ": lambda: P.denoise_combine_backward(gD, gD, x, F, s, SD, SMIN, "cm", True, True),
        "euler": lambda: P.edm_euler_update(x, F, s, sn, SD),
        "heun": lambda: P.edm_heun_update(x, y, F, eps, s, sn, SD),
        "add_noise": lambda: P.add_noise(x, s, sn, 1.0, None, seed),
        "cm_update": lambda: P.cm_update(x, F, s, SMIN, SD, sn, 1.0, None, seed),
        "cm_update_backward": lambda: P.cm_update_backward(gD, x, F, s, SMIN, SD, 1.0),
        "edm_loss": lambda: P.edm_loss(x, F, y, s, SD),
        "edm_loss_backward": lambda: P.edm_loss_backward(g1, x, F, y, s, SD),
    }
    with burstkern.backend("native"):
        for name, fn in calls.items():
            names = _kernels(fn)
            assert len(names) == 1, f"{name}: {len(names)} kernels {names}"


@requires_cuda
def test_cuda_graph_replay_fresh_noise_and_matches_eager():
    x = torch.zeros(2, 3, 64, 64, device="cuda")
    s = torch.tensor([1.0, 2.0], device="cuda")
    seed = _seed(0, "cuda")
    with burstkern.backend("native"):
        ops.add_noise(x, s)
        torch.ops.burstkern.add_noise(x, s, None, 1.0, None, seed)
        torch.cuda.synchronize()
        g_public, g_seeded = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(g_public):
            out = ops.add_noise(x, s)  # draws its seed on the device inside the graph
        with torch.cuda.graph(g_seeded):
            out_seeded = torch.ops.burstkern.add_noise(x, s, None, 1.0, None, seed)
        g_public.replay()
        a = out.clone()
        g_public.replay()
        b = out.clone()
        assert torch.isfinite(a).all() and not torch.equal(a, b), "each replay draws fresh noise"
        assert abs(a[0].std().item() - 1) < 0.05 and abs(a[1].std().item() - 2) < 0.1
        for value in (7, 123456789):
            seed.fill_(value)
            g_seeded.replay()
            eager = torch.ops.burstkern.add_noise(x, s, None, 1.0, None, _seed(value, "cuda"))
            assert torch.equal(out_seeded, eager), "graph replay != eager for the same seed"
            want = R.add_noise(x.cpu().double(), s.cpu(), None, 1.0, None, _seed(value))
            assert_rel_close(out_seeded, want, torch.float32, "replay vs reference")


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_gpu(dtype):
    shape = (4, 3, 384, 384)
    x, F, y = (make(shape, dtype, seed=i, device="cuda") for i in range(3))
    s = make_sigma(4, "per_sample", 1, device="cuda")
    with burstkern.backend("native"):
        D, d = ops.denoise_combine(x, F, s, return_d=True)
        loss = ops.edm_loss(x, F, y, s)
        noisy = ops.add_noise(x, s, generator=torch.Generator(device="cuda").manual_seed(1))
    rD, rd = _ref(ops.denoise_combine, x, F, s, return_d=True)
    assert_rel_close(D, rD, dtype, "D large")
    assert_rel_close(d, rd, dtype, "d large")
    assert_rel_close(loss, _ref(ops.edm_loss, x, F, y, s), dtype, "loss large")
    with burstkern.backend("reference"):
        want = ops.add_noise(x.float(), s, generator=torch.Generator(device="cuda").manual_seed(1))
    assert_rel_close(noisy, want, dtype, "noise large")
