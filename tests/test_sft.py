"""sft_modulate / sft_group_norm: the reference pinned to an independent plain composition (F.group_norm, chunk,
F.silu, ...) in fp64, gradcheck, opcheck, torch.compile, argument errors; then every fused backend pinned to the
fp64 reference (forward and every gradient) over dtypes, odd sizes, N=1, group counts, layouts, gamma/beta forms
and activations, with every buffer the Triton launchers allocate poisoned with NaN.

Fused backends run on the CPU through the Triton interpreter when there is no GPU, so shapes stay small here
(N <= 3, C <= 16, H, W <= 9); the Triton tile sizes are shrunk in some tests so the multi-tile loops and the
chunked statistics merge run on those small shapes too. Bigger shapes run only when a GPU is present.
(Triton's interpreter rounds fp32 -> bf16 by truncation, the GPU to nearest even, so bf16 errors here are about
twice the GPU's; they still sit well inside the 1e-2 bound.)
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import burstkern
from burstkern.ops import sft_group_norm, sft_modulate
from burstkern.ops.sft import op as sft_op

from utils import DTYPES, TOL, assert_rel_close, fused_backends, rel_err, requires_cuda

try:
    from burstkern.ops.sft import triton as sft_triton
except ImportError:  # Triton missing: the fused tests skip through fused_backends
    sft_triton = None

ACTS = (None, "silu", "relu", "leaky_relu", "leaky_relu(0.2)")
# gamma/beta forms: (gamma channels x2?, gamma spatial?, beta: None | "spatial" | "channel")
FORMS = {
    "spatial": (False, True, "spatial"),
    "channel": (False, False, "channel"),
    "merged": (True, True, None),
    "merged_channel": (True, False, None),
    "gamma_only": (False, True, None),
    "mixed": (False, True, "channel"),
}
LAYOUTS = ("contiguous", "channels_last", "sliced", "chan_sliced")


@dataclasses.dataclass(frozen=True)
class Case:
    op: str = "gn"  # "mod" (sft_modulate) or "gn" (sft_group_norm)
    n: int = 2
    c: int = 8
    h: int = 5
    w: int = 7
    groups: int = 4
    form: str = "spatial"
    act: object = None
    weight: bool = True
    bias: bool = True
    layout: str = "contiguous"
    mean: float = 0.5  # offset added to x (GroupNorm must be robust to large means)
    eps: float = 1e-5
    full_jacobian: bool = dataclasses.field(default=False, compare=False)

    def __str__(self):
        gn = f"_g{self.groups}{'w' if self.weight else ''}{'b' if self.bias else ''}" if self.op == "gn" else ""
        return (f"{self.op}_n{self.n}c{self.c}_{self.h}x{self.w}{gn}_{self.form}_{self.act}_{self.layout}"
                f"{'' if self.mean == 0.5 else f'_mean{self.mean:g}'}")


def _layout(t: torch.Tensor, layout: str, g: torch.Generator) -> torch.Tensor:
    """``t`` with equal values as a contiguous or channels_last tensor, or a view of a bigger tensor taking every
    other channel ("chan_sliced": H and W still merge into one index) and also cropping H and W ("sliced")."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    n, c, h, w = t.shape
    sh, sw = (1, 2) if layout == "sliced" and h * w > 1 else (0, 0)
    base = torch.randn(n, 2 * c + 1, h + sh, w + sw, generator=g, dtype=t.dtype)
    view = base[:, 1::2, sh:, sw:]
    view.copy_(t)
    if c > 1:
        assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
    return view


def make_inputs(case: Case, dtype=torch.float64, seed=0):
    """Fresh random {x, gamma, beta, weight, bias} for ``case`` (absent ones are None), laid out per case.layout."""
    g = torch.Generator().manual_seed(seed)
    merged, g_spatial, beta_kind = FORMS[case.form]
    n, c, h, w = case.n, case.c, case.h, case.w

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    x = _layout(rnd(n, c, h, w, shift=case.mean), case.layout, g)
    gc = 2 * c if merged else c
    gamma = _layout(rnd(n, gc, h, w, scale=0.5) if g_spatial else rnd(n, gc, 1, 1, scale=0.5), case.layout, g)
    beta = None
    if beta_kind is not None:
        beta = _layout(rnd(n, c, h, w) if beta_kind == "spatial" else rnd(n, c, 1, 1), case.layout, g)
    weight = rnd(c, scale=0.5, shift=1.0) if case.op == "gn" and case.weight else None
    bias = rnd(c, scale=0.5) if case.op == "gn" and case.bias else None
    return {"x": x, "gamma": gamma, "beta": beta, "weight": weight, "bias": bias}


