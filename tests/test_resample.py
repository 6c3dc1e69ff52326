"""burstkern.nn.resample (separable bicubic by two GEMMs) against torch's bicubic kernels, and the models' uses of
it (the SPADE condition resize, the burst merge, the true-phase upsampling) and of PointwiseConv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from burstkern.nn.resample import bicubic_resize, cubic_matrix, resample_separable, separable_applies
from burstkern.models import baseline as B
from burstkern.models.unet import PointwiseConv
from tests.utils import assert_rel_close

SIZES = [((1, 16, 48, 48), (384, 384)), ((2, 5, 7, 9), (3, 20)), ((1, 3, 31, 17), (31, 17)),
         ((1, 4, 40, 40), (13, 57)), ((3, 2, 1, 5), (4, 1))]


@pytest.mark.parametrize("shape,size", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bicubic_resize_matches_interpolate(shape, size, dtype, layout):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert separable_applies(x)
    got = bicubic_resize(x, list(size))
    ref = F.interpolate(x.double(), size=size, mode="bicubic", align_corners=False)
    assert got.dtype == dtype and got.shape == ref.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last" and got[0, 0].numel() > 1
                                                                     and got.shape[1] > 1)
    assert_rel_close(got, ref, dtype, "bicubic_resize")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_bicubic_resize_gradient_matches_interpolate(dtype):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64).to(dtype).requires_grad_()
    x2 = x.detach().double().requires_grad_()
    g = torch.randn(2, 3, 29, 7, dtype=torch.float64)
    (bicubic_resize(x, [29, 7]).double() * g).sum().backward()
    (F.interpolate(x2, size=(29, 7), mode="bicubic", align_corners=False) * g).sum().backward()
    assert_rel_close(x.grad, x2.grad, dtype, "bicubic_resize grad")


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_bicubic_resize_keeps_torchs_op_when_traced():
    x = torch.randn(1, 2, 6, 6)
    traced = torch.jit.trace(lambda t: bicubic_resize(t, [12, 12]), (x,))
    assert "upsample_bicubic2d" in str(traced.graph)
    assert_rel_close(traced(x), F.interpolate(x.double(), size=(12, 12), mode="bicubic", align_corners=False),
                     torch.float32, "traced")


def test_resample_separable_matches_grid_sample_translations():
    """Per-sample translated grids (the burst merge): rows of cubic_matrix at fractional, out-of-range and exactly
    integer positions, against grid_sample(bicubic, border, align_corners=True) in fp64."""
    torch.manual_seed(2)
    n, c, h, w, H, W = 3, 3, 9, 12, 35, 47
    img = torch.randn(n, c, h, w, dtype=torch.float64)
    gy = torch.arange(H, dtype=torch.float64)[None] / 4 + torch.tensor([[-1.3], [0.0], [2.75]])
    gx = torch.arange(W, dtype=torch.float64)[None] / 4 + torch.tensor([[0.6], [-3.0], [1.125]])
    got = resample_separable(img, cubic_matrix(gy, h), cubic_matrix(gx, w))
    ny, nx = 2 * gy / (h - 1) - 1, 2 * gx / (w - 1) - 1
    grid = torch.stack((nx[:, None, :].expand(n, H, W), ny[:, :, None].expand(n, H, W)), dim=-1)
    ref = F.grid_sample(img, grid, mode="bicubic", padding_mode="border", align_corners=True)
    assert_rel_close(got, ref, torch.float64, "resample_separable")
    assert torch.allclose(cubic_matrix(gy, h).sum(-1), torch.ones(n, H, dtype=torch.float64))


def test_baseline_functions_match_their_grid_sample_form(monkeypatch):
    """merge_burst and the aligned baseline through the GEMM form agree with the grid_sample form they replace."""
    torch.manual_seed(3)
    burst = torch.rand(2, 4, 4, 10, 12)
    fast_m, fast_b = B.merge_burst(burst), B.aligned_baseline(burst)
    monkeypatch.setattr(B, "separable_applies", lambda x: False)
    slow_m, slow_b = B.merge_burst(burst), B.aligned_baseline(burst)
    assert (fast_m - slow_m).abs().max() < 1e-5 and (fast_b - slow_b).abs().max() < 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pointwise_conv_matches_conv2d(layout):
    torch.manual_seed(4)
    m = PointwiseConv(6, 5)
    x = torch.randn(2, 6, 7, 9)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = m(x)
    ref = F.conv2d(x.double(), m.weight.double(), m.bias.double())
    assert_rel_close(y, ref, torch.float32, "PointwiseConv")
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    g = torch.randn_like(ref)
    (y.double() * g).sum().backward()
    x2 = x.detach().double().requires_grad_()
    w2 = m.weight.detach().double().requires_grad_()
    (F.conv2d(x2, w2, m.bias.double()) * g).sum().backward()
    assert_rel_close(x.grad, x2.grad, torch.float32, "PointwiseConv grad x")
    assert_rel_close(m.weight.grad, w2.grad, torch.float32, "PointwiseConv grad weight")
    assert list(m.state_dict()) == ["weight", "bias"]
