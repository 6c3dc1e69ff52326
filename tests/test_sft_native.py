"""The CPU kernels of the compiled sft ops (csrc/sft/sft_cpu_kernels*.cpp) against the fp64 reference, and the
reference's own batch-0 fixes.

The compiled ops are ``torch.ops.burstkern_C.*`` on CPU tensors (the built burstkern._C), or a dev build of the
same schemas: ``BURSTKERN_NATIVE_LIB=/path/lib.so BURSTKERN_NATIVE_NS=<namespace>``. Without either the native
tests skip; the reference tests always run.

Tolerances (relative norm against the reference computed in fp64): fp64 1e-12, fp32 2e-5, bf16/fp16 1e-2.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from burstkern.ops.sft import reference as R
from utils import ContiguousOps, native_namespace

TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
FORMS = ("spatial", "channel", "merged", "merged_channel", "spatial_gamma_channel_beta",
         "channel_gamma_spatial_beta", "no_beta")
ACTS = (0, 1, 2, 3)  # none, silu, relu, leaky_relu(slope)
SLOPE = 0.1

# ----------------------------------------------------------------------------------------------------------------
# the compiled ops
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def K():
    ns, why = native_namespace()
    if ns is None:
        pytest.skip(why)
    x = torch.randn(1, 2, 2, 2)
    try:  # the schema of this session (sft_group_norm_backward takes eps)
        out, mean, rstd = ns.sft_group_norm(x, x, None, 1, None, None, 1e-5, 0, 0.0)
        ns.sft_group_norm_backward(x, x, x, None, 1, None, None, mean, rstd, 1e-5, 0, 0.0)
        ns.sft_modulate(x.double(), x.double(), None, 0, 0.0)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"the compiled sft ops predate the fp64 CPU kernels / the schema ({type(exc).__name__}: "
                    f"{str(exc)[:200]})")
    return ns


# ----------------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------------
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if b.numel() == 0:
        return 0.0 if a.numel() == 0 else float("inf")
    d = (a - b).norm()
    n = b.norm()
    return float(d / n) if n > 0 else float(d)


def _rand(shape, dtype, layout, gen, scale=1.0, shift=0.0):
    """A tensor of ``shape`` laid out as ``layout``: contiguous, channels_last, or a strided view."""
    if layout == "strided":
        big = torch.randn(*shape[:-1], 2 * shape[-1] + 1, dtype=torch.float64, generator=gen)
        t = (big * scale + shift).to(dtype)[..., 1::2]
        assert not t.is_contiguous()
        return t
    t = (torch.randn(*shape, dtype=torch.float64, generator=gen) * scale + shift).to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def make(form, dtype, layout, N=2, C=12, H=5, W=7, affine=False, seed=0, x_shift=0.5):
    g = torch.Generator().manual_seed(seed)
    x = _rand((N, C, H, W), dtype, layout, g, 2.0, x_shift)
    sp, pc = (N, C, H, W), (N, C, 1, 1)
    mk = lambda shape: _rand(shape, dtype, layout, g, 0.5)  # noqa: E731
    gamma, beta = {
        "spatial": lambda: (mk(sp), mk(sp)),
        "channel": lambda: (mk(pc), mk(pc)),
        "merged": lambda: (mk((N, 2 * C, H, W)), None),
        "merged_channel": lambda: (mk((N, 2 * C, 1, 1)), None),
        "spatial_gamma_channel_beta": lambda: (mk(sp), mk(pc)),
        "channel_gamma_spatial_beta": lambda: (mk(pc), mk(sp)),
        "no_beta": lambda: (mk(sp), None),
    }[form]()
    w = (torch.randn(C, dtype=torch.float64, generator=g) + 1).to(dtype) if affine else None
    b = torch.randn(C, dtype=torch.float64, generator=g).to(dtype) if affine else None
    dy = _rand((N, C, H, W), dtype, layout, g)
    return x, gamma, beta, w, b, dy


def up(t):
    return None if t is None else t.double()


def expect_layout(out, x):
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if cl:
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()


def check(got, want, dtype, what):
    if want is None:
        assert got.numel() == 0, f"{what}: expected an empty placeholder, got {tuple(got.shape)}"
        return
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == dtype or what in ("mean", "rstd"), f"{what}: dtype {got.dtype}"
    err = rel(got, want)
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e} > {TOL[dtype]:.0e} ({dtype})"


# ----------------------------------------------------------------------------------------------------------------
# reference fixes (always run)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("act", [0, 1])
def test_reference_batch0_backward(form, act):
    """Batch-0 backward of sft_modulate (with beta) and sft_group_norm: zeros-shaped gradients, no reshape error
    (-1 cannot be inferred from 0 elements) and no output aliasing the incoming gradient."""
    x, gamma, beta, w, b, dy = make(form, torch.float32, "contiguous", N=0, affine=True)
    gx, gg, gb = R.sft_modulate_backward(dy, x, gamma, beta, act, SLOPE)
    assert gx.shape == x.shape and gg.shape == gamma.shape
    assert (gb is None) == (beta is None) and (gb is None or gb.shape == beta.shape)
    out, mean, rstd = R.sft_group_norm(x, gamma, beta, 3, w, b, 1e-5, act, SLOPE)
    assert out.shape == x.shape and mean.shape == (0, 3) and rstd.shape == (0, 3)
    grads = R.sft_group_norm_backward(dy, x, gamma, beta, 3, w, b, 1e-5, act, SLOPE)
    assert grads[0].shape == x.shape and grads[1].shape == gamma.shape
    assert grads[3].shape == w.shape and torch.equal(grads[3], torch.zeros_like(w))
    assert grads[4].shape == b.shape and torch.equal(grads[4], torch.zeros_like(b))


def test_reference_batch0_through_autograd():
    """The public ops on the reference backend: batch-0 forward + backward, act None with spatial beta (where
    d/d beta is the incoming gradient itself, which a custom op may not return)."""
    import burstkern
    from burstkern import ops

    for gshape, bshape in itertools.product([(0, 4, 3, 3), (0, 4, 1, 1)], repeat=2):
        x = torch.randn(0, 4, 3, 3, requires_grad=True)
        g = torch.randn(*gshape, requires_grad=True)
        b = torch.randn(*bshape, requires_grad=True)
        with burstkern.backend("reference"):
            for act in (None, "silu"):
                ops.sft_modulate(x, g, b, act=act).sum().backward()
                ops.sft_group_norm(x, g, b, 2, act=act).sum().backward()
        assert x.grad.shape == x.shape and g.grad.shape == g.shape and b.grad.shape == b.shape


def test_reference_act_none_spatial_beta_grad_not_aliased():
    x, gamma, beta, _, _, dy = make("spatial", torch.float32, "contiguous")
    _, _, gb = R.sft_modulate_backward(dy, x, gamma, beta, 0, SLOPE)
    assert gb.data_ptr() != dy.data_ptr()
    torch.testing.assert_close(gb, dy)


# ----------------------------------------------------------------------------------------------------------------
# native kernels vs the fp64 reference
# ----------------------------------------------------------------------------------------------------------------
def run_all(K, form, dtype, layout, act, affine, G=3, **kw):
    x, gamma, beta, w, b, dy = make(form, dtype, layout, affine=affine, **kw)
    # sft_modulate
    out = K.sft_modulate(x, gamma, beta, act, SLOPE)
    expect_layout(out, x)
    check(out, R.sft_modulate(x.double(), gamma.double(), up(beta), act, SLOPE), dtype, "sft_modulate")
    gx, gg, gb = K.sft_modulate_backward(dy, x, gamma, beta, act, SLOPE)
    rx, rg, rb = R.sft_modulate_backward(dy.double(), x.double(), gamma.double(), up(beta), act, SLOPE)
    expect_layout(gx, x)
    check(gx, rx, dtype, "modulate grad_x")
    check(gg, rg, dtype, "modulate grad_gamma")
    check(gb, rb, dtype, "modulate grad_beta")
    # sft_group_norm
    out, mean, rstd = K.sft_group_norm(x, gamma, beta, G, w, b, 1e-5, act, SLOPE)
    ro, rm, rr = R.sft_group_norm(x.double(), gamma.double(), up(beta), G, up(w), up(b), 1e-5, act, SLOPE)
    expect_layout(out, x)
    assert mean.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    check(out, ro, dtype, "sft_group_norm")
    stat_tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert rel(mean, rm) <= stat_tol and rel(rstd, rr) <= stat_tol
    grads = K.sft_group_norm_backward(dy, x, gamma, beta, G, w, b, mean, rstd, 1e-5, act, SLOPE)
    refs = R.sft_group_norm_backward(dy.double(), x.double(), gamma.double(), up(beta), G, up(w), up(b), 1e-5, act,
                                     SLOPE)
    expect_layout(grads[0], x)
    for name, got, want in zip(("grad_x", "grad_gamma", "grad_beta", "grad_weight", "grad_bias"), grads, refs):
        check(got, want, dtype, f"group_norm {name}")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("form", FORMS)
def test_native_every_form_act(K, dtype, layout, form):
    if layout == "strided":
        # burstkern_C's ops take x in contiguous / channels_last; the native glue makes other layouts contiguous
        K = ContiguousOps(K)
    for act, affine in itertools.product(ACTS, (False, True)):
        run_all(K, form, dtype, layout, act, affine)


@pytest.mark.parametrize("shape", [dict(N=1, C=3, H=1, W=9, G=1), dict(N=1, C=17, H=3, W=3, G=17),
                                   dict(N=3, C=40, H=1, W=1, G=8), dict(N=2, C=33, H=11, W=13, G=11),
                                   dict(N=1, C=300, H=2, W=3, G=4)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_native_odd_sizes(K, shape, layout):
    """C not a multiple of any vector width, one position, one channel per group, rows longer than a block."""
    for dtype, form, act in itertools.product((torch.float32, torch.bfloat16), ("spatial", "channel", "merged"),
                                              (0, 1)):
        run_all(K, form, dtype, layout, act, True, **shape)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_native_large_mean(K, layout):
    """fp32 groups with mean 1e4 and std ~2: statistics and output without cancellation (shifted sums in double;
    x − mean taken against the mean in two float parts). The backward receives the fp32 [N, G] mean of the schema,
    whose rounding (ulp(1e4)/2 against std 2) bounds any fp32 kernel, so its gradients are checked at mean 300."""
    x, gamma, beta, w, b, _ = make("spatial", torch.float32, layout, affine=True, x_shift=1e4)
    out, mean, rstd = K.sft_group_norm(x, gamma, beta, 3, w, b, 1e-5, 1, SLOPE)
    ro, rm, rr = R.sft_group_norm(x.double(), gamma.double(), beta.double(), 3, w.double(), b.double(), 1e-5, 1,
                                  SLOPE)
    check(out, ro, torch.float32, "sft_group_norm at mean 1e4")
    assert rel(mean, rm) <= 1e-7 and rel(rstd, rr) <= 1e-6
    run_all(K, "spatial", torch.float32, layout, 1, True, x_shift=300.0)


@pytest.mark.parametrize("form", ["spatial", "channel", "merged"])
def test_native_batch0(K, form):
    x, gamma, beta, w, b, dy = make(form, torch.float32, "contiguous", N=0, affine=True)
    out = K.sft_modulate(x, gamma, beta, 1, SLOPE)
    assert out.shape == x.shape
    gx, gg, gb = K.sft_modulate_backward(dy, x, gamma, beta, 1, SLOPE)
    assert gx.shape == x.shape and gg.shape == gamma.shape and (beta is None or gb.shape == beta.shape)
    out, mean, rstd = K.sft_group_norm(x, gamma, beta, 3, w, b, 1e-5, 1, SLOPE)
    assert out.shape == x.shape and mean.shape == (0, 3)
    grads = K.sft_group_norm_backward(dy, x, gamma, beta, 3, w, b, mean, rstd, 1e-5, 1, SLOPE)
    assert grads[0].shape == x.shape and grads[1].shape == gamma.shape
    assert torch.equal(grads[3], torch.zeros_like(w)) and torch.equal(grads[4], torch.zeros_like(b))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("form", ["spatial", "channel"])
def test_native_thread_count_independent(K, layout, form):
    """Bitwise the same results with 1 and 2 threads (fixed work units, fixed summation order)."""
    x, gamma, beta, w, b, dy = make(form, torch.float32, layout, N=2, C=64, H=24, W=20, affine=True)
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, mean, rstd = K.sft_group_norm(x, gamma, beta, 8, w, b, 1e-5, 1, SLOPE)
            grads = K.sft_group_norm_backward(dy, x, gamma, beta, 8, w, b, mean, rstd, 1e-5, 1, SLOPE)
            mod = K.sft_modulate_backward(dy, x, gamma, beta, 1, SLOPE)
            results.append((out, mean, rstd, *grads, *mod))
    finally:
        torch.set_num_threads(prev)
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


def test_native_backend_public_ops():
    """burstkern.ops under the native backend (CPU tensors run these kernels), with autograd."""
    import burstkern
    from burstkern import ops

    try:
        with burstkern.backend("native"):
            ops.sft_modulate(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    except Exception as exc:  # noqa: BLE001 - no native backend / no CPU kernels in this build
        pytest.skip(f"backend 'native' cannot run on CPU here ({type(exc).__name__}: {str(exc)[:300]})")
    x, gamma, beta, w, b, dy = make("spatial", torch.float32, "channels_last", affine=True)
    leaves = [t.clone().requires_grad_() for t in (x, gamma, beta, w, b)]
    with burstkern.backend("native"):
        out = ops.sft_group_norm(leaves[0], leaves[1], leaves[2], 3, weight=leaves[3], bias=leaves[4], act="silu")
    out.backward(dy)
    ref_leaves = [t.double().requires_grad_() for t in (x, gamma, beta, w, b)]
    with burstkern.backend("reference"):
        ref = ops.sft_group_norm(ref_leaves[0], ref_leaves[1], ref_leaves[2], 3, weight=ref_leaves[3],
                                 bias=ref_leaves[4], act="silu")
    ref.backward(dy.double())
    check(out.detach(), ref.detach(), torch.float32, "native sft_group_norm")
    for name, a, r in zip(("x", "gamma", "beta", "weight", "bias"), leaves, ref_leaves):
        check(a.grad, r.grad, torch.float32, f"native grad {name}")