def call(case: Case, x, gamma, beta, weight=None, bias=None):
    if case.op == "mod":
        return sft_modulate(x, gamma, beta, act=case.act)
    return sft_group_norm(x, gamma, beta, num_groups=case.groups, weight=weight, bias=bias, eps=case.eps,
                          act=case.act)


PLAIN_ACTS = {None: lambda t: t, "silu": F.silu, "relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.01),
              "leaky_relu(0.2)": lambda t: F.leaky_relu(t, 0.2)}


def plain(case: Case, x, gamma, beta, weight=None, bias=None):
    """The spec written independently of burstkern: torch.chunk for the merged form, F.group_norm, F.<act>."""
    if beta is None and gamma.shape[1] == 2 * x.shape[1]:
        gamma, beta = torch.chunk(gamma, 2, dim=1)
    h = F.group_norm(x, case.groups, weight, bias, case.eps) if case.op == "gn" else x
    u = h * (1 + gamma)
    if beta is not None:
        u = u + beta
    return PLAIN_ACTS[case.act](u)


def run(case: Case, ins: dict, backend: str, dy=None):
    """(output, {name: gradient}) through the public function with ``backend``; dy defaults to fresh noise."""
    leaves = {k: v.detach().requires_grad_() for k, v in ins.items() if v is not None}
    with burstkern.backend(backend):
        out = call(case, **{k: leaves.get(k) for k in ins})
        if dy is None:
            dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
        grads = torch.autograd.grad(out, list(leaves.values()), dy)
    return out, dict(zip(leaves, grads)), dy


def expected_format(x: torch.Tensor):
    return torch.channels_last if (x.dim() == 4 and not x.is_contiguous()
                                   and x.is_contiguous(memory_format=torch.channels_last)) else torch.contiguous_format


# ----------------------------------------------------------------------------------------------
# the reference
# ----------------------------------------------------------------------------------------------
REF_CASES = [Case(op=op, form=form, act=act, layout=LAYOUTS[i % 4], n=1 + i % 2, groups=(1, 2, 4, 8)[i % 4])
             for op in ("mod", "gn") for i, (form, act) in enumerate(
                 (f, a) for f in FORMS for a in ACTS)]


@pytest.mark.parametrize("case", REF_CASES, ids=str)
def test_reference_matches_plain_composition(case):
    ins = make_inputs(case, torch.float64, seed=1)
    with burstkern.backend("reference"):
        out = call(case, **ins)
    ref = plain(case, **ins)
    assert out.dtype == torch.float64
    assert out.is_contiguous(memory_format=expected_format(ins["x"]))
    assert_rel_close(out, ref, torch.float64, str(case))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["mod", "gn"])
def test_reference_low_precision_computes_in_fp32(op, dtype):
    case = Case(op=op, form="merged", act="silu", n=2, c=16, h=9, w=7, layout="channels_last")
    ins = make_inputs(case, dtype, seed=2)
    with burstkern.backend("reference"):
        out = call(case, **ins)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    ref = plain(case, **{k: None if v is None else v.double() for k, v in ins.items()})
    assert_rel_close(out, ref, dtype, f"reference {op} {dtype}")
    # computing in the input dtype instead would be visibly worse in half precision: the bound is not vacuous
    assert rel_err(out, ref) <= 1.05 * rel_err(ref.to(dtype), ref) + 1e-6


@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,))
def test_statistics_outputs(dtype):
    """The op's side outputs are the per-(sample, group) mean and rstd, in fp32 (fp64 for fp64)."""
    case = Case(n=3, c=12, groups=3, layout="channels_last", mean=4.0)
    ins = make_inputs(case, dtype, seed=3)
    out, mean, rstd = torch.ops.burstkern.sft_group_norm(ins["x"], ins["gamma"], ins["beta"], 3, ins["weight"],
                                                         ins["bias"], 1e-5, 0, 0.0)
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == cd and rstd.dtype == cd and mean.shape == (3, 3) and rstd.shape == (3, 3)
    var, mu = torch.var_mean(ins["x"].double().reshape(3, 3, -1), dim=-1, unbiased=False)
    assert_rel_close(mean, mu, cd, "mean")
    assert_rel_close(rstd, torch.rsqrt(var + 1e-5), cd, "rstd")


