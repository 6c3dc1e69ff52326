"""The CPU kernels of the compiled denoise ops (csrc/denoise/denoise_cpu_kernels*.cpp) against the fp64
reference, their in-kernel noise against rng.py's spec, and the reference / Triton fixes (batch-0 σ gradient,
NaN σ in add_noise).

The compiled ops are ``torch.ops.burstkern_C.*`` on CPU tensors (the built burstkern._C), or a dev build of the
same schemas: ``BURSTKERN_NATIVE_LIB=/path/lib.so BURSTKERN_NATIVE_NS=<namespace>``. Without either the native
tests skip; the reference and Triton tests always run (Triton on the CPU under TRITON_INTERPRET=1, conftest.py).
"""

from __future__ import annotations


import pytest
import torch

from burstkern.ops.denoise import reference as R
from utils import ContiguousOps, native_namespace
from burstkern.ops.denoise import rng

TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
SD, SMIN = 0.5, 0.002
SEED = torch.tensor([0x123456789ABCDEF], dtype=torch.int64)

# ----------------------------------------------------------------------------------------------------------------
# the compiled ops
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def K():
    ns, why = native_namespace()
    if ns is None:
        pytest.skip(why)
    x = torch.randn(2, 3, dtype=torch.float64)
    try:  # this session's schemas (str mode) and the fp64 CPU kernels
        ns.denoise_combine(x, x, torch.ones(2, dtype=torch.float64), SD, SMIN, "edm", True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"the compiled denoise ops predate the CPU kernels / the schema ({type(exc).__name__}: "
                    f"{str(exc)[:200]})")
    return ns


def randn_op(K):
    """The CPU draw at explicit offsets: (normals, Philox words or None)."""
    for name in ("denoise_randn", "randn"):
        try:
            op = getattr(K, name)
        except (AttributeError, RuntimeError):
            continue

        def draw(seed, offsets, op=op):
            r = op(seed, offsets)
            return (r[0], r[1] if len(r) > 1 else None) if isinstance(r, (tuple, list)) else (r, None)

        return draw
    pytest.skip("the compiled library exposes no CPU draw (denoise_randn)")


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def rel(a, b) -> float:
    a, b = a.double(), b.double()
    if b.numel() == 0:
        return 0.0 if a.numel() == 0 else float("inf")
    n = b.norm()
    return float((a - b).norm() / n) if n > 0 else float((a - b).norm())


def check(got, want, dtype, what, tol=None):
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = rel(got, want)
    tol = TOL[dtype] if tol is None else tol
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e} ({dtype})"


def expect_layout(out, x):
    cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last) if cl else out.is_contiguous()


def tensors(dtype, layout, shape=(3, 5, 7, 9), count=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        if layout == "strided":
            t = torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64, generator=g).to(dtype)[..., ::2]
        else:
            t = torch.randn(*shape, dtype=torch.float64, generator=g).to(dtype)
            if layout == "channels_last":
                t = t.contiguous(memory_format=torch.channels_last)
        out.append(t)
    return out


