"""deform_conv2d: the reference pinned to torchvision (fp64, forward and every gradient), gradcheck, opcheck,
torch.compile, argument errors, bounded reference memory; then every fused backend pinned to the reference.

Fused backends run on the CPU through the Triton interpreter when there is no GPU, so shapes stay small here
(N <= 2, C <= 16, H, W <= 9); bigger shapes run only when a GPU is present.
"""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch
import torch.nn.functional as F

import burstkern
from burstkern.ops import deform_conv2d
from burstkern.ops.deform_conv import op as dc_op
from burstkern.ops.deform_conv import reference

from utils import DTYPES, assert_rel_close, fused_backends, poison_, requires_cuda

tv_ops = pytest.importorskip("torchvision.ops")


@dataclasses.dataclass(frozen=True)
class Cfg:
    n: int = 2
    cin: int = 4
    cout: int = 6
    h: int = 7
    w: int = 9
    kh: int = 3
    kw: int = 3
    stride: tuple = (1, 1)
    padding: tuple = (1, 1)
    dilation: tuple = (1, 1)
    groups: int = 1
    og: int = 1
    mask: bool = True
    bias: bool = True
    offset_scale: float = 1.5

    def out_hw(self):
        return reference.output_size(self.h, self.w, self.kh, self.kw, self.stride, self.padding, self.dilation)

    def __str__(self):
        return (f"n{self.n}c{self.cin}-{self.cout}_{self.h}x{self.w}k{self.kh}x{self.kw}s{self.stride}p{self.padding}"
                f"d{self.dilation}g{self.groups}og{self.og}{'' if self.mask else '_nomask'}"
                f"{'' if self.bias else '_nobias'}_off{self.offset_scale}")


def make_inputs(cfg: Cfg, dtype=torch.float64, device="cpu", seed=0, layout="contiguous"):
    """Fresh random (input, offset, weight, bias, mask) for ``cfg``; ``layout``: contiguous|channels_last|strided."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = cfg.out_hw()
    k = cfg.kh * cfg.kw

    def rnd(*shape, scale=1.0, positive=False):
        t = torch.rand(*shape, generator=g, dtype=torch.float64) if positive else \
            torch.randn(*shape, generator=g, dtype=torch.float64) * scale
        return t.to(dtype=dtype, device=device)

    x = rnd(cfg.n, cfg.cin, cfg.h, cfg.w)
    off = rnd(cfg.n, 2 * cfg.og * k, ho, wo, scale=cfg.offset_scale)
    w = rnd(cfg.cout, cfg.cin // cfg.groups, cfg.kh, cfg.kw, scale=(cfg.cin // cfg.groups * k) ** -0.5)
    b = rnd(cfg.cout) if cfg.bias else None
    m = rnd(cfg.n, cfg.og * k, ho, wo, positive=True) if cfg.mask else None
    if layout == "channels_last":
        x, off = x.contiguous(memory_format=torch.channels_last), off.contiguous(memory_format=torch.channels_last)
        m = None if m is None else m.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        # every 4-D tensor a strided view into a bigger buffer (non-contiguous in every dimension it can be)
        def strided(t):
            big = torch.empty(t.shape[0], t.shape[1] * 2, t.shape[2], t.shape[3] * 2, dtype=t.dtype, device=device)
            poison_(big)
            v = big[:, ::2, :, ::2]
            v.copy_(t)
            return v
        x, off = strided(x), strided(off)
        m = None if m is None else strided(m)
        wt = torch.empty(w.shape[::-1], dtype=w.dtype, device=device).permute(3, 2, 1, 0)
        w = wt.copy_(w)
    return x, off, w, b, m


def run(fn, cfg: Cfg, x, off, w, b, m, grad_out=None):
    """Output and the gradients (input, offset, weight, bias, mask) of ``fn`` for one upstream gradient."""
    # leaves with the caller's exact strides (channels_last, strided views), so the op sees that layout
    leaves = [None if t is None else
              torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device).copy_(t).requires_grad_(True)
              for t in (x, off, w, b, m)]
    out = fn(leaves[0], leaves[1], leaves[2], leaves[3], cfg.stride, cfg.padding, cfg.dilation, leaves[4])
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    out.backward(grad_out.to(out.dtype).to(out.device))
    return out.detach(), [None if t is None else t.grad for t in leaves], grad_out


def tv(x, off, w, b, stride, padding, dilation, m):
    return tv_ops.deform_conv2d(x, off, w, b, stride=stride, padding=padding, dilation=dilation, mask=m)


def bk(x, off, w, b, stride, padding, dilation, m):
    return deform_conv2d(x, off, w, b, stride=stride, padding=padding, dilation=dilation, mask=m)


def ref_bk(*args):
    """burstkern's public function on the reference backend (the spec), whatever auto would pick."""
    with burstkern.backend("reference"):
        return bk(*args)