@pytest.mark.parametrize("op", ["mod", "gn"])
def test_three_d_input(op):
    """[N, C, L] works as [N, C, L, 1]: same values as the plain composition, gradients flow."""
    case = Case(op=op, form="merged_channel", act="leaky_relu(0.2)", groups=2)
    ins4 = make_inputs(dataclasses.replace(case, w=1), torch.float64, seed=4)
    ins = {k: (v.squeeze(-1) if v is not None and v.dim() == 4 else v) for k, v in ins4.items()}
    x = ins["x"].requires_grad_()
    out = call(case, **ins)
    assert out.shape == x.shape
    assert_rel_close(out, plain(case, **ins4).squeeze(-1), torch.float64, "3-D")
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all()


def _gradcheck_cases():
    cases = [Case(op=op, form=form, act="silu", n=2, c=4, h=3, w=5, groups=2, layout=LAYOUTS[i % 4],
                  full_jacobian=form == "merged")
             for op in ("mod", "gn") for i, form in enumerate(FORMS)]
    cases += [Case(op=op, form="merged", act=act, n=1, c=4, h=3, w=3, groups=2)
              for op in ("mod", "gn") for act in ACTS if act != "silu"]
    cases += [Case(op="gn", form="channel", act="leaky_relu(0.2)", n=2, c=6, h=2, w=3, groups=g, weight=wt, bias=bs)
              for g, wt, bs in ((1, False, False), (3, True, False), (6, False, True))]
    return cases


@pytest.mark.parametrize("case", _gradcheck_cases(), ids=str)
def test_gradcheck_reference(case):
    ins = make_inputs(case, torch.float64, seed=5)
    names = [k for k, v in ins.items() if v is not None]

    def f(*args):
        kw = dict(ins)
        kw.update(zip(names, args))
        return call(case, **kw)

    args = tuple(ins[k].detach().requires_grad_() for k in names)
    with burstkern.backend("reference"):
        # fast mode (random projections of the Jacobian) for the sweep; the full Jacobian for the first cases
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=not case.full_jacobian)


OPCHECK_CASES = [
    Case(op="mod", form="merged", act="silu", layout="channels_last"),
    Case(op="mod", form="mixed", act="leaky_relu(0.2)", layout="sliced"),
    Case(op="gn", form="merged_channel", act="relu", layout="channels_last", weight=False, bias=False),
    Case(op="gn", form="spatial", act="silu", layout="contiguous"),
]


def _op_args(case: Case, ins: dict):
    code, slope = sft_op.parse_act(case.act)
    x, gamma, beta, w, b = (ins[k] for k in ("x", "gamma", "beta", "weight", "bias"))
    if case.op == "mod":
        return (x, gamma, beta, code, slope)
    return (x, gamma, beta, case.groups, w, b, case.eps, code, slope)


def _opcheck_backends():
    return ["reference"] + [p.values[0] for p in fused_backends("sft_group_norm", "cpu") if not p.marks]


def _opcheck_backward(case: Case):
    ins = make_inputs(case, torch.float32, seed=6)
    args = _op_args(case, ins)
    if case.op == "mod":
        torch.library.opcheck(torch.ops.burstkern.sft_modulate_backward.default, (torch.randn_like(ins["x"]),) + args)
    else:
        with burstkern.backend("reference"):
            out, mean, rstd = torch.ops.burstkern.sft_group_norm.default(*args)
        x, gamma, beta, groups, w, b, eps, code, slope = args
        torch.library.opcheck(torch.ops.burstkern.sft_group_norm_backward.default,
                              (torch.randn_like(out), x, gamma, beta, groups, w, b, mean, rstd, eps, code, slope))


@pytest.mark.parametrize("backend", _opcheck_backends())
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck_forward(case, backend):
    ins = make_inputs(case, torch.float32, seed=6)
    req = lambda t: None if t is None else t.detach().requires_grad_()  # noqa: E731
    op = torch.ops.burstkern.sft_modulate if case.op == "mod" else torch.ops.burstkern.sft_group_norm
    with burstkern.backend(backend):
        torch.library.opcheck(op.default, _op_args(case, {k: req(v) for k, v in ins.items()}))


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck_backward(case, backend):
    with burstkern.backend(backend):
        _opcheck_backward(case)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=str)
def test_opcheck_backward_reference(case):
    with burstkern.backend("reference"):
        _opcheck_backward(case)