def sigmas(N, per_sample, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    sd = torch.float32 if dtype != torch.float64 else torch.float64
    if not per_sample:
        return torch.tensor(0.7, dtype=sd), torch.tensor(0.3, dtype=sd)
    s = torch.rand(N, dtype=torch.float64, generator=g) + 0.1
    s2 = torch.rand(N, dtype=torch.float64, generator=g) * 0.5
    s2[0] = 0.0  # a last step (σ_next = 0)
    return s.to(sd), s2.to(sd)


d64 = lambda t: None if t is None else t.double()  # noqa: E731

# ----------------------------------------------------------------------------------------------------------------
# reference / Triton fixes (always run)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("with_d", [True, False])
def test_reference_batch0_sigma_grad(per_sample, with_d):
    x = torch.randn(0, 3, 4, 4)
    s = torch.rand(0) if per_sample else torch.rand(())
    gx, gF, gs = R.denoise_combine_backward(x, x if with_d else None, x, x, s, SD, SMIN, "edm", True)
    assert gx.shape == x.shape and gF.shape == x.shape and gs.shape == s.shape
    assert torch.equal(gs, torch.zeros_like(s))


def test_reference_batch0_through_autograd():
    import burstkern
    from burstkern import ops

    for s in (torch.rand(0, requires_grad=True), torch.rand((), requires_grad=True)):
        x = torch.randn(0, 3, 4, 4, requires_grad=True)
        F = torch.randn(0, 3, 4, 4, requires_grad=True)
        with burstkern.backend("reference"):
            D, d = ops.denoise_combine(x, F, s, return_d=True)
        (D.sum() + d.sum()).backward()
        assert s.grad.shape == s.shape and torch.equal(s.grad, torch.zeros_like(s))


def test_triton_add_noise_nan_sigma_propagates():
    """tl.maximum(NaN, 0) is 0: the Triton add_noise returned x (zero noise) for a NaN σ. NaN never passes."""
    from burstkern.ops.denoise import triton as T

    x = torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([float("nan"), 0.5])
    for noise, seed in ((None, SEED), (torch.randn(2, 3, 4, 4), None)):
        out = T.add_noise(x, sigma, None, 1.0, noise, seed)
        ref = R.add_noise(x, sigma, None, 1.0, noise, seed)
        assert out[0].isnan().all() and ref[0].isnan().all()
        assert not out[1].isnan().any()
    out = T.cm_update(x, x, torch.ones(2), SMIN, SD, sigma, None, None, SEED)
    assert out[0].isnan().all() and not out[1].isnan().any()


# ----------------------------------------------------------------------------------------------------------------
# native kernels vs the fp64 reference
# ----------------------------------------------------------------------------------------------------------------
def run_all(K, dtype, layout, per_sample, mode, shape=(3, 5, 7, 9)):
    x, F, y, nz, g1, g2 = tensors(dtype, layout, shape)
    N = shape[0]
    s, s2 = sigmas(N, per_sample, dtype)
    D, d = K.denoise_combine(x, F, s, SD, SMIN, mode, True)
    rD, rd = R.denoise_combine(d64(x), d64(F), d64(s), SD, SMIN, mode, True)
    expect_layout(D, x)
    check(D, rD, dtype, "combine D")
    check(d, rd, dtype, "combine d")
    D1, d1 = K.denoise_combine(x, F, s, SD, SMIN, mode, False)
    assert d1.numel() == 0 and torch.equal(D1, D)
    for use_gd in (False, True):
        gd = g2 if use_gd else torch.empty(0, dtype=dtype)
        gx, gF, gs = K.denoise_combine_backward(g1, gd, x, F, s, SD, SMIN, mode, use_gd, True)
        rgx, rgF, rgs = R.denoise_combine_backward(d64(g1), d64(g2) if use_gd else None, d64(x), d64(F), d64(s),
                                                   SD, SMIN, mode, True)
        check(gx, rgx, dtype, f"combine grad_x (grad_d {use_gd})")
        check(gF, rgF, dtype, f"combine grad_F (grad_d {use_gd})")
        check(gs, rgs, dtype, f"combine grad_sigma (grad_d {use_gd})")
        assert gs.dtype == s.dtype
        _, _, none = K.denoise_combine_backward(g1, gd, x, F, s, SD, SMIN, mode, use_gd, False)
        assert none.numel() == 0
    sk, so, si, sn = K.denoise_scalings(s, SD, SMIN, mode)
    for got, want in zip((sk, so, si, sn), R.scalings(d64(s), SD, SMIN, mode)):
        check(got, want, torch.float64 if s.dtype == torch.float64 else torch.float32, "scalings")
    if mode == "cm":
        for clamp in (None, 0.5):
            out = K.cm_update(x, F, s, SMIN, SD, s2, clamp, nz, None)
            check(out, R.cm_update(d64(x), d64(F), d64(s), SMIN, SD, d64(s2), clamp, d64(nz), None), dtype, "cm")
            out = K.cm_update(x, F, s, SMIN, SD, None, clamp, None, None)
            check(out, R.cm_update(d64(x), d64(F), d64(s), SMIN, SD, None, clamp, None, None), dtype, "cm x0")
            gx, gF = K.cm_update_backward(g1, x, F, s, SMIN, SD, clamp)
            rgx, rgF = R.cm_update_backward(d64(g1), d64(x), d64(F), d64(s), SMIN, SD, clamp)
            check(gx, rgx, dtype, "cm grad_x")
            check(gF, rgF, dtype, "cm grad_F")
        return
    xn, dd = K.edm_euler_update(x, F, s, s2, SD)
    rxn, rdd = R.edm_euler_update(d64(x), d64(F), d64(s), d64(s2), SD)
    expect_layout(xn, x)
    check(xn, rxn, dtype, "euler x_next")
    check(dd, rdd, dtype, "euler d")
    out = K.edm_heun_update(x, F, y, nz, s, s2, SD)
    expect_layout(out, x)
    check(out, R.edm_heun_update(d64(x), d64(F), d64(y), d64(nz), d64(s), d64(s2), SD), dtype, "heun")
    out = K.add_noise(x, s, s2, 1.1, nz, None)
    check(out, R.add_noise(d64(x), d64(s), d64(s2), 1.1, d64(nz), None), dtype, "add_noise")
    loss = K.edm_loss(x, F, y, s, SD)
    check(loss, R.edm_loss(d64(x), d64(F), d64(y), d64(s), SD), dtype, "edm_loss")
    assert loss.dtype == dtype and loss.shape == (N,)
    gl = torch.rand(N, dtype=dtype) if per_sample else torch.rand((), dtype=dtype)
    for name, got, want in zip(("x", "F", "y"), K.edm_loss_backward(gl, x, F, y, s, SD),
                               R.edm_loss_backward(d64(gl), d64(x), d64(F), d64(y), d64(s), SD)):
        check(got, want, dtype, f"edm_loss grad_{name}")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("mode", ["edm", "cm"])
def test_native_ops(K, dtype, layout, per_sample, mode):
    if layout == "strided":
        # burstkern_C's ops take contiguous / channels_last tensors (the native glue makes other layouts
        # contiguous, as it does here); a strided one gets the clear error
        if getattr(K, "name", None) == "burstkern_C":
            x = tensors(dtype, layout, count=1)[0]
            with pytest.raises(RuntimeError, match="x must be contiguous or channels_last"):
                K.edm_euler_update(x, x, torch.tensor(0.7), torch.tensor(0.3), SD)
        K = ContiguousOps(K)
    run_all(K, dtype, layout, per_sample, mode)




@pytest.mark.parametrize("shape", [(1, 1), (2, 40001), (5, 3, 1, 17), (1, 4, 130, 131)], ids=str)
def test_native_odd_sizes(K, shape):
    """One element, samples longer than a work unit (16384 elements), ranks other than 4."""
    for dtype in (torch.float32, torch.bfloat16):
        run_all(K, dtype, "contiguous", True, "edm", shape)


def test_native_batch0(K):
    x = torch.randn(0, 3, 4, 4)
    for s in (torch.rand(0), torch.rand(())):
        D, d = K.denoise_combine(x, x, s, SD, SMIN, "edm", True)
        assert D.shape == x.shape and d.shape == x.shape
        gx, gF, gs = K.denoise_combine_backward(x, x, x, x, s, SD, SMIN, "edm", True, True)
        assert gx.shape == x.shape and gs.shape == s.shape and torch.equal(gs, torch.zeros_like(s))
    assert K.edm_loss(x, x, x, torch.rand(0), SD).shape == (0,)
    assert K.add_noise(x, torch.rand(0), None, 1.0, None, SEED).shape == x.shape


def test_native_nan_sigma(K):
    x = torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([float("nan"), 0.5])
    out = K.add_noise(x, sigma, None, 1.0, None, SEED)
    assert out[0].isnan().all() and not out[1].isnan().any()


# ----------------------------------------------------------------------------------------------------------------
# in-kernel noise: the spec of rng.py
# ----------------------------------------------------------------------------------------------------------------
def ulp32(t):
    t = t.float().abs()
    return torch.nextafter(t, torch.full_like(t, float("inf"))) - t


def test_native_randn_matches_spec(K):
    """Philox words bit for bit; the Box-Muller normals to a few float32 ulp (log/cos/sqrt rounding differ between
    libm, Sleef, CUDA and the kernel's polynomials; rng.py's spec leaves them to float32 rounding)."""
    draw = randn_op(K)
    offsets = torch.cat([torch.arange(70000), torch.tensor([2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 7,
                                                              2**62 + 3])])
    for seed in (SEED, torch.tensor([0]), torch.tensor([2**62 - 1])):
        normals, words = draw(seed, offsets)
        spec = rng.randn_flat(seed, offsets)
        if words is not None:
            r = rng.philox(seed, offsets & 0xFFFFFFFF, (offsets >> 32) & 0xFFFFFFFF)
            assert torch.equal(words, torch.stack(r, -1))
        err = (normals - spec).abs()
        assert (err <= 8 * ulp32(spec) + 4e-7).all(), f"max |normal - spec| {err.max().item():.2e}"


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16), ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_native_noise_is_the_spec_stream(K, dtype, layout):
    """add_noise / cm_update with a seed: x + scale·ε with ε = rng.randn(seed, x.shape) at logical (row-major)
    indices (a channels_last x gets the noise of its contiguous copy)."""
    x = tensors(dtype, layout, count=1)[0]
    N = x.shape[0]
    s = torch.rand(N, dtype=torch.float64).to(torch.float32) + 0.2
    spec = rng.randn(SEED, x.shape)
    out = K.add_noise(x, s, None, 1.0, None, SEED)
    expect_layout(out, x)
    eps = ((out.double() - x.double()) / s.double().view(-1, 1, 1, 1))
    tol = {torch.float64: 1e-6, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    assert rel(eps, spec) <= tol
    out = K.cm_update(x, x, s, SMIN, SD, s, None, None, SEED)
    ref = R.cm_update(x.double(), x.double(), s.double(), SMIN, SD, s.double(), None, None, SEED)
    assert rel(out, ref) <= (1e-6 if dtype != torch.bfloat16 else 1e-2)


def test_native_thread_count_independent(K):
    """Bitwise the same with 1 and 2 threads, reductions included."""
    x, F, y, g1, g2, _ = tensors(torch.float32, "contiguous", shape=(3, 3, 96, 97))
    s, s2 = sigmas(3, True, torch.float32)
    prev = torch.get_num_threads()
    res = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res.append((*K.denoise_combine_backward(g1, g2, x, F, s, SD, SMIN, "edm", True, True),
                        K.edm_loss(x, F, y, s, SD), K.add_noise(x, s, None, 1.0, None, SEED),
                        K.edm_heun_update(x, F, y, g1, s, s2, SD)))
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(*res):
        assert torch.equal(a, b)


def test_native_backend_public_ops():
    import burstkern
    from burstkern import ops

    try:
        with burstkern.backend("native"):
            ops.edm_heun_update(*(torch.zeros(1, 1),) * 4, torch.ones(1), torch.ones(1))
    except Exception as exc:  # noqa: BLE001 - no native backend / no CPU kernels in this build
        pytest.skip(f"backend 'native' cannot run on CPU here ({type(exc).__name__}: {str(exc)[:300]})")
    x, F, y, nz = tensors(torch.float32, "channels_last", count=4)
    s, s2 = sigmas(3, True, torch.float32)
    with burstkern.backend("native"):
        out = ops.edm_heun_update(x, F, y, nz, s, s2)
    with burstkern.backend("reference"):
        ref = ops.edm_heun_update(x.double(), F.double(), y.double(), nz.double(), s.double(), s2.double())
    check(out, ref, torch.float32, "native edm_heun_update")
    leaves = [t.clone().requires_grad_() for t in (x, F)]
    sl = s.clone().requires_grad_()
    with burstkern.backend("native"):
        D, d = ops.denoise_combine(leaves[0], leaves[1], sl, return_d=True)
    (D * g1_like(D)).sum().backward()
    rl = [t.double().requires_grad_() for t in (x, F)]
    rs = s.double().requires_grad_()
    with burstkern.backend("reference"):
        rD, rd = ops.denoise_combine(rl[0], rl[1], rs, return_d=True)
    (rD * g1_like(rD)).sum().backward()
    for a, b in zip(leaves + [sl], rl + [rs]):
        check(a.grad, b.grad, torch.float32, "native denoise_combine grads")


def g1_like(t):
    return torch.linspace(-1, 1, t.numel(), dtype=t.dtype).reshape(t.shape)