NAMES = ("input", "offset", "weight", "bias", "mask")


def _seed(*keys) -> int:
    """A per-case seed that is the same in every run (str hashes are salted per process)."""
    return zlib.crc32(repr(keys).encode()) % 10000

REF_CASES = [
    Cfg(),
    Cfg(n=1),
    Cfg(cin=4, cout=6, groups=2, og=2),
    Cfg(cin=8, cout=4, og=4, h=8, w=5),
    Cfg(cin=8, cout=8, groups=4, og=2),
    Cfg(cin=6, cout=4, og=3, groups=1, kh=3, kw=2, stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    Cfg(stride=(2, 2), padding=(2, 2), dilation=(2, 2), h=9, w=9),
    # Burstormer's alignment layer scaled down: groups 8, offset groups 8, dilation 2, padding 2
    Cfg(cin=16, cout=16, groups=8, og=8, dilation=(2, 2), padding=(2, 2), h=9, w=7),
    Cfg(mask=False),
    Cfg(bias=False, mask=False),
    Cfg(offset_scale=40.0),  # most samples far outside the image
    Cfg(n=0),
    Cfg(kh=1, kw=1, padding=(0, 0)),
]


# ----------------------------------------------------------------------------------------------
# reference vs torchvision
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", REF_CASES, ids=str)
def test_reference_matches_torchvision(cfg):
    args = make_inputs(cfg, seed=_seed(cfg))
    out, grads, gout = run(ref_bk, cfg, *args)
    ref, ref_grads, _ = run(tv, cfg, *args, grad_out=gout)
    assert out.shape == ref.shape == (cfg.n, cfg.cout, *cfg.out_hw())
    assert_rel_close(out, ref, torch.float64, "output")
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert (g is None) == (r is None), name
        if g is not None:
            assert_rel_close(g, r, torch.float64, f"grad {name}")
            assert g.shape == r.shape


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_reference_layouts(layout):
    cfg = Cfg(cin=4, cout=4, groups=2, og=2)
    args = make_inputs(cfg, seed=3, layout=layout)
    assert not args[0].is_contiguous()
    out, grads, gout = run(ref_bk, cfg, *args)
    ref, ref_grads, _ = run(tv, cfg, *[None if t is None else t.contiguous() for t in args], grad_out=gout)
    assert_rel_close(out, ref, torch.float64, "output")
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert_rel_close(g, r, torch.float64, f"grad {name}")
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    else:
        assert out.is_contiguous()


def test_zero_offsets_equal_conv2d_with_padded_border():
    # zero offsets put the border taps exactly on y = -1 / x = -1 (the padded border): must be conv2d exactly
    cfg = Cfg(cin=4, cout=6, groups=2, mask=False, padding=(1, 2), dilation=(1, 2))
    x, off, w, b, _ = make_inputs(cfg, seed=5)
    off = torch.zeros_like(off)
    out, grads, gout = run(ref_bk, cfg, x, off, w, b, None)
    tvo, tv_grads, _ = run(tv, cfg, x, off, w, b, None, grad_out=gout)
    conv = lambda x, off, w, b, s, p, d, m: F.conv2d(x, w, b, s, p, d, groups=cfg.groups)  # noqa: E731
    ref, ref_grads, _ = run(conv, cfg, x, off, w, b, None, grad_out=gout)
    assert_rel_close(out, ref, torch.float64, "output vs conv2d")
    for i in (0, 2, 3):
        assert_rel_close(grads[i], ref_grads[i], torch.float64, f"grad {NAMES[i]} vs conv2d")
    # the offset gradient at the border is one-sided, as in torchvision
    assert_rel_close(grads[1], tv_grads[1], torch.float64, "grad offset vs torchvision")


def test_gradcheck_reference():
    cfg = Cfg(n=1, cin=4, cout=2, h=5, w=4, groups=2, og=2, stride=(1, 2), dilation=(2, 1), padding=(2, 1))
    x, off, w, b, m = [t.requires_grad_(True) for t in make_inputs(cfg, seed=7)]
    fn = lambda x, off, w, b, m: deform_conv2d(x, off, w, b, cfg.stride, cfg.padding, cfg.dilation, m)  # noqa
    assert torch.autograd.gradcheck(fn, (x, off, w, b, m), eps=1e-6, atol=1e-6, rtol=1e-5)


def _op_args(cfg, seed=11, layout="contiguous"):
    x, off, w, b, m = make_inputs(cfg, dtype=torch.float32, seed=seed, layout=layout)
    ints = (*cfg.stride, *cfg.padding, *cfg.dilation)
    return x, off, w, b, ints, m


OPCHECK_CASES = [(Cfg(groups=2, og=2), "contiguous"), (Cfg(mask=False, bias=False), "channels_last")]


@pytest.mark.parametrize("cfg,layout", OPCHECK_CASES, ids=["mask", "nomask"])
def test_opcheck_forward(cfg, layout):
    x, off, w, b, ints, m = _op_args(cfg, layout=layout)
    req = lambda t: None if t is None else t.requires_grad_(True)  # noqa: E731
    torch.library.opcheck(torch.ops.burstkern.deform_conv2d.default, (req(x), req(off), req(w), req(b), *ints, req(m)))


@pytest.mark.parametrize("cfg,layout", OPCHECK_CASES, ids=["mask", "nomask"])
def test_opcheck_backward_reference(cfg, layout):
    x, off, w, b, ints, m = _op_args(cfg, layout=layout)
    grad = torch.randn(cfg.n, cfg.cout, *cfg.out_hw())
    torch.library.opcheck(torch.ops.burstkern.deform_conv2d_backward.default, (grad, x, off, w, b, *ints, m))


def _opcheck_both(cfg, layout):
    x, off, w, b, ints, m = _op_args(cfg, layout=layout)
    req = lambda t: None if t is None else t.requires_grad_(True)  # noqa: E731
    torch.library.opcheck(torch.ops.burstkern.deform_conv2d.default, (req(x), req(off), req(w), req(b), *ints, req(m)))
    grad = torch.randn(cfg.n, cfg.cout, *cfg.out_hw())
    torch.library.opcheck(torch.ops.burstkern.deform_conv2d_backward.default,
                          (grad, x.detach(), off.detach(), w.detach(), None if b is None else b.detach(), *ints,
                           None if m is None else m.detach()))


def test_compile_fullgraph_matches_eager():
    cfg = Cfg(groups=2, og=2, stride=(2, 1))
    x, off, w, b, _, m = _op_args(cfg, seed=13)

    def f(x, off, w, b, m):
        return torch.tanh(deform_conv2d(x, off, w, b, cfg.stride, cfg.padding, cfg.dilation, m)) * 2

    eager_out, eager_grads, gout = run(lambda x, o, w, b, s, p, d, m: f(x, o, w, b, m), cfg, x, off, w, b, m)
    compiled = torch.compile(f, fullgraph=True)  # inductor: the surrounding ops are compiled, the op stays opaque
    comp_out, comp_grads, _ = run(lambda x, o, w, b, s, p, d, m: compiled(x, o, w, b, m), cfg, x, off, w, b, m,
                                  grad_out=gout)
    assert_rel_close(comp_out, eager_out, torch.float32, "compiled output")
    for name, g, r in zip(NAMES, comp_grads, eager_grads):
        assert_rel_close(g, r, torch.float32, f"compiled grad {name}")  # fp32 inputs, inductor codegen


# ----------------------------------------------------------------------------------------------
# half precision: computed in fp32, rounded once
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_half_computes_in_fp32(dtype):
    cfg = Cfg(cin=8, cout=8, groups=2, og=4)
    args = make_inputs(cfg, dtype=dtype, seed=17)
    up = [None if t is None else t.to(torch.float64) for t in args]
    out, grads, gout = run(ref_bk, cfg, *args)
    ref, ref_grads, _ = run(ref_bk, cfg, *up, grad_out=gout)
    assert out.dtype == dtype
    assert_rel_close(out, ref, dtype, "output")
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert g.dtype == dtype
        assert_rel_close(g, r, dtype, f"grad {name}")
    # exactly the fp32 computation rounded once
    out32 = deform_conv2d(*[None if t is None else t.float() for t in args[:4]], cfg.stride, cfg.padding,
                          cfg.dilation, args[4].float())
    assert torch.equal(out, out32.to(dtype))


# ----------------------------------------------------------------------------------------------
# argument errors: right type, argument named, what it got
# ----------------------------------------------------------------------------------------------
def _good():
    cfg = Cfg(cin=4, cout=6, groups=2, og=2)
    return dict(zip(("input", "offset", "weight", "bias", "mask"), make_inputs(cfg, dtype=torch.float32))), cfg


def _call(a, cfg, **over):
    a = {**a, **over}
    kw = dict(stride=over.get("stride", cfg.stride), padding=over.get("padding", cfg.padding),
              dilation=over.get("dilation", cfg.dilation))
    return deform_conv2d(a["input"], a["offset"], a["weight"], a["bias"], mask=a["mask"], **kw)


BAD = [
    ("input", lambda a: dict(input=a["input"].numpy()), TypeError, "input"),
    ("input-3d", lambda a: dict(input=a["input"][0]), ValueError, "input"),
    ("input-int", lambda a: dict(input=a["input"].to(torch.int32)), TypeError, "input"),
    ("offset-3d", lambda a: dict(offset=a["offset"][0]), ValueError, "offset"),
    ("offset-dtype", lambda a: dict(offset=a["offset"].double()), TypeError, "offset"),
    ("offset-device", lambda a: dict(offset=a["offset"].to("meta")), RuntimeError, "offset"),
    ("offset-channels", lambda a: dict(offset=a["offset"][:, :17]), ValueError, "offset"),
    ("offset-groups", lambda a: dict(offset=torch.cat([a["offset"], a["offset"][:, :18]], 1)), ValueError, "offset"),
    ("offset-hw", lambda a: dict(offset=a["offset"][:, :, :-1]), ValueError, "offset"),
    ("offset-batch", lambda a: dict(offset=a["offset"][:1]), ValueError, "offset"),
    ("weight-3d", lambda a: dict(weight=a["weight"][0]), ValueError, "weight"),
    ("weight-dtype", lambda a: dict(weight=a["weight"].half()), TypeError, "weight"),
    ("weight-device", lambda a: dict(weight=a["weight"].to("meta")), RuntimeError, "weight"),
    ("weight-cin", lambda a: dict(weight=torch.randn(6, 3, 3, 3)), ValueError, "weight"),
    ("weight-cout", lambda a: dict(weight=torch.randn(5, 2, 3, 3)), ValueError, "weight", "5 output channels"),
    ("bias-2d", lambda a: dict(bias=a["bias"][None]), ValueError, "bias"),
    ("bias-len", lambda a: dict(bias=a["bias"][:5]), ValueError, "bias"),
    ("bias-dtype", lambda a: dict(bias=a["bias"].double()), TypeError, "bias"),
    ("bias-type", lambda a: dict(bias=[0.0] * 6), TypeError, "bias"),
    ("mask-3d", lambda a: dict(mask=a["mask"][0]), ValueError, "mask"),
    ("mask-shape", lambda a: dict(mask=a["mask"][:, :9]), ValueError, "mask"),
    ("mask-dtype", lambda a: dict(mask=a["mask"].half()), TypeError, "mask"),
    ("mask-device", lambda a: dict(mask=a["mask"].to("meta")), RuntimeError, "mask"),
    ("stride-0", lambda a: dict(stride=0), ValueError, "stride"),
    ("stride-type", lambda a: dict(stride=1.5), TypeError, "stride"),
    ("stride-len", lambda a: dict(stride=(1, 1, 1)), TypeError, "stride"),
    ("padding-neg", lambda a: dict(padding=-1), ValueError, "padding"),
    ("dilation-0", lambda a: dict(dilation=(1, 0)), ValueError, "dilation"),
    ("empty-output", lambda a: dict(input=a["input"][:, :, :1, :1], padding=0), ValueError, "empty", "(2, 4, 1, 1)"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_argument_errors(case):
    _, mutate, exc, word, *got = case
    a, cfg = _good()
    with pytest.raises(exc) as info:
        _call(a, cfg, **mutate(a))
    msg = str(info.value)
    assert word in msg, msg
    # says what it got: the given text, else the bad tensor's shape or dtype, else the bad value
    bad = next(iter(mutate(a).values()))
    if got:
        assert got[0] in msg, msg
    elif isinstance(bad, torch.Tensor):
        assert str(tuple(bad.shape)) in msg or str(bad.dtype) in msg, msg
    elif not isinstance(bad, (int, float, tuple)):
        assert type(bad).__name__ in msg, msg
    else:
        assert str(bad) in msg or str((bad, bad)) in msg, msg


def test_good_arguments_pass():
    a, cfg = _good()
    assert _call(a, cfg).shape == (cfg.n, cfg.cout, *cfg.out_hw())


@pytest.mark.parametrize("cfg", [Cfg(groups=2, og=2), Cfg(mask=False, bias=False, stride=(2, 1)),
                                 Cfg(og=1, dilation=(2, 2), padding=(2, 2))], ids=["mask", "nomask", "og1dil2"])
def test_closed_form_backward_equals_autograd_of_the_forward(cfg, monkeypatch):
    """The reference backward is written out; autograd through the reference forward must agree (fp64),
    also when the batch is processed in several chunks."""
    x, off, w, b, m = make_inputs(cfg, seed=23)
    ints = (*cfg.stride, *cfg.padding, *cfg.dilation)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, off, w, b, m)]
    out = reference.deform_conv2d(*leaves[:4], *ints, leaves[4])
    grad = torch.randn_like(out)
    present = [t for t in leaves if t is not None]
    auto = dict(zip([i for i, t in enumerate(leaves) if t is not None], torch.autograd.grad(out, present, grad)))
    monkeypatch.setattr(reference, "_MAX_COLUMN_ELEMENTS", 1)  # one sample per chunk
    closed = reference.deform_conv2d_backward(grad, x, off, w, b, *ints, m)
    # closed form returns (input, offset, weight, bias, mask); leaves are (input, offset, weight, bias, mask)
    for i, name in enumerate(("input", "offset", "weight", "bias", "mask")):
        if leaves[i] is None:
            assert closed[i] is None
        else:
            assert_rel_close(closed[i], auto[i], torch.float64, f"grad {name}", scale=10)


# ----------------------------------------------------------------------------------------------
# reference memory stays bounded: the column buffer is built per batch chunk
# ----------------------------------------------------------------------------------------------
def test_reference_memory_is_chunked(monkeypatch):
    cfg = Cfg(n=7, cin=4, cout=4, h=6, w=6)
    args = make_inputs(cfg, seed=19)
    full = reference.deform_conv2d(*args[:4], *cfg.stride, *cfg.padding, *cfg.dilation, args[4])
    per_sample = cfg.cin * cfg.kh * cfg.kw * cfg.out_hw()[0] * cfg.out_hw()[1]
    limit = 2 * per_sample + 1  # two samples per chunk -> 4 chunks
    sizes = []
    orig = reference.bilinear_columns

    def spy(*a, **k):
        cols = orig(*a, **k)
        sizes.append(cols.numel())
        return cols

    monkeypatch.setattr(reference, "_MAX_COLUMN_ELEMENTS", limit)
    monkeypatch.setattr(reference, "bilinear_columns", spy)
    chunked = reference.deform_conv2d(*args[:4], *cfg.stride, *cfg.padding, *cfg.dilation, args[4])
    assert len(sizes) == 4 and max(sizes) <= limit, sizes
    assert_rel_close(chunked, full, torch.float64, "chunked output")


# ----------------------------------------------------------------------------------------------
# fused backends (triton; cuda when built) vs the fp64 reference: forward and every gradient
# ----------------------------------------------------------------------------------------------
OP = dc_op.OP
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = fused_backends(OP, DEVICE)

PARITY_CASES = [
    Cfg(cin=8, cout=8, og=1),
    Cfg(cin=8, cout=8, og=8, h=5, w=6),  # og = C: one channel per offset group
    Cfg(cin=8, cout=16, groups=2, og=4, h=8, w=8),
    Cfg(cin=12, cout=8, groups=2, og=3),  # channel chunks straddle offset groups and weight groups
    Cfg(n=1, cin=4, cout=6, h=9, w=7, stride=(2, 2), padding=(2, 2), dilation=(2, 2)),
    Cfg(cin=16, cout=16, groups=8, og=8, dilation=(2, 2), padding=(2, 2), h=7, w=5),  # Burstormer, scaled down
    Cfg(cin=6, cout=4, og=3, kh=3, kw=2, stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
    Cfg(cin=4, cout=4, offset_scale=40.0),  # far outside the image
    Cfg(cin=4, cout=4, mask=False, bias=False),
]


def _parity(backend, cfg, dtype, layout="contiguous", seed=0):
    args = make_inputs(cfg, dtype=dtype, device=DEVICE, seed=seed, layout=layout)
    # the reference sees exactly the (rounded) inputs the kernel sees, in fp64
    ref_args = [None if t is None else t.detach().to(torch.float64) for t in args]
    ref, ref_grads, gout = run(ref_bk, cfg, *ref_args)
    with burstkern.backend(backend):
        out, grads, _ = run(bk, cfg, *args, grad_out=gout)
    assert out.dtype == dtype and out.device.type == DEVICE
    assert_rel_close(out, ref, dtype, f"{backend} output")
    for name, g, r in zip(NAMES, grads, ref_grads):
        assert (g is None) == (r is None), name
        if g is not None:
            assert g.dtype == dtype
            assert_rel_close(g, r, dtype, f"{backend} grad {name}")
    return out, grads


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", PARITY_CASES, ids=str)
def test_fused_parity(backend, cfg, dtype, poisoned_outputs):
    _parity(backend, cfg, dtype, seed=_seed(cfg, dtype))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_fused_layouts(backend, layout, dtype, poisoned_outputs):
    cfg = Cfg(cin=8, cout=8, groups=2, og=4)
    out, _ = _parity(backend, cfg, dtype, layout=layout, seed=21)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


MULTI_TILE = [(Cfg(n=1, cin=20, cout=20, og=1, h=4, w=5), torch.float32),
              (Cfg(n=1, cin=20, cout=20, og=1, h=4, w=5), torch.bfloat16),
              (Cfg(n=1, cin=24, cout=20, groups=2, og=3, h=4, w=5), torch.float32),
              (Cfg(n=1, cin=24, cout=20, groups=2, og=3, h=4, w=5), torch.float16)]


@pytest.mark.parametrize("cfg,dtype", MULTI_TILE, ids=[f"{c}-{d}" for c, d in MULTI_TILE])
def test_triton_multi_tile(cfg, dtype, poisoned_outputs, monkeypatch):
    """Small blocks force several channel chunks, output-channel tiles (with tails) and pixel splits of the
    grad-weight reduction, which the default CPU block sizes never reach at these shapes."""
    if not any(p.values[0] == "triton" and not p.marks for p in FUSED):
        pytest.skip("triton backend not available here")
    from burstkern.ops.deform_conv import triton as dc_triton
    monkeypatch.setattr(dc_triton, "_blocks", lambda cin_g, cout_g, on_gpu, dtype=None: (16, 16, 16, 4 if on_gpu else 1))
    monkeypatch.setattr(dc_triton, "_weight_splits", lambda m_total, tiles, bm, on_gpu: 2)
    _parity("triton", cfg, dtype, seed=_seed(cfg, dtype))


@pytest.mark.parametrize("backend", FUSED)
def test_fused_empty_batch(backend, poisoned_outputs):
    cfg = Cfg(n=0)
    args = make_inputs(cfg, dtype=torch.float32, device=DEVICE)
    with burstkern.backend(backend):
        out, grads, _ = run(bk, cfg, *args)
    assert out.shape == (0, cfg.cout, *cfg.out_hw())
    assert torch.equal(grads[2], torch.zeros_like(grads[2])) and torch.equal(grads[3], torch.zeros_like(grads[3]))


@pytest.mark.parametrize("backend", FUSED)
def test_fused_deterministic_backward(backend, poisoned_outputs, monkeypatch):
    if backend == "triton":
        from burstkern.ops.deform_conv import triton as dc_triton
        # several launches of the deterministic grad-input path (index_put_ per chunk of pixels)
        monkeypatch.setattr(dc_triton, "_MAX_CONTRIBUTIONS", 8 * 9 * 4 * 20)
    cfg = Cfg(cin=8, cout=8, groups=2, og=2, h=7, w=7, offset_scale=3.0)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _, g1 = _parity(backend, cfg, torch.float32, seed=23)
        _, g2 = _parity(backend, cfg, torch.float32, seed=23)
    finally:
        torch.use_deterministic_algorithms(prev)
    for name, a, b in zip(NAMES, g1, g2):
        assert torch.equal(a, b), f"grad {name} differs between two deterministic runs"


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("cfg,layout", [(Cfg(n=1, h=5, w=6, groups=2, og=2), "contiguous"),
                                        (Cfg(n=1, h=5, w=6, mask=False, bias=False), "channels_last")],
                         ids=["mask", "nomask"])
def test_fused_opcheck(backend, cfg, layout):
    with burstkern.backend(backend):
        _opcheck_both(cfg, layout)


@pytest.mark.parametrize("backend", FUSED)
def test_fused_compile_fullgraph(backend):
    cfg = Cfg(cin=8, cout=8, og=2)
    args = make_inputs(cfg, dtype=torch.float32, device=DEVICE, seed=29)
    # aot_eager: the same graph capture (fake impls, backward op) without a second inductor build
    compiled = torch.compile(lambda *a: bk(*a), fullgraph=True, backend="aot_eager")
    with burstkern.backend(backend):
        eager_out, eager_grads, gout = run(bk, cfg, *args)
        comp_out, comp_grads, _ = run(compiled, cfg, *args, grad_out=gout)
    assert_rel_close(comp_out, eager_out, torch.float64, "compiled output")
    for name, g, r in zip(NAMES, comp_grads, eager_grads):
        assert_rel_close(g, r, torch.float64, f"compiled grad {name}")


@requires_cuda
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", [Cfg(n=4, cin=64, cout=64, h=33, w=31, og=8, offset_scale=4.0),
                                 Cfg(n=3, cin=48, cout=48, h=24, w=24, groups=8, og=8, dilation=(2, 2),
                                     padding=(2, 2)),
                                 Cfg(n=2, cin=64, cout=64, h=40, w=40, og=1, offset_scale=20.0)], ids=str)