def _significant_strides(t):
    return tuple(st for st, sz in zip(t.stride(), t.shape) if sz > 1)


@pytest.mark.parametrize("backend", _opcheck_backends())
@pytest.mark.parametrize("case", OPCHECK_CASES + [Case(op="gn", form="mixed", layout="channels_last", act="silu")],
                         ids=str)
def test_backward_layouts_match_fake(case, backend):
    """What opcheck cannot check for the reference backward: real gradients laid out as the fake impl says."""
    ins = make_inputs(case, torch.float32, seed=9)
    args = _op_args(case, ins)
    with burstkern.backend(backend):
        if case.op == "mod":
            real = torch.ops.burstkern.sft_modulate_backward(torch.randn_like(ins["x"]), *args)
            fake = sft_op.modulate_grad_layouts(ins["x"], ins["gamma"], ins["beta"])
        else:
            out, mean, rstd = torch.ops.burstkern.sft_group_norm(*args)
            x, gamma, beta, groups, w, b, eps, code, slope = args
            real = torch.ops.burstkern.sft_group_norm_backward(torch.randn_like(out), x, gamma, beta, groups, w, b,
                                                               mean, rstd, eps, code, slope)
            fake = sft_op.group_norm_grad_layouts(x, gamma, beta, w, b)
    for r, f in zip(real, fake):
        assert r.shape == f.shape and r.dtype == f.dtype
        assert _significant_strides(r) == _significant_strides(f), (r.stride(), f.stride())


@pytest.mark.parametrize("backend", _opcheck_backends())
@pytest.mark.parametrize("op", ["mod", "gn"])
def test_compile_fullgraph_matches_eager(op, backend):
    case = Case(op=op, form="merged", act="leaky_relu(0.2)", layout="channels_last", groups=2)
    ins = make_inputs(case, torch.float32, seed=8)
    eager_out, eager_grads, dy = run(case, ins, backend)
    torch._dynamo.reset()
    compiled = torch.compile(lambda **kw: call(case, **kw), fullgraph=True)
    leaves = {k: v.detach().requires_grad_() for k, v in ins.items() if v is not None}
    with burstkern.backend(backend):
        out = compiled(**{k: leaves.get(k) for k in ins})
        grads = torch.autograd.grad(out, list(leaves.values()), dy)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_rel_close(out, eager_out, torch.float32, "compiled output")
    for (name, g), r in zip(zip(leaves, grads), eager_grads.values()):
        assert_rel_close(g, r, torch.float32, f"compiled grad {name}")


# ----------------------------------------------------------------------------------------------
# argument errors: each names the argument, what it got and what was expected
# ----------------------------------------------------------------------------------------------
def _good(**over):
    t = dict(x=torch.randn(2, 8, 5, 7), gamma=torch.randn(2, 8, 5, 7), beta=torch.randn(2, 8, 1, 1), num_groups=4,
             weight=torch.randn(8), bias=torch.randn(8), eps=1e-5, act="silu")
    t.update(over)
    return t


def _mod(**over):
    kw = _good(**over)
    return lambda: sft_modulate(kw["x"], kw["gamma"], kw["beta"], act=kw["act"])


def _gn(**over):
    kw = _good(**over)
    return lambda: sft_group_norm(**kw)


