"""burstkern.patch: swaps torchvision DeformConv2d, DCNv2Pack-style and SFTGAN SFT modules; same outputs; undo."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import burstkern
from burstkern import nn as bnn
from utils import assert_rel_close


class PeerDCNv2Pack(nn.Module):
    """A BasicSR-style DCNv2Pack (offset/mask from a separate feature), written on torchvision's op."""

    def __init__(self, cin, cout, k=3, padding=1, deformable_groups=2):
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.kernel_size, self.stride, self.padding, self.dilation = (k, k), (1, 1), (padding, padding), (1, 1)
        self.groups, self.deformable_groups = 1, deformable_groups
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) * 0.1)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.conv_offset = nn.Conv2d(cin, deformable_groups * 3 * k * k, k, 1, padding)
        nn.init.normal_(self.conv_offset.weight, std=0.1)

    def forward(self, x, feat):
        o1, o2, m = torch.chunk(self.conv_offset(feat), 3, dim=1)
        return torchvision.ops.deform_conv2d(x, torch.cat((o1, o2), 1), self.weight, self.bias,
                                             padding=self.padding, mask=torch.sigmoid(m))


class PeerSFTLayer(nn.Module):
    """SFTGAN's SFTLayer, as published (64 features, 32-channel condition, tuple input)."""

    def __init__(self):
        super().__init__()
        self.SFT_scale_conv0 = nn.Conv2d(32, 32, 1)
        self.SFT_scale_conv1 = nn.Conv2d(32, 64, 1)
        self.SFT_shift_conv0 = nn.Conv2d(32, 32, 1)
        self.SFT_shift_conv1 = nn.Conv2d(32, 64, 1)

    def forward(self, x):
        scale = self.SFT_scale_conv1(F.leaky_relu(self.SFT_scale_conv0(x[1]), 0.1, inplace=True))
        shift = self.SFT_shift_conv1(F.leaky_relu(self.SFT_shift_conv0(x[1]), 0.1, inplace=True))
        return x[0] * (scale + 1) + shift


class Foreign(nn.Module):
    def __init__(self):
        super().__init__()
        self.offset = nn.Conv2d(64, 18, 3, padding=1)
        self.tv = torchvision.ops.DeformConv2d(64, 64, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(64, 64, 1))
        self.block.append(PeerDCNv2Pack(64, 64))
        self.sft = PeerSFTLayer()

    def forward(self, x, cond):
        h = self.tv(x, self.offset(x))
        h = self.block[1](self.block[0](h), x)
        return self.sft((h, cond))


def test_patch_swaps_every_foreign_module_and_keeps_outputs():
    torch.manual_seed(0)
    model = Foreign().double().eval()
    x, cond = torch.randn(2, 64, 7, 9, dtype=torch.float64), torch.randn(2, 32, 7, 9, dtype=torch.float64)
    before = model(x, cond)
    result = burstkern.patch(model)
    assert [s.path for s in result] == ["tv", "block.1", "sft"]
    assert isinstance(model.tv, bnn.DeformConv2d)
    assert isinstance(model.block[1], bnn.ModulatedDeformConv2d)
    assert isinstance(model.sft, bnn.SFT)
    assert model.tv.weight.dtype == torch.float64 and not model.tv.training
    with burstkern.backend("reference"):
        after = model(x, cond)
    assert_rel_close(after, before, torch.float64, "patched model output")
    assert "3 modules swapped" in repr(result)
    result.undo()
    assert isinstance(model.tv, torchvision.ops.DeformConv2d) and isinstance(model.sft, PeerSFTLayer)
    assert_rel_close(model(x, cond), before, torch.float64, "after undo")


def test_patch_gradients_match_the_peer():
    torch.manual_seed(1)
    model = Foreign().double()
    x, cond = torch.randn(1, 64, 5, 5, dtype=torch.float64), torch.randn(1, 32, 5, 5, dtype=torch.float64)
    model(x, cond).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    burstkern.patch(model)
    model(x, cond).square().sum().backward()
    for n, p in model.named_parameters():
        assert_rel_close(p.grad, ref[n], torch.float64, f"grad {n}")


def test_patch_selected_rules_root_and_errors():
    model = Foreign()
    result = burstkern.patch(model, rules=["SFTLayer"])
    assert [s.rule for s in result] == ["SFTLayer"] and isinstance(model.tv, torchvision.ops.DeformConv2d)
    assert len(burstkern.patch(model, rules=["SFTLayer"])) == 0  # already burstkern's: left alone
    root = PeerSFTLayer()
    res = burstkern.patch(root)
    assert isinstance(res.model, bnn.SFT) and res.undo() is root
    with pytest.raises(ValueError, match="unknown patch rules"):
        burstkern.patch(model, rules=["nope"])