def test_fused_parity_gpu_shapes(backend, cfg, dtype, poisoned_outputs):
    _parity(backend, cfg, dtype, seed=31)


# ----------------------------------------------------------------------------------------------
# the Triton kernels compile for a real GPU target (the interpreter accepts code the compiler may not)
# ----------------------------------------------------------------------------------------------
_AOT_SCRIPT = r'''
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from burstkern.ops.deform_conv import triton as T

target = GPUTarget("cuda", 90, 32)


def build(fn, dt, consts, special):
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in special:
            sig[name] = special[name]
        elif name.endswith("_ptr"):
            sig[name] = "*" + dt
        else:
            sig[name] = "i64" if name in ("p_start", "p_end") else "i32"
    k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=target, options={"num_warps": 4})
    assert k.asm.get("cubin"), fn
    print("ok", fn.__name__, dt, consts)


BW = dict(gi_ptr="*fp32", cidx_ptr="*i64", cval_ptr="*fp32", ws_ptr="*fp32")
for dt, mask, uni in (("fp32", True, True), ("bf16", False, False), ("fp16", True, False)):
    build(T._deform_conv2d_fwd_kernel, dt, dict(KH=3, KW=3, HAS_MASK=mask, HAS_BIAS=mask, OG_UNIFORM=uni,
          IEEE=dt == "fp32", SPLIT_BF16=dt == "bf16", BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), BW)
for dt, mask, det in (("fp32", True, False), ("bf16", False, True)):
    build(T._deform_conv2d_bwd_kernel, dt, dict(KH=3, KW=3, HAS_MASK=mask, DETERMINISTIC=det, IEEE=dt == "fp32",
          BLOCK_M=64, BLOCK_N=64, BLOCK_K=16), BW)
for dt, mask, uni in (("fp32", True, True), ("bf16", False, False)):
    build(T._deform_conv2d_bwd_weight_kernel, dt, dict(KH=3, KW=3, HAS_MASK=mask, OG_UNIFORM=uni, IEEE=dt == "fp32",
          BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), BW)
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the parity tests compile the kernels for real")
def test_triton_kernels_compile_for_sm90():
    """Ahead-of-time compile every kernel variant family to an sm_90 cubin (no GPU needed: Triton's ptxas)."""
    import os
    import subprocess
    import sys

    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") == 7, proc.stdout