ERRORS = [
    ("x not a tensor", _mod(x=[1.0]), TypeError, r"x must be a torch\.Tensor, got list"),
    ("x int", _gn(x=torch.ones(2, 8, 5, 7, dtype=torch.int32)), TypeError, r"x must be float32.*torch\.int32"),
    ("x 2-D", _mod(x=torch.randn(2, 8)), ValueError, r"x must be a 4-D .*shape \(2, 8\)"),
    ("x 5-D", _gn(x=torch.randn(2, 8, 5, 7, 1)), ValueError, r"x must be a 4-D .*shape \(2, 8, 5, 7, 1\)"),
    ("x no channels", _mod(x=torch.randn(2, 0, 5, 7), gamma=torch.randn(2, 0, 5, 7), beta=None), ValueError,
     r"x must have at least one channel.*\(2, 0, 5, 7\)"),
    ("x empty space", _mod(x=torch.randn(2, 8, 0, 7), gamma=torch.randn(2, 8, 0, 7), beta=None), ValueError,
     r"x must have at least one channel and one spatial position"),
    ("gamma not a tensor", _mod(gamma=0.5), TypeError, r"gamma must be a torch\.Tensor, got float"),
    ("gamma 3-D", _gn(gamma=torch.randn(2, 8, 5)), ValueError, r"gamma must be a 4-D tensor, got shape \(2, 8, 5\)"),
    ("gamma dtype", _mod(gamma=torch.randn(2, 8, 5, 7, dtype=torch.float64)), TypeError,
     r"gamma has dtype torch\.float64 but x has torch\.float32"),
    ("gamma device", _mod(gamma=torch.randn(2, 8, 5, 7, device="meta")), RuntimeError,
     r"gamma is on meta but x is on cpu"),
    ("gamma batch", _gn(gamma=torch.randn(1, 8, 5, 7)), ValueError,
     r"gamma must be .*\(2, 8, 5, 7\) or \(2, 8, 1, 1\).*got shape \(1, 8, 5, 7\)"),
    ("gamma channels", _mod(gamma=torch.randn(2, 24, 5, 7), beta=None), ValueError,
     r"gamma must be .*merged.*got shape \(2, 24, 5, 7\)"),
    ("gamma spatial", _gn(gamma=torch.randn(2, 8, 5, 1)), ValueError, r"gamma must be .*got shape \(2, 8, 5, 1\)"),
    ("gamma merged with beta", _mod(gamma=torch.randn(2, 16, 5, 7)), ValueError,
     r"gamma must be .*only when beta is None.*got shape \(2, 16, 5, 7\)"),
    ("beta not a tensor", _gn(beta=1.0), TypeError, r"beta must be a torch\.Tensor, got float"),
    ("beta shape", _mod(beta=torch.randn(2, 8, 7, 5)), ValueError, r"beta must be .*got shape \(2, 8, 7, 5\)"),
    ("beta channels", _gn(beta=torch.randn(2, 16, 1, 1)), ValueError, r"beta must be .*got shape \(2, 16, 1, 1\)"),
    ("beta dtype", _gn(beta=torch.randn(2, 8, 1, 1, dtype=torch.float16)), TypeError,
     r"beta has dtype torch\.float16 but x has torch\.float32"),
    ("act unknown", _mod(act="gelu"), ValueError, r"act must be None, \"silu\".*got 'gelu'"),
    ("act bad slope", _gn(act="leaky_relu(abc)"), ValueError, r"act must be .*got 'leaky_relu\(abc\)'"),
    ("act inf slope", _mod(act="leaky_relu(inf)"), ValueError, r"act must be .*finite slope.*'leaky_relu\(inf\)'"),
    ("act not a string", _gn(act=torch.relu), TypeError, r"act must be None or a string"),
    ("num_groups not dividing", _gn(num_groups=3), ValueError,
     r"num_groups must be a positive divisor of x's 8 channels, got 3 \(x: shape \(2, 8, 5, 7\)"),
    ("num_groups zero", _gn(num_groups=0), ValueError, r"num_groups must be a positive divisor.*got 0"),
    ("num_groups float", _gn(num_groups=4.0), TypeError, r"num_groups must be an int, got float"),
    ("num_groups bool", _gn(num_groups=True), TypeError, r"num_groups must be an int, got bool"),
    ("weight shape", _gn(weight=torch.randn(4)), ValueError, r"weight must have shape \(8,\).*got shape \(4,\)"),
    ("weight 2-D", _gn(weight=torch.randn(8, 1)), ValueError, r"weight must be a 1-D tensor, got shape \(8, 1\)"),
    ("weight dtype", _gn(weight=torch.randn(8, dtype=torch.bfloat16)), TypeError,
     r"weight has dtype torch\.bfloat16 but x has torch\.float32"),
    ("bias shape", _gn(bias=torch.randn(16)), ValueError, r"bias must have shape \(8,\).*got shape \(16,\)"),
    ("bias not a tensor", _gn(bias=[0.0] * 8), TypeError, r"bias must be a torch\.Tensor, got list"),
    ("eps negative", _gn(eps=-1e-5), ValueError, r"eps must be a finite number >= 0, got -1e-05"),
    ("eps nan", _gn(eps=float("nan")), ValueError, r"eps must be a finite number >= 0, got nan"),
    ("eps string", _gn(eps="1e-5"), TypeError, r"eps must be a float, got str"),
]


