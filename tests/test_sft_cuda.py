"""The cuda backend of the sft ops (csrc/sft/, burstkern/ops/sft/cuda.py).

The CUDA kernels and the CPU build of the same ``burstkern_C`` ops run the same element code and the same tile walk
(element.cuh, functors.cuh: which elements each thread of each block visits, the vector lanes, the block's
reduction tree and the fixed-order partials), so most of it is tested here on the CPU: the ``cpu``
parametrisation lets the ``cuda`` backend take CPU tensors (through native.py's glue into the CPU build, outputs
NaN-poisoned before the kernels write, blocks shrunk to 64 elements so small inputs cross chunk boundaries) and
pins it to the fp64 reference through the public ops: forward and every gradient, fp32/fp16/bf16, odd sizes, N=1,
H or W = 1, groups 1 / C / in between, spatial / per-channel / merged / mixed gamma and beta, every activation,
contiguous / channels_last / channel-sliced / cropped inputs, 16-byte-vector and scalar paths, several channel
tiles. The ``cuda`` parametrisation and the GPU-only tests (U-Net shapes, launch counts) run where a GPU is present.
"""

from __future__ import annotations

import dataclasses


import pytest
import torch

import burstkern
from burstkern import _extension

from test_sft import ACTS, FORMS, LAYOUTS, Case, _op_args, _plain_errors, call, expected_format, make_inputs, run
from utils import (COMPILED_DEVICES, DTYPES, assert_rel_close, compiled_device, cuda_kernel_names,
                   TOL, rel_err, requires_cuda)

if _extension.cuda_extension_error() is not None or not hasattr(torch.ops.burstkern_C, "sft_modulate"):
    pytest.skip(f"burstkern._C without the sft ops ({_extension.cuda_extension_error()})", allow_module_level=True)

from burstkern.ops.sft import native as glue  # noqa: E402

from burstkern import registry as BK
B = torch.ops.burstkern_C
DEVICES = COMPILED_DEVICES
SMALL_TILE = 64  # elements per block in the CPU tests: several chunks per row / pixel range on small inputs


# ----------------------------------------------------------------------------------------------
# running the cuda backend on CPU tensors (the CPU build of the burstkern_C ops)
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def small_tiles():
    prev = B.sft_tile_elements(SMALL_TILE)
    yield
    B.sft_tile_elements(prev)


@pytest.fixture(params=DEVICES)
def dev(request):
    return compiled_device(request, "small_tiles")


def check(case: Case, dtype: torch.dtype, device: str, seed: int = 11, scale: float = 1.0):
    """Forward and every gradient of the cuda backend vs the fp64 reference on the same inputs; layouts."""
    ins = {k: None if v is None else v.to(device) for k, v in make_inputs(case, dtype, seed=seed).items()}
    out, grads, dy = run(case, ins, "native")
    ref_ins = {k: None if v is None else v.detach().cpu().double() for k, v in ins.items()}
    ref_out, ref_grads, _ = run(case, ref_ins, "reference", dy.cpu().double())
    assert out.dtype == dtype and out.device.type == device
    assert out.is_contiguous(memory_format=expected_format(ins["x"])), f"output layout {out.stride()}"
    assert_rel_close(out.cpu(), ref_out, dtype, f"{case} {dtype} forward", scale)
    for name, g in grads.items():
        assert g.dtype == ins[name].dtype and g.shape == ins[name].shape
        if ins[name].dim() == 4:
            assert g.is_contiguous(memory_format=expected_format(ins["x"])), f"grad {name} layout {g.stride()}"
        assert_rel_close(g.cpu(), ref_grads[name], dtype, f"{case} {dtype} grad {name}", scale)
    return out, grads


# ----------------------------------------------------------------------------------------------
# parity with the fp64 reference
# ----------------------------------------------------------------------------------------------
# (N, C, H, W): odd sizes (scalar lanes), HW and C multiples of 8 (16-byte vectors in both layouts), C = 64 (several
# pixel chunks per channels_last block row), H = 1, W = 1, batch 1
SHAPES = ((2, 6, 7, 9), (1, 16, 8, 12), (2, 64, 5, 7), (3, 8, 1, 9), (1, 12, 9, 1))


def _mid_divisor(c: int) -> int:
    return max(d for d in range(2, c) if c % d == 0)


