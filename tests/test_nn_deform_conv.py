"""burstkern.nn deformable-conv modules: torchvision / mmcv / BasicSR state-dict compatibility and numerics."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import burstkern
from burstkern.nn import DeformConv2d, ModulatedDeformConv2d

from utils import assert_rel_close, fused_backends

tv_ops = pytest.importorskip("torchvision.ops")


def _grads(module, loss):
    module.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in module.named_parameters()}


# ----------------------------------------------------------------------------------------------
# DeformConv2d == torchvision.ops.DeformConv2d
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("use_mask", [True, False])
def test_deform_conv2d_loads_torchvision_state_dict(bias, use_mask):
    torch.manual_seed(0)
    kw = dict(stride=(1, 2), padding=(1, 2), dilation=(2, 1), groups=2, bias=bias)
    theirs = tv_ops.DeformConv2d(4, 6, 3, **kw).double()
    ours = DeformConv2d(4, 6, 3, **kw).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [(k, p.shape) for k, p in ours.named_parameters()] == [(k, p.shape) for k, p in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())  # strict
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64, requires_grad=True)
    ho = (7 + 2 - 2 * 2 - 1) // 1 + 1
    wo = (8 + 4 - 2 - 1) // 2 + 1
    og = 2
    off = (torch.randn(2, 2 * og * 9, ho, wo, dtype=torch.float64) * 2).requires_grad_(True)
    mask = torch.rand(2, og * 9, ho, wo, dtype=torch.float64) if use_mask else None
    out_t = theirs(x, off, mask)
    gout = torch.randn_like(out_t)
    g_t = _grads(theirs, (out_t * gout).sum())
    out_o = ours(x, off, mask)
    g_o = _grads(ours, (out_o * gout).sum())
    assert_rel_close(out_o, out_t, torch.float64, "output")
    for k in g_t:
        assert_rel_close(g_o[k], g_t[k], torch.float64, f"grad {k}")
    # the other way round too, and the same init distribution bounds as torchvision
    theirs.load_state_dict(ours.state_dict())
    fresh = DeformConv2d(4, 6, 3, **kw)
    bound = 1 / math.sqrt(2 * 9)
    assert fresh.weight.abs().max() <= bound and fresh.weight.std() > bound / 4
    assert repr(fresh).replace("DeformConv2d", "") == repr(tv_ops.DeformConv2d(4, 6, 3, **kw)).replace(
        "DeformConv2d", "")


@pytest.mark.parametrize("args,word", [((4, 6, 3, 1, 0, 1, 3), "in_channels"), ((4, 5, 3, 1, 0, 1, 2), "out_channels"),
                                       ((4, 6, 3, 1, 0, 1, 0), "groups")])
def test_deform_conv2d_constructor_errors(args, word):
    with pytest.raises(ValueError, match=word):
        DeformConv2d(*args)


# ----------------------------------------------------------------------------------------------
# ModulatedDeformConv2d == BasicSR's DCNv2Pack / mmcv's ModulatedDeformConv2dPack written with torchvision
# ----------------------------------------------------------------------------------------------
def _plain_dcnv2(m: ModulatedDeformConv2d, x, feat=None):
    """The mmcv/BasicSR forward, written out with torchvision's op and the module's own tensors."""
    out = F.conv2d(x if feat is None else feat, m.conv_offset.weight, m.conv_offset.bias, m.stride, m.padding,
                   m.dilation)
    o1, o2, mask = torch.chunk(out, 3, dim=1)
    return tv_ops.deform_conv2d(x, torch.cat((o1, o2), dim=1), m.weight, m.bias, stride=m.stride,
                                padding=m.padding, dilation=m.dilation, mask=torch.sigmoid(mask))


def _randomise_offset_conv(m, scale=0.3):
    with torch.no_grad():
        m.conv_offset.weight.normal_(0, scale)
        m.conv_offset.bias.normal_(0, scale)
        if m.bias is not None:
            m.bias.normal_()


@pytest.mark.parametrize("use_feat", [False, True])
@pytest.mark.parametrize("cfg", [dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, deform_groups=2),
                                 dict(in_channels=8, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=2,
                                      deform_groups=4, stride=2),
                                 dict(in_channels=4, out_channels=4, kernel_size=(3, 1), padding=(1, 0), bias=False)],
                         ids=["og2", "groups2-og4-d2-s2", "k3x1-nobias"])
def test_modulated_matches_plain_reimplementation(cfg, use_feat):
    torch.manual_seed(1)
    feat_ch = 6 if use_feat else None
    m = ModulatedDeformConv2d(**cfg, offset_in_channels=feat_ch).double()
    _randomise_offset_conv(m)
    x = torch.randn(2, cfg["in_channels"], 9, 8, dtype=torch.float64, requires_grad=True)
    feat = torch.randn(2, 6, 9, 8, dtype=torch.float64, requires_grad=True) if use_feat else None
    out = m(x, feat)
    ref = _plain_dcnv2(m, x, feat)
    assert_rel_close(out, ref, torch.float64, "output")
    gout = torch.randn_like(out)
    inputs = [x] + ([feat] if use_feat else [])
    g_out = torch.autograd.grad((out * gout).sum(), inputs + list(m.parameters()))
    g_ref = torch.autograd.grad((ref * gout).sum(), inputs + list(m.parameters()))
    names = ["x"] + (["feat"] if use_feat else []) + [k for k, _ in m.named_parameters()]
    for name, a, b in zip(names, g_out, g_ref):
        assert_rel_close(a, b, torch.float64, f"grad {name}")


def test_modulated_state_dict_keys_and_init():
    m = ModulatedDeformConv2d(16, 8, 3, padding=1, deformable_groups=4)  # BasicSR's keyword
    assert m.deform_groups == m.deformable_groups == 4
    assert set(m.state_dict()) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    assert m.conv_offset.weight.shape == (4 * 3 * 9, 16, 3, 3)
    assert torch.count_nonzero(m.conv_offset.weight) == 0 and torch.count_nonzero(m.conv_offset.bias) == 0
    assert torch.count_nonzero(m.bias) == 0
    stdv = 1 / math.sqrt(16 * 9)
    assert m.weight.abs().max() <= stdv and m.weight.std() > stdv / 4
    # fresh layer: offsets 0, mask sigmoid(0) = 0.5 -> half a plain conv
    x = torch.randn(2, 16, 7, 6)
    assert_rel_close(m(x), 0.5 * F.conv2d(x, m.weight, m.bias, padding=1), torch.float32, "fresh layer")


def test_modulated_loads_mmcv_and_basicsr_checkpoints():
    torch.manual_seed(2)
    src = ModulatedDeformConv2d(8, 8, 3, padding=1, deform_groups=2)
    _randomise_offset_conv(src)
    sd = {k: v.clone() for k, v in src.state_dict().items()}  # what mmcv / BasicSR save: the same four keys
    dst = ModulatedDeformConv2d(8, 8, 3, padding=1, deform_groups=2)
    dst.load_state_dict(sd)  # strict
    x = torch.randn(1, 8, 6, 6)
    assert torch.equal(dst(x), src(x))
    # mmcv version-1 checkpoints named the offset conv conv_offset_mask
    old = {k.replace("conv_offset.", "conv_offset_mask."): v for k, v in sd.items()}
    legacy = ModulatedDeformConv2d(8, 8, 3, padding=1, deform_groups=2)
    legacy.load_state_dict(old)
    assert torch.equal(legacy(x), src(x))


def test_modulated_constructor_errors():
    with pytest.raises(ValueError, match="deform_groups"):
        ModulatedDeformConv2d(8, 8, 3, deform_groups=3)
    with pytest.raises(ValueError, match="in_channels"):
        ModulatedDeformConv2d(8, 8, 3, groups=3)


# ----------------------------------------------------------------------------------------------
# offset warning
# ----------------------------------------------------------------------------------------------
def _with_offset_mean(m, value):
    with torch.no_grad():
        m.conv_offset.weight.zero_()
        m.conv_offset.bias.zero_()
        n_off = m.conv_offset.bias.numel() * 2 // 3
        m.conv_offset.bias[:n_off] = value
    return m


def test_offset_warning_fires_above_threshold_only():
    x = torch.randn(1, 4, 5, 5)
    m = _with_offset_mean(ModulatedDeformConv2d(4, 4, 3, padding=1, offset_warn_threshold=50), 60.0)
    with pytest.warns(RuntimeWarning, match=r"Offset abs mean is 60\.0, larger than 50"):
        m(x)
    m = _with_offset_mean(ModulatedDeformConv2d(4, 4, 3, padding=1, offset_warn_threshold=50), 40.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x)
    # off by default
    m = _with_offset_mean(ModulatedDeformConv2d(4, 4, 3, padding=1), 60.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x)


# ----------------------------------------------------------------------------------------------
# the modules follow the active backend
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", fused_backends("deform_conv2d", "cuda" if torch.cuda.is_available() else "cpu"))
def test_modulated_on_fused_backend(backend):
    torch.manual_seed(3)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    m = ModulatedDeformConv2d(8, 8, 3, padding=1, deform_groups=2).to(dev)
    _randomise_offset_conv(m)
    x = torch.randn(1, 8, 6, 7, device=dev)
    ref = _plain_dcnv2(m.double().cpu(), x.double().cpu())
    m = m.float().to(dev)
    with burstkern.backend(backend):
        out = m(x)
    assert_rel_close(out, ref, torch.float32, f"{backend} module output")