@pytest.mark.parametrize("name,fn,exc,match", ERRORS, ids=[e[0] for e in ERRORS])
def test_argument_errors(name, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_good_arguments_pass():
    """The baseline the error cases perturb is itself valid (so each error is caused by its one change)."""
    assert _mod()().shape == (2, 8, 5, 7)
    assert _gn()().shape == (2, 8, 5, 7)
    assert _gn(gamma=torch.randn(2, 16, 1, 1), beta=None, act="leaky_relu( 0.3 )")().shape == (2, 8, 5, 7)


def test_parse_act():
    assert sft_op.parse_act(None) == (0, 0.0)
    assert sft_op.parse_act("silu") == (1, 0.0)
    assert sft_op.parse_act("ReLU") == (2, 0.0)
    assert sft_op.parse_act("leaky_relu") == (3, 0.01)
    assert sft_op.parse_act("leaky_relu(0.2)") == (3, 0.2)
    assert sft_op.parse_act("leaky_relu(-1e-1)") == (3, -0.1)


# ----------------------------------------------------------------------------------------------
# fused backends vs the fp64 reference
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_tiles(monkeypatch):
    """Tiles of a few elements: the channel/space loops, several chunks per group and several tiles per plane."""
    if sft_triton is not None:
        monkeypatch.setitem(sft_triton._TUNE, "TILE", 16)
        monkeypatch.setitem(sft_triton._TUNE, "MAX_BLOCK_C", 2)
        monkeypatch.setitem(sft_triton._TUNE, "MAX_BLOCK_HW", 8)
        monkeypatch.setitem(sft_triton._TUNE, "STAT_PROGRAMS", 64)
        monkeypatch.setitem(sft_triton._TUNE, "MAX_CHUNKS", 4)
        monkeypatch.setitem(sft_triton._TUNE, "REDUCE_TILE", 4)


SHAPES = ((1, 6, 5, 7), (2, 8, 3, 5), (3, 12, 4, 4), (2, 4, 1, 9), (1, 16, 7, 1), (2, 10, 9, 6))


def _mid_divisor(c: int) -> int:
    return max(d for d in range(2, c) if c % d == 0)


def _parity_cases(op: str):
    """Each dtype x each form, rotating activation (every dtype sees every act), layout (every form sees every
    layout), group count (1 / C / in between), affine, shape (odd sizes, N=1, H or W = 1)."""
    cases = []
    forms = list(FORMS)
    for k, dtype in enumerate(DTYPES):
        for j, form in enumerate(forms):
            n, c, h, w = SHAPES[(j + 2 * k) % len(SHAPES)]
            groups = (1, c, _mid_divisor(c))[(j + k) % 3]
            cases.append(pytest.param(
                Case(op=op, n=n, c=c, h=h, w=w, groups=groups, form=form, act=ACTS[(j + 2 * k) % 5],
                     layout=LAYOUTS[(j + 2 * k) % 4], weight=(j + k) % 4 != 1, bias=(j + k) % 4 != 2),
                dtype, id=f"{dtype}-{j}"))
    return cases


def check_parity(case: Case, dtype: torch.dtype, backend: str, seed=11, device="cpu", scale=1.0):
    """Forward and every gradient of ``backend`` in ``dtype`` vs the fp64 reference on the same inputs."""
    ins = {k: None if v is None else v.to(device) for k, v in make_inputs(case, dtype, seed=seed).items()}
    out, grads, dy = run(case, ins, backend)
    ref_ins = {k: None if v is None else v.double() for k, v in ins.items()}
    ref_out, ref_grads, _ = run(case, ref_ins, "reference", dy.double())
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=expected_format(ins["x"])), f"output layout {out.stride()}"
    assert_rel_close(out, ref_out, dtype, f"{case} {dtype} forward", scale)
    for name, g in grads.items():
        assert g.dtype == ins[name].dtype and g.shape == ins[name].shape
        if ins[name].dim() == 4:
            assert g.is_contiguous(memory_format=expected_format(ins["x"])), f"grad {name} layout {g.stride()}"
        assert_rel_close(g, ref_grads[name], dtype, f"{case} {dtype} grad {name}", scale)


@pytest.mark.parametrize("backend", fused_backends("sft_modulate", "cpu"))
@pytest.mark.parametrize("case,dtype", _parity_cases("mod"))
def test_fused_modulate_matches_reference(case, dtype, backend, poisoned_outputs):
    check_parity(case, dtype, backend)


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
@pytest.mark.parametrize("case,dtype", _parity_cases("gn"))
def test_fused_group_norm_matches_reference(case, dtype, backend, poisoned_outputs):
    check_parity(case, dtype, backend)


