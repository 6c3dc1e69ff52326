"""burstkern as a drop-in for torchvision's deform_conv2d / DeformConv2d: torchvision's own TestDeformConv
expectations (error types and wording, float64, batch 0, TorchScript), the library's error classes, meta tensors."""

import pytest
import torch
import torchvision.ops as tv_ops

import burstkern
from burstkern import ops
from burstkern.nn import DeformConv2d, ModulatedDeformConv2d, SFT, SPADEGroupNorm, ScaleShiftGroupNorm
from burstkern.registry import backend_available

from utils import assert_rel_close


def _layer_args(batch=10, dtype=torch.float64):
    """torchvision's TestDeformConv.get_fn_args shapes: 6 -> 2 channels, groups 2, offset groups 3, kernel 3x2."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 6, 5, 4, generator=g, dtype=dtype)
    layer = DeformConv2d(6, 2, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2)
    out_h = (5 + 2 * 1 - (2 * (3 - 1) + 1)) // 2 + 1
    out_w = (4 + 2 * 0 - (1 * (2 - 1) + 1)) // 1 + 1
    offset = torch.randn(batch, 3 * 2 * 3 * 2, out_h, out_w, generator=g, dtype=dtype)
    mask = torch.randn(batch, 3 * 3 * 2, out_h, out_w, generator=g, dtype=dtype)
    return layer.to(dtype), x, offset, mask


def test_wrong_sizes_raise_runtime_error_with_torchvision_wording():
    """torchvision's test_wrong_sizes, verbatim expectations."""
    layer, x, offset, mask = _layer_args()
    with pytest.raises(RuntimeError, match="the shape of the offset"):
        layer(x, torch.rand_like(offset[:, :2]))
    with pytest.raises(RuntimeError, match=r"mask.shape\[1\] is not valid"):
        layer(x, offset, torch.rand_like(mask[:, :2]))


@pytest.mark.parametrize("case", ["offset_channels", "mask_channels", "offset_batch", "offset_hw", "mask_hw",
                                  "weight_groups", "padding", "input_rank", "dtype"])
def test_argument_errors_are_runtime_and_value_errors(case):
    x, w = torch.randn(2, 6, 5, 5), torch.randn(4, 3, 3, 3)
    off, m = torch.randn(2, 18, 5, 5), torch.rand(2, 9, 5, 5)
    kw = dict(padding=1)
    if case == "offset_channels":
        off = torch.randn(2, 20, 5, 5)
    elif case == "mask_channels":
        m = m[:, :2]
    elif case == "offset_batch":
        off = off[:1]
    elif case == "offset_hw":
        off = off[:, :, :4]
    elif case == "mask_hw":
        m = m[:, :, :4]
    elif case == "weight_groups":
        w = torch.randn(4, 4, 3, 3)
    elif case == "padding":
        kw = dict(padding=-1)
    elif case == "input_rank":
        x = x[0]
    elif case == "dtype":
        off = off.double()
    for catch in (RuntimeError, ValueError, burstkern.ArgumentError):
        with pytest.raises(catch):
            ops.deform_conv2d(x, off, w, mask=m, **kw)
    if case == "dtype":
        with pytest.raises(TypeError, match="offset has dtype torch.float64 but input has torch.float32"):
            ops.deform_conv2d(x, off, w, mask=m, **kw)
    # torchvision raises RuntimeError for every case but the rank one (its Python unpacking: ValueError)
    expected = ValueError if case == "input_rank" else RuntimeError
    with pytest.raises(expected):
        tv_ops.deform_conv2d(x, off, w, mask=m, **kw)


def test_shapes_are_checked_before_dtypes():
    x, w = torch.randn(2, 6, 5, 5), torch.randn(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="the shape of the offset"):
        ops.deform_conv2d(x, torch.randn(2, 2, 5, 5, dtype=torch.float64), w, padding=1)