def _cases(op: str):
    """Every form x every layout, rotating shape, activation (each form sees every act), groups 1 / C / between,
    affine present or not."""
    cases = []
    for j, form in enumerate(FORMS):
        for k, layout in enumerate(LAYOUTS):
            n, c, h, w = SHAPES[(j + k) % len(SHAPES)]
            cases.append(Case(op=op, n=n, c=c, h=h, w=w, groups=(1, c, _mid_divisor(c))[(j + 2 * k) % 3], form=form,
                              act=ACTS[(j + 2 * k) % len(ACTS)], layout=layout, weight=(j + k) % 4 != 1,
                              bias=(j + k) % 4 != 2))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _cases("mod"), ids=str)
def test_modulate_matches_reference(dev, case, dtype):
    check(case, dtype, dev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _cases("gn"), ids=str)
def test_group_norm_matches_reference(dev, case, dtype):
    check(case, dtype, dev)


WIDE_CASES = [
    # 258 channels, scalar lanes: two channel tiles of 256 columns per channels_last block; groups of 43 channels
    # straddle the tiles
    Case(op="gn", n=1, c=258, h=3, w=3, groups=6, form="merged", act="silu", layout="channels_last"),
    Case(op="gn", n=2, c=258, h=2, w=5, groups=258, form="mixed", act="relu", layout="contiguous"),
    Case(op="mod", n=1, c=258, h=3, w=3, form="merged_channel", act="leaky_relu(0.2)", layout="channels_last"),
    # GroupNorm32 with 3 channels per group: an 8-channel vector spans three groups
    Case(op="gn", n=1, c=96, h=4, w=4, groups=32, form="spatial", act="silu", layout="channels_last"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", WIDE_CASES, ids=str)
def test_channel_tiles_and_groups_across_vectors(dev, case, dtype):
    check(case, dtype, dev)


@pytest.mark.parametrize("tile", [1, 7, 8192])
def test_block_sizes(native_on_cpu, tile):
    """One element per block, a size that splits vectors' rows unevenly, and the GPU default (one chunk)."""
    prev = B.sft_tile_elements(tile)
    try:
        for layout in ("contiguous", "channels_last"):
            check(Case(op="gn", n=2, c=16, h=8, w=6, groups=4, form="merged_channel", act="silu", layout=layout),
                  torch.float32, "cpu")
            check(Case(op="mod", n=1, c=16, h=8, w=6, form="mixed", act="relu", layout=layout), torch.bfloat16,
                  "cpu")
    finally:
        B.sft_tile_elements(prev)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_mean(dev, layout):
    """x = 1000 + N(0, 1) in fp32: within 2x torch's own fp32 GroupNorm error (~3e-5 from rounding x - mean); a
    one-pass E[x²] − E[x]² variance would be ~1e-1 off."""
    case = Case(op="gn", n=2, c=16, h=9, w=8, groups=2, form="spatial", act="silu", mean=1000.0, layout=layout)
    ins = {k: None if v is None else v.to(dev) for k, v in make_inputs(case, torch.float32, seed=14).items()}
    out, grads, dy = run(case, ins, "native")
    ref_ins = {k: None if v is None else v.cpu().double() for k, v in ins.items()}
    ref_out, ref_grads, _ = run(case, ref_ins, "reference", dy.cpu().double())
    cpu_ins = {k: None if v is None else v.cpu() for k, v in ins.items()}
    plain_out, plain_grads = _plain_errors(case, cpu_ins, dy.cpu(), ref_out, ref_grads)
    assert rel_err(out.cpu(), ref_out) <= max(TOL[torch.float32], 2 * plain_out), (rel_err(out.cpu(), ref_out),
                                                                                   plain_out)
    for k, g in grads.items():
        err, bound = rel_err(g.cpu(), ref_grads[k]), max(TOL[torch.float32], 2 * plain_grads[k])
        assert err <= bound, f"grad {k}: {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_partials_with_different_means(dev, layout):
    """Channel means from -300 to 900 inside each group and a spatial ramp: the (channel, chunk) partials that the
    statistics finalize merges (Chan's formula) have very different means."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    g = torch.Generator().manual_seed(21)
    x = torch.randn(2, 8, 9, 8, generator=g, dtype=torch.float64)
    x += torch.tensor([0.0, 300.0, -300.0, 900.0] * 2, dtype=torch.float64).view(1, 8, 1, 1)
    x += torch.linspace(0, 50, 72, dtype=torch.float64).view(1, 1, 9, 8)
    gb = torch.randn(2, 16, 1, 1, generator=g, dtype=torch.float64)
    x32, gb32 = (t.float().contiguous(memory_format=fmt).to(dev).requires_grad_() for t in (x, gb))
    dy = torch.randn(2, 8, 9, 8, generator=g).to(dev)
    with burstkern.backend("native"):
        out = burstkern.ops.sft_group_norm(x32, gb32, num_groups=2, act="silu")
        gx, ggb = torch.autograd.grad(out, (x32, gb32), dy)
    x64, gb64 = (t.detach().cpu().double().requires_grad_() for t in (x32, gb32))
    with burstkern.backend("reference"):
        ref = burstkern.ops.sft_group_norm(x64, gb64, num_groups=2, act="silu")
        rgx, rggb = torch.autograd.grad(ref, (x64, gb64), dy.cpu().double())
    assert_rel_close(out.detach().cpu(), ref.detach(), torch.float32, "out")
    assert_rel_close(gx.cpu(), rgx, torch.float32, "grad x")
    assert_rel_close(ggb.cpu(), rggb, torch.float32, "grad gamma|beta")


@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_outputs(dev, dtype):
    case = Case(n=2, c=24, h=5, w=8, groups=3, layout="channels_last", mean=10.0)
    ins = {k: None if v is None else v.to(dev) for k, v in make_inputs(case, dtype, seed=13).items()}
    args = (ins["x"], ins["gamma"], ins["beta"], 3, ins["weight"], ins["bias"], 1e-5, 1, 0.0)
    with burstkern.backend("native"):
        out, mean, rstd = torch.ops.burstkern.sft_group_norm(*args)
    assert mean.dtype == torch.float32 and rstd.dtype == torch.float32 and mean.shape == (2, 3)
    var, mu = torch.var_mean(ins["x"].cpu().double().reshape(2, 3, -1), dim=-1, unbiased=False)
    assert_rel_close(mean.cpu(), mu, torch.float32, "mean")
    assert_rel_close(rstd.cpu(), torch.rsqrt(var + 1e-5), torch.float32, "rstd")


def test_spatial_one_by_one_and_eps_zero(dev):
    check(Case(op="gn", n=3, c=8, h=1, w=2, groups=4, form="merged_channel", act="silu", eps=0.0), torch.float32,
          dev)
    check(Case(op="mod", n=3, c=8, h=1, w=1, form="merged", act="relu"), torch.float32, dev)


def test_three_d_input(dev):
    x = torch.randn(2, 8, 13, device=dev)
    g = torch.randn(2, 16, 1, device=dev)
    with burstkern.backend("native"):
        out = burstkern.ops.sft_group_norm(x, g, num_groups=4, act="silu")
    with burstkern.backend("reference"):
        want = burstkern.ops.sft_group_norm(x.cpu().double(), g.cpu().double(), num_groups=4, act="silu")
    assert out.shape == x.shape
    assert_rel_close(out.cpu(), want, torch.float32, "3-D")


@pytest.mark.no_kernel_launch
def test_empty_batch(dev):
    x = torch.randn(0, 8, 5, 7, device=dev)
    g = torch.randn(0, 8, 5, 7, device=dev)
    w = torch.randn(8, device=dev, requires_grad=True)
    xr, gr = x.clone().requires_grad_(), g.clone().requires_grad_()
    with burstkern.backend("native"):
        out = burstkern.ops.sft_group_norm(xr, gr, num_groups=4, weight=w)
        assert out.shape == x.shape
        gx, gw = torch.autograd.grad(out, (xr, w), torch.ones_like(out))
        assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(gw))
        assert burstkern.ops.sft_modulate(x, g).shape == x.shape


# ----------------------------------------------------------------------------------------------
# determinism: fixed-order partial sums, no atomics
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", ["mod", "gn"])
def test_bit_identical_repeat(dev, op, layout):
    shape = dict(n=2, c=16, h=12, w=9) if dev == "cpu" else dict(n=4, c=128, h=96, w=96)
    case = Case(op=op, groups=4, form="merged_channel", act="silu", layout=layout, **shape)
    ins = {k: None if v is None else v.to(dev) for k, v in make_inputs(case, torch.float32, seed=12).items()}
    out1, g1, dy = run(case, ins, "native")
    out2, g2, _ = run(case, ins, "native", dy)
    assert torch.equal(out1, out2)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


# ----------------------------------------------------------------------------------------------
# opcheck (real vs fake strides, schema, autograd) and torch.compile with the cuda backend
# ----------------------------------------------------------------------------------------------
OPCHECK_CASES = [
    Case(op="mod", form="merged", act="silu", layout="channels_last"),
    Case(op="mod", form="mixed", act="leaky_relu(0.2)", layout="sliced"),
    Case(op="gn", form="merged_channel", act="relu", layout="channels_last", weight=False, bias=False),
    Case(op="gn", form="spatial", act="silu", layout="contiguous"),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck(dev, case):
    ins = {k: None if v is None else v.to(dev) for k, v in make_inputs(case, torch.float32, seed=6).items()}
    req = lambda t: None if t is None else t.detach().requires_grad_()  # noqa: E731
    args = _op_args(case, ins)
    with burstkern.backend("native"):
        if case.op == "mod":
            torch.library.opcheck(torch.ops.burstkern.sft_modulate.default, _op_args(case, {k: req(v) for k, v in
                                                                                             ins.items()}))
            torch.library.opcheck(torch.ops.burstkern.sft_modulate_backward.default,
                                  (torch.randn_like(ins["x"]),) + args)
        else:
            torch.library.opcheck(torch.ops.burstkern.sft_group_norm.default,
                                  _op_args(case, {k: req(v) for k, v in ins.items()}))
            out, mean, rstd = torch.ops.burstkern.sft_group_norm.default(*args)
            x, gamma, beta, groups, w, b, eps, code, slope = args
            torch.library.opcheck(torch.ops.burstkern.sft_group_norm_backward.default,
                                  (torch.randn_like(out), x, gamma, beta, groups, w, b, mean, rstd, eps, code, slope))


@pytest.mark.parametrize("op", ["mod", "gn"])
def test_compile_fullgraph_matches_eager(dev, op):
    case = Case(op=op, form="merged", act="leaky_relu(0.2)", layout="channels_last", groups=2)
    ins = {k: None if v is None else v.to(dev) for k, v in make_inputs(case, torch.float32, seed=8).items()}
    eager_out, eager_grads, dy = run(case, ins, "native")
    torch._dynamo.reset()
    compiled = torch.compile(lambda **kw: call(case, **kw), backend="aot_eager", fullgraph=True)
    leaves = {k: v.detach().requires_grad_() for k, v in ins.items() if v is not None}
    with burstkern.backend("native"):
        out = compiled(**{k: leaves.get(k) for k in ins})
        grads = torch.autograd.grad(out, list(leaves.values()), dy)
    assert torch.equal(out, eager_out), "compiled != eager with the same kernels"
    for (name, g), r in zip(zip(leaves, grads), eager_grads.values()):
        assert torch.equal(g, r), f"compiled grad {name}"


# ----------------------------------------------------------------------------------------------
# argument errors of the compiled ops (messages name the argument)
# ----------------------------------------------------------------------------------------------
def test_errors():
    x = torch.randn(2, 8, 4, 6)
    g = torch.randn(2, 8, 4, 6)
    mean, rstd = torch.zeros(2, 4), torch.ones(2, 4)
    with pytest.raises(RuntimeError, match=r"x must be contiguous or channels_last.*strides"):
        B.sft_modulate(x[..., ::2], g[..., ::2], None, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"x must be float32, float16 or bfloat16 or float64, got Int"):
        B.sft_modulate(x.int(), g.int(), None, 0, 0.0)  # the CPU kernels take float64 too
    with pytest.raises(RuntimeError, match=r"x must be a 4-D \[N, C, H, W\] tensor, got shape \[2, 8, 4\]"):
        B.sft_modulate(x[..., 0], g[..., 0], None, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"gamma has dtype Half but x has Float"):
        B.sft_modulate(x, g.half(), None, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"gamma must be \[N, C, H, W\] = \[2, 8, 4, 6\].*got \[2, 8, 4, 5\]"):
        B.sft_modulate(x, torch.randn(2, 8, 4, 5), None, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"beta must be \[N, C, H, W\].*got \[2, 16, 1, 1\]"):
        B.sft_modulate(x, g, torch.randn(2, 16, 1, 1), 0, 0.0)
    # a spatially cropped gamma view: the CPU kernels read it through its strides (the CUDA kernels need H and W
    # mergeable; the glue copies such a view for them)
    crop = torch.randn(2, 8, 5, 7)[:, :, 1:, 1:]
    assert torch.equal(B.sft_modulate(x, crop, None, 0, 0.0), B.sft_modulate(x, crop.contiguous(), None, 0, 0.0))
    with pytest.raises(RuntimeError, match=r"grad must be laid out as x \(ChannelsLast\)"):
        B.sft_modulate_backward(x, x.contiguous(memory_format=torch.channels_last), g, None, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"grad must have the shape of x"):
        B.sft_modulate_backward(torch.randn(2, 8, 4, 5), x, g, None, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"num_groups must be a positive divisor of x's 8 channels, got 3"):
        B.sft_group_norm(x, g, None, 3, None, None, 1e-5, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[C\] = \[8\], got \[4\]"):
        B.sft_group_norm(x, g, None, 4, torch.randn(4), None, 1e-5, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"bias has dtype BFloat16 but x has Float"):
        B.sft_group_norm(x, g, None, 4, None, torch.randn(8, dtype=torch.bfloat16), 1e-5, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"mean must be a contiguous float32 \[N, G\] = \[2, 4\] tensor.*\[2, 2\]"):
        B.sft_group_norm_backward(x, x, g, None, 4, None, None, torch.zeros(2, 2), rstd, 1e-5, 0, 0.0)
    with pytest.raises(RuntimeError, match=r"rstd must be a contiguous float32.*dtype Double"):
        B.sft_group_norm_backward(x, x, g, None, 4, None, None, mean, rstd.double(), 1e-5, 0, 0.0)
    # the cuda backend itself stays GPU-only
    if not torch.cuda.is_available():
        with burstkern.backend("cuda"), pytest.raises(BK.BackendUnavailableError,
                                                      match="runs CUDA tensors.*use backend 'native'"):
            burstkern.ops.sft_modulate(x, g)


def test_poison_switch_catches_unwritten_elements():
    """The poisoning the tests rely on works: outputs are NaN until written, and the kernels write all of them."""
    prev = B.set_poison_outputs(True)
    try:
        x = torch.randn(2, 8, 3, 5)
        out, mean, rstd = B.sft_group_norm(x, torch.randn(2, 16, 1, 1), None, 4, None, None, 1e-5, 1, 0.0)
        assert torch.isfinite(out).all() and torch.isfinite(mean).all() and torch.isfinite(rstd).all()
        dx, dg, db = B.sft_modulate_backward(x, x, torch.randn(2, 8, 1, 1), torch.randn(2, 8, 3, 5), 0, 0.0)
        assert torch.isfinite(dx).all() and torch.isfinite(dg).all() and torch.isfinite(db).all()
        # with the kernels skipped (empty batch) the fresh outputs stay NaN-free only because they are empty
        assert B.sft_modulate(x[:0], x[:0], None, 0, 0.0).numel() == 0
        assert rel_err(torch.full((2,), float("nan")), torch.ones(2)) == float("inf")
    finally:
        B.set_poison_outputs(prev)
    assert B.set_poison_outputs(prev) == prev
    assert B.sft_tile_elements(0) == 8192  # the default, read without changing it


# ----------------------------------------------------------------------------------------------
# GPU only: the U-Net shapes, launch counts
# ----------------------------------------------------------------------------------------------
GPU_CASES = [
    (Case(op="gn", n=4, c=128, h=192, w=192, groups=32, form="merged", act="silu"), torch.bfloat16),
    (Case(op="gn", n=1, c=64, h=384, w=384, groups=32, form="merged", act="silu", mean=100.0), torch.float32),
    (Case(op="gn", n=4, c=128, h=96, w=96, groups=32, form="merged", act="silu", layout="channels_last"),
     torch.bfloat16),
    (Case(op="gn", n=16, c=256, h=48, w=48, groups=32, form="merged_channel", act="silu"), torch.float32),
    (Case(op="gn", n=4, c=256, h=32, w=32, groups=32, form="mixed", act="relu", layout="chan_sliced"),
     torch.float16),
    (Case(op="mod", n=16, c=64, h=96, w=96, form="merged", act="leaky_relu(0.1)", layout="channels_last"),
     torch.bfloat16),
    (Case(op="mod", n=4, c=128, h=97, w=95, form="mixed", act="silu", layout="sliced"), torch.float16),
    (Case(op="mod", n=4, c=64, h=256, w=256, form="spatial", act=None), torch.float32),
]


@requires_cuda
@pytest.mark.parametrize("case,dtype", GPU_CASES, ids=lambda v: str(v))
def test_gpu_unet_shapes(case, dtype, poisoned_outputs):
    check(case, dtype, "native")


def _scaled(case: Case) -> Case:
    return dataclasses.replace(case, n=min(case.n, 2), h=max(3, case.h // 8), w=max(3, case.w // 8))


@pytest.mark.parametrize("case,dtype", [(_scaled(c), d) for c, d in GPU_CASES], ids=lambda v: str(v))
def test_unet_shapes_emulated(case, dtype, native_on_cpu, simt_emulation):
    """The GPU cases scaled down, the CUDA kernels on the SIMT emulation with the default tile size."""
    check(case, dtype, "cpu")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_emulated_kernels_match_cpu_kernels(layout, native_on_cpu):
    """The CUDA kernels (emulated) and the CPU kernels compute the same op: outputs and statistics agree to fp32
    rounding (their reduction orders differ, so not bit for bit)."""
    case = Case(op="gn", n=2, c=32, h=24, w=16, groups=8, form="merged_channel", act="silu", layout=layout)
    args = _op_args(case, make_inputs(case, torch.float32, seed=3))
    cpu = B.sft_group_norm(*args)
    prev = B.set_simt_emulation(1)
    try:
        emulated = B.sft_group_norm(*args)
    finally:
        B.set_simt_emulation(prev)
    for name, a, b in zip(("out", "mean", "rstd"), cpu, emulated):
        assert_rel_close(a, b, torch.float32, name)


def _kernels(fn):
    return cuda_kernel_names(fn)


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gpu_launch_counts(layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    n, c, hw = 4, 128, 64

    def t(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=fmt)

    x, dy, sp, gb_sp, gb_ch = t(n, c, hw, hw), t(n, c, hw, hw), t(n, c, hw, hw), t(n, 2 * c, hw, hw), t(n, 2 * c, 1, 1)
    w = torch.rand(c, device="cuda", dtype=torch.bfloat16)
    P = torch.ops.burstkern
    with burstkern.backend("native"):
        out, mean, rstd = P.sft_group_norm(x, gb_sp, None, 32, w, w, 1e-5, 1, 0.0)
        calls = {
            "modulate": (lambda: P.sft_modulate(x, gb_sp, None, 1, 0.0), 1),
            "modulate_backward spatial": (lambda: P.sft_modulate_backward(dy, x, sp, sp, 1, 0.0), 1),
            "modulate_backward per-channel": (lambda: P.sft_modulate_backward(dy, x, gb_ch, None, 1, 0.0), 2),
            "group_norm": (lambda: P.sft_group_norm(x, gb_sp, None, 32, w, w, 1e-5, 1, 0.0), 3),
            "group_norm_backward": (lambda: P.sft_group_norm_backward(dy, x, gb_sp, None, 32, w, w, mean, rstd, 1e-5,
                                                                      1, 0.0), 3),
        }
        for name, (fn, want) in calls.items():
            names = _kernels(fn)
            assert len(names) == want, f"{name}: {len(names)} kernels {names}"


@requires_cuda
def test_gpu_matches_cpu_build():
    """The CUDA kernels and the CPU build of the same ops give the same values (same walk, same sums)."""
    case = Case(op="gn", n=2, c=32, h=24, w=16, groups=8, form="merged_channel", act="silu", layout="channels_last")
    ins = make_inputs(case, torch.float32, seed=3)
    args = _op_args(case, ins)
    cpu = B.sft_group_norm(*args)
    gpu = B.sft_group_norm(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
    for a, b in zip(cpu, gpu):
        assert_rel_close(b.cpu(), a.double(), torch.float32, "gpu vs cpu build")


def test_cases_cover_every_form_layout_act():
    """The parity sweep is what it claims: every form x layout, every act for every op, all group kinds."""
    for op in ("mod", "gn"):
        cases = _cases(op)
        assert {(c.form, c.layout) for c in cases} == {(f, lay) for f in FORMS for lay in LAYOUTS}
        assert {c.act for c in cases} == set(ACTS)
    groups = {(c.groups == 1, c.groups == c.c) for c in _cases("gn")}
    assert groups == {(True, False), (False, True), (False, False)}
    assert any(c.n == 1 for c in _cases("gn")) and any(c.n > 1 for c in _cases("gn"))