TINY_TILE_CASES = [
    Case(op="gn", n=2, c=12, h=5, w=7, groups=2, form="merged", act="silu", layout="contiguous"),
    Case(op="gn", n=1, c=12, h=9, w=6, groups=3, form="mixed", act="leaky_relu(0.2)", layout="channels_last"),
    Case(op="gn", n=2, c=6, h=7, w=5, groups=1, form="channel", act="relu", layout="sliced", weight=False),
    # channels_last statistics read several whole groups per program: a last program with fewer groups, cg = 1, 2
    Case(op="gn", n=2, c=9, h=5, w=3, groups=9, form="merged_channel", act="silu", layout="channels_last"),
    Case(op="gn", n=1, c=10, h=3, w=5, groups=5, form="spatial", act=None, layout="channels_last", bias=False),
    Case(op="mod", n=2, c=5, h=7, w=5, form="merged_channel", act="silu", layout="channels_last"),
    Case(op="mod", n=1, c=6, h=9, w=3, form="mixed", act=None, layout="sliced"),
]


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
@pytest.mark.parametrize("case", TINY_TILE_CASES, ids=str)
def test_fused_multi_tile_paths(case, backend, poisoned_outputs, tiny_tiles):
    check_parity(case, torch.float32, backend)


def _plain_errors(case: Case, ins: dict, dy: torch.Tensor, ref_out, ref_grads):
    """Relative errors of the plain composition run in the inputs' own dtype: the dtype's inherent error."""
    leaves = {k: v.detach().requires_grad_() for k, v in ins.items() if v is not None}
    out = plain(case, **{k: leaves.get(k) for k in ins})
    grads = torch.autograd.grad(out, list(leaves.values()), dy)
    return rel_err(out, ref_out), {k: rel_err(g, ref_grads[k]) for k, g in zip(leaves, grads)}


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
@pytest.mark.parametrize("tiles", [False, True])
def test_fused_group_norm_large_mean(backend, tiles, poisoned_outputs, request):
    """x = 1000 + N(0, 1) in fp32. Rounding x - mean already costs ~3e-5 here (torch's own fp32 GroupNorm has
    that error), so the bound is 2x torch's fp32 error; a one-pass E[x^2] - E[x]^2 variance would be ~1e-1 off."""
    if tiles:
        request.getfixturevalue("tiny_tiles")
    case = Case(op="gn", n=2, c=8, h=9, w=7, groups=2, form="spatial", act="silu", mean=1000.0)
    ins = make_inputs(case, torch.float32, seed=14)
    out, grads, dy = run(case, ins, backend)
    ref_ins = {k: None if v is None else v.double() for k, v in ins.items()}
    ref_out, ref_grads, _ = run(case, ref_ins, "reference", dy.double())
    plain_out, plain_grads = _plain_errors(case, ins, dy, ref_out, ref_grads)
    assert rel_err(out, ref_out) <= max(TOL[torch.float32], 2 * plain_out), (rel_err(out, ref_out), plain_out)
    for k, g in grads.items():
        err, bound = rel_err(g, ref_grads[k]), max(TOL[torch.float32], 2 * plain_grads[k])
        assert err <= bound, f"grad {k}: {err:.3e} > {bound:.3e}"
    # the bound is tight enough to catch a naive one-pass variance
    x = ins["x"].reshape(2, 2, -1)
    m = x.mean(-1, keepdim=True)
    naive = ((x - m) * torch.rsqrt((x * x).mean(-1, keepdim=True) - m * m + 1e-5)).reshape(ins["x"].shape)
    h64 = F.group_norm(ins["x"].double(), 2, None, None, 1e-5)
    assert rel_err(naive, h64) > 100 * max(TOL[torch.float32], 2 * plain_out)


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
def test_fused_group_norm_channels_last_many_groups(backend, poisoned_outputs):
    """GroupNorm32 of 96 channels (3 per group), channels_last: 21 groups per statistics program, 11 in the last."""
    check_parity(Case(op="gn", n=1, c=96, h=3, w=3, groups=32, form="spatial", act="relu", layout="channels_last"),
                 torch.float32, backend)


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
def test_fused_spatial_one_by_one(backend, poisoned_outputs):
    """x of 1x1 spatial size (every modulation is per-channel then) and eps = 0."""
    check_parity(Case(op="gn", n=3, c=8, h=1, w=2, groups=4, form="merged_channel", act="silu", eps=0.0),
                 torch.float32, backend)
    check_parity(Case(op="mod", n=3, c=8, h=1, w=1, form="merged", act="relu"), torch.float32, backend)


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
@pytest.mark.parametrize("op", ["mod", "gn"])
def test_fused_fp64(op, backend, poisoned_outputs):
    """fp64: the native CPU kernels compute it in fp64 (fp64 tolerance); Triton declares fp32/fp16/bf16 only, so
    naming it for fp64 is a clear error (the registry's float64 policy)."""
    case = Case(op=op, n=2, c=6, h=5, w=3, groups=3, form="mixed", act="silu", layout="channels_last")
    if backend == "triton":
        with pytest.raises(burstkern.BackendUnavailableError, match="float64") as e:
            run(case, make_inputs(case, torch.float64, seed=3), backend)
        assert e.value.reason is burstkern.Reason.DTYPE
        return
    check_parity(case, torch.float64, backend)


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
def test_fused_backward_is_deterministic(backend, tiny_tiles):
    case = Case(op="gn", n=2, c=8, h=9, w=7, groups=2, form="merged_channel", act="silu")
    ins = make_inputs(case, torch.float32, seed=12)
    _, g1, dy = run(case, ins, backend)
    _, g2, _ = run(case, ins, backend, dy)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), name