def test_module_argument_errors():
    with pytest.raises(burstkern.ArgumentError, match="kernel_size must be an int or a pair of ints >= 1, got 0"):
        DeformConv2d(4, 4, kernel_size=0)
    with pytest.raises(ValueError, match="stride"):
        ModulatedDeformConv2d(4, 4, 3, stride=0)
    with pytest.raises(burstkern.ArgumentError, match=r"SPADEGroupNorm: x must be a 4-D tensor \[N, 8, H, W\].*"
                                                      r"shape \(8, 5, 5\)"):
        SPADEGroupNorm(8, 4, 8, num_groups=2)(torch.randn(8, 5, 5), torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize("batch", [0, 1, 33])
def test_float64_and_batch_sizes_match_torchvision(batch):
    """fp64 on every backend that declares it (reference; native on the CPU), batch 0 and 33 as torchvision."""
    layer, x, offset, mask = _layer_args(batch)
    ref = tv_ops.DeformConv2d(6, 2, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2)
    ref = ref.double()
    ref.load_state_dict(layer.state_dict())
    names = ["reference"] + (["native"] if backend_available("native", "cpu", "deform_conv2d",
                                                             torch.float64).ok else [])
    for name in names:
        with burstkern.backend(name):
            out = layer(x, offset, mask)
        assert out.shape == (batch, 2, 2, 3), name
        assert_rel_close(out, ref(x, offset, mask), torch.float64, name)


MODULES = [
    (lambda: DeformConv2d(4, 4, 3, padding=1), lambda: (torch.randn(2, 4, 5, 5), torch.randn(2, 18, 5, 5))),
    (lambda: DeformConv2d(4, 4, 3, padding=1, bias=False),
     lambda: (torch.randn(2, 4, 5, 5), torch.randn(2, 18, 5, 5), torch.rand(2, 9, 5, 5))),
    (lambda: ModulatedDeformConv2d(4, 4, 3, padding=1, deform_groups=2), lambda: (torch.randn(2, 4, 5, 5),)),
    (lambda: SFT(8, 4, 4, act="leaky_relu(0.2)"), lambda: (torch.randn(2, 8, 5, 5), torch.randn(2, 4, 5, 5))),
    (lambda: SPADEGroupNorm(8, 4, 8, num_groups=2, act="silu"), lambda: (torch.randn(2, 8, 5, 5),
                                                                        torch.randn(2, 4, 3, 3))),
    (lambda: ScaleShiftGroupNorm(8, 6, num_groups=2), lambda: (torch.randn(2, 8, 5, 5), torch.randn(2, 6))),
]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("make", range(len(MODULES)))
def test_modules_script_and_match_eager(make):
    module_fn, args_fn = MODULES[make]
    torch.manual_seed(make)
    module, args = module_fn(), args_fn()
    with torch.no_grad():
        module.weight.normal_() if hasattr(module, "weight") and module.weight is not None else None
    scripted = torch.jit.script(module)
    with burstkern.backend("reference"):
        assert_rel_close(scripted(*args), module(*args), torch.float32, type(module).__name__, scale=0.05)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_patched_torchvision_model_stays_scriptable():
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.align = tv_ops.DeformConv2d(4, 4, 3, padding=1)

        def forward(self, x, off):
            return self.align(x, off)

    w = Wrap()
    torch.jit.script(w)  # scriptable before
    swapped = burstkern.patch(w)
    assert len(swapped) == 1
    x, off = torch.randn(1, 4, 5, 5), torch.randn(1, 18, 5, 5)
    scripted = torch.jit.script(w)
    assert_rel_close(scripted(x, off), w(x, off), torch.float32, "patched and scripted")


def test_meta_tensors_give_shapes():
    m = torch.device("meta")
    x, off, w = torch.empty(2, 8, 9, 9, device=m), torch.empty(2, 18, 9, 9, device=m), torch.empty(8, 8, 3, 3, device=m)
    assert ops.deform_conv2d(x, off, w, padding=1).shape == (2, 8, 9, 9)
    assert ops.sft_group_norm(x, torch.empty(2, 16, 9, 9, device=m), num_groups=4).shape == (2, 8, 9, 9)
    assert ops.sft_modulate(x, x).shape == (2, 8, 9, 9)
    s = torch.empty(2, device=m)
    assert ops.edm_heun_update(x, x, x, x, s, s).shape == (2, 8, 9, 9)
    assert ops.edm_loss(x, x, x, s).shape == (2,)
    assert ops.add_noise(x, s).device == m


@pytest.mark.parametrize("where", [0, 7, 49])
def test_nan_pixels_spread_as_in_torchvision(where):
    """A NaN pixel reaches exactly the outputs and gradients torchvision's reaches: outside corners are selected
    away, not multiplied by 0 (their clamped index can point at the NaN pixel)."""
    g = torch.Generator().manual_seed(where)
    x = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    x.view(-1)[where] = float("nan")
    off = torch.randn(2, 18, 5, 5, generator=g, dtype=torch.float64) * 3
    w = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)
    m = torch.rand(2, 9, 5, 5, generator=g, dtype=torch.float64)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (x, off, w, m)]
        out = fn(*leaves)
        out.sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    ref = run(lambda a, b, c, d: tv_ops.deform_conv2d(a, b, c, padding=1, mask=d))
    for name in ["reference"] + (["native"] if backend_available("native", "cpu", "deform_conv2d",
                                                                 torch.float64).ok else []):
        with burstkern.backend(name):
            got = run(lambda a, b, c, d: ops.deform_conv2d(a, b, c, padding=1, mask=d))
        for i, (a, b) in enumerate(zip(got, ref)):
            assert torch.equal(a.isnan(), b.isnan()), (name, i)
            torch.testing.assert_close(a.nan_to_num(), b.nan_to_num(), msg=f"{name} {i}")