@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cpu"))
def test_fused_statistics_outputs(backend, poisoned_outputs):
    case = Case(n=2, c=12, groups=3, layout="channels_last", mean=10.0)
    ins = make_inputs(case, torch.bfloat16, seed=13)
    args = (ins["x"], ins["gamma"], ins["beta"], 3, ins["weight"], ins["bias"], 1e-5, 1, 0.0)
    with burstkern.backend(backend):
        out, mean, rstd = torch.ops.burstkern.sft_group_norm(*args)
    with burstkern.backend("reference"):
        rout, rmean, rrstd = torch.ops.burstkern.sft_group_norm(*args)
    assert mean.dtype == torch.float32 and rstd.dtype == torch.float32
    assert_rel_close(mean, rmean, torch.float32, "mean")
    assert_rel_close(rstd, rrstd, torch.float32, "rstd")


# ----------------------------------------------------------------------------------------------
# GPU: the shapes that matter (U-Net levels), only where a GPU is present
# ----------------------------------------------------------------------------------------------
GPU_CASES = [
    (Case(op="gn", n=4, c=128, h=96, w=96, groups=32, form="merged", act="silu", layout="channels_last"),
     torch.bfloat16),
    (Case(op="gn", n=2, c=256, h=48, w=48, groups=32, form="merged_channel", act="silu"), torch.float32),
    (Case(op="gn", n=1, c=64, h=384, w=384, groups=32, form="spatial", act=None, mean=100.0), torch.float32),
    (Case(op="mod", n=16, c=64, h=96, w=96, form="merged", act="leaky_relu(0.1)", layout="channels_last"),
     torch.bfloat16),
    (Case(op="mod", n=4, c=128, h=97, w=95, form="mixed", act="silu", layout="sliced"), torch.float16),
]


@requires_cuda
@pytest.mark.parametrize("backend", fused_backends("sft_group_norm", "cuda"))
@pytest.mark.parametrize("case,dtype", GPU_CASES, ids=lambda v: str(v))
def test_fused_gpu_shapes(case, dtype, backend, poisoned_outputs):
    check_parity(case, dtype, backend, device="cuda")


@pytest.mark.skipif(sft_triton is None, reason="Triton is not importable")
@pytest.mark.parametrize("n, c, groups", [(4096, 128, 32), (70000, 64, 32), (1, 4096, 32)])
def test_triton_launch_grids_fit_cuda_limits(n, c, groups):
    """Grid axes 1 and 2 stop at 65535 on CUDA: N (or N*G rows of statistics) must never land there."""
    for hw, cl in ((96 * 96, False), (7, True)):
        bc, bhw = sft_triton._blocks(c, hw, cl)
        grid, nb = sft_triton.tile_grid(n, c, hw, bc, bhw)
        assert grid[0] < 2 ** 31 and max(grid[1:]) <= 65535, grid
        assert grid[0] == n * nb and nb * bhw >= hw
        rows = n * groups
        chunk, nchunk = sft_triton._stat_chunks(rows, hw, bhw)
        sgrid = sft_triton.stats_grid(rows, nchunk)
        assert len(sgrid) == 1 and sgrid[0] < 2 ** 31 and sgrid[0] == rows * nchunk
