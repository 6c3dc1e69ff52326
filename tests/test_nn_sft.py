"""burstkern.nn SFT modules: each equals a plain-PyTorch re-implementation of its peer (SFTGAN's SFTLayer, BSRD's
SPADE, the guided-diffusion scale-shift norm) with identical weights, forward and every gradient, on the reference
and the fused backends; peers' state dicts load; state-dict round trip; torch.compile(fullgraph=True).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import burstkern
from burstkern.nn import SFT, ScaleShiftGroupNorm, SPADEGroupNorm

from utils import assert_rel_close, fused_backends


# ----------------------------------------------------------------------------------------------
# the peers, written in plain PyTorch
# ----------------------------------------------------------------------------------------------
class PlainSFTLayer(nn.Module):
    """SFTGAN's SFTLayer (conv1x1 -> leaky_relu(0.1) -> conv1x1 scale and shift branches)."""

    def __init__(self, channels, cond_channels, hidden):
        super().__init__()
        self.SFT_scale_conv0 = nn.Conv2d(cond_channels, hidden, 1)
        self.SFT_scale_conv1 = nn.Conv2d(hidden, channels, 1)
        self.SFT_shift_conv0 = nn.Conv2d(cond_channels, hidden, 1)
        self.SFT_shift_conv1 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        scale = self.SFT_scale_conv1(F.leaky_relu(self.SFT_scale_conv0(x[1]), 0.1))
        shift = self.SFT_shift_conv1(F.leaky_relu(self.SFT_shift_conv0(x[1]), 0.1))
        return x[0] * (scale + 1) + shift


class PlainSPADE(nn.Module):
    """BSRD's SPADE (affine GroupNorm32, shared conv3x3 + ReLU, separate gamma / beta convs), with the
    condition bicubic-resized to x's size."""

    def __init__(self, channels, cond_channels, hidden, groups):
        super().__init__()
        self.param_free_norm = nn.GroupNorm(groups, channels)
        self.mlp_shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, cond, act=None):
        cond = F.interpolate(cond, size=x.shape[-2:], mode="bicubic", align_corners=False)
        actv = self.mlp_shared(cond)
        out = self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)
        return F.silu(out) if act == "silu" else out


class PlainScaleShift(nn.Module):
    """guided-diffusion ResBlock out_layers[0] with use_scale_shift_norm, then SiLU."""

    def __init__(self, channels, emb_channels, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * channels))

    def forward(self, x, emb):
        scale, shift = torch.chunk(self.emb_layers(emb)[:, :, None, None], 2, dim=1)
        return F.silu(self.norm(x) * (1 + scale) + shift)


def _randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Non-default parameters everywhere (GroupNorm's default weight 1 / bias 0 would hide affine mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            shift = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.3 + shift)
    return module


def _rand(*shape, seed, dtype=torch.float64, shift=0.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype) + shift


def _fmt(x):
    return torch.channels_last if (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format


def _compare(ours, peer_fn, peer_module, inputs, dtype, backend, names_map=None, scale=1.0, what=""):
    """Forward and every input / parameter gradient of ``ours`` (under ``backend``, in ``dtype``) vs the peer in
    fp64 on the same (rounded) inputs and weights."""
    ins_o = [t.detach().clone().requires_grad_() for t in inputs]
    ins_p = [t.detach().double().requires_grad_() for t in inputs]
    with burstkern.backend(backend):
        out = ours(*ins_o)
    ref = peer_fn(*ins_p)
    assert out.dtype == dtype and out.is_contiguous(memory_format=_fmt(inputs[0]))
    assert_rel_close(out, ref, dtype, f"{what} forward", scale)
    dy = _rand(*ref.shape, seed=99)
    with burstkern.backend(backend):
        out.backward(dy.to(dtype))
    ref.backward(dy)
    for i, (a, b) in enumerate(zip(ins_o, ins_p)):
        assert_rel_close(a.grad, b.grad, dtype, f"{what} input {i} grad", scale)
    peer_params = dict(peer_module.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        expected = names_map(name, peer_params) if names_map else peer_params[name].grad
        assert_rel_close(p.grad, expected, dtype, f"{what} grad {name}", scale)


def _round_(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The peer's fp64 weights rounded to ``dtype``, so both sides hold the same values."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).double())
    return module


BACKENDS = ["reference"] + fused_backends("sft_group_norm", "cpu")


# ----------------------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sft_matches_sftgan_layer(backend, dtype):
    if dtype == torch.float64 and backend != "reference":
        pytest.skip("fused backends are pinned in fp32/fp16/bf16 (tests/test_sft.py)")
    peer = _randomize_(PlainSFTLayer(12, 6, 5).double(), seed=1)
    ours = SFT(12, cond_channels=6, hidden_channels=5).to(dtype)
    ours.load_state_dict(peer.state_dict())  # SFTGAN's names load as they are
    x, cond = _rand(2, 12, 5, 7, seed=2, dtype=dtype), _rand(2, 6, 5, 7, seed=3, dtype=dtype)
    _compare(ours, lambda x, c: peer((x, c)), peer, [x, cond], dtype, backend, what="SFT")


def test_sft_accepts_sftgan_tuple_call_and_channels_last():
    ours = _randomize_(SFT(8, 4, 4).double(), seed=4)
    x = _rand(1, 8, 6, 5, seed=5).contiguous(memory_format=torch.channels_last)
    cond = _rand(1, 4, 6, 5, seed=6)
    a = ours((x, cond))
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert_rel_close(a, ours(x, cond), torch.float64, "tuple call")
    with pytest.raises(TypeError, match="SFT.forward takes"):
        ours(x)


# ----------------------------------------------------------------------------------------------
# SPADEGroupNorm
# ----------------------------------------------------------------------------------------------
def _merged_grad(name, peer_params):
    """Gradient of our merged gamma|beta conv = the peer's gamma and beta conv gradients, concatenated."""
    if name.startswith("mlp_gamma_beta."):
        leaf = name.split(".", 1)[1]
        return torch.cat([peer_params["mlp_gamma." + leaf].grad, peer_params["mlp_beta." + leaf].grad])
    return peer_params[name].grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,act,layout", [(torch.float64, None, "contiguous"),
                                              (torch.float32, "silu", "channels_last"),
                                              (torch.bfloat16, None, "contiguous")])
def test_spade_group_norm_matches_bsrd_spade(backend, dtype, act, layout):
    if dtype == torch.float64 and backend != "reference":
        pytest.skip("fused backends are pinned in fp32/fp16/bf16 (tests/test_sft.py)")
    peer = _round_(_randomize_(PlainSPADE(16, 6, 8, groups=4).double(), seed=7), dtype)
    ours = SPADEGroupNorm(16, cond_channels=6, hidden_channels=8, num_groups=4, affine=True, act=act).to(dtype)
    ours.load_state_dict(peer.state_dict())  # BSRD's separate mlp_gamma / mlp_beta merge on load
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = _rand(2, 16, 6, 5, seed=8, shift=2.0).to(dtype).contiguous(memory_format=fmt)
    cond = _rand(2, 6, 3, 3, seed=9).to(dtype)  # a coarser condition: resized to x's size
    scale = 1.0 if dtype != torch.bfloat16 else 2.0  # bf16 interpolation and convolutions round their outputs too
    _compare(ours, lambda x, c: peer(x, c, act), peer, [x, cond], dtype, backend, _merged_grad, scale,
             what=f"SPADEGroupNorm {act}")


def test_spade_group_norm_defaults_parameter_free_and_same_size_condition():
    ours = SPADEGroupNorm(32, cond_channels=4, hidden_channels=8).double()
    assert ours.param_free_norm.weight is None and ours.param_free_norm.num_groups == 32
    _randomize_(ours, seed=10)
    x, cond = _rand(1, 32, 4, 4, seed=11), _rand(1, 4, 4, 4, seed=12)
    gb = ours.mlp_gamma_beta(ours.mlp_shared(cond))
    gamma, beta = gb.chunk(2, dim=1)
    assert_rel_close(ours(x, cond), F.group_norm(x, 32) * (1 + gamma) + beta, torch.float64, "no resize, no affine")


# ----------------------------------------------------------------------------------------------
# ScaleShiftGroupNorm
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scale_shift_group_norm_matches_resblock(backend, dtype):
    if dtype == torch.float64 and backend != "reference":
        pytest.skip("fused backends are pinned in fp32/fp16/bf16 (tests/test_sft.py)")
    peer = _randomize_(PlainScaleShift(12, 10, groups=3).double(), seed=13)
    ours = ScaleShiftGroupNorm(12, emb_channels=10, num_groups=3, act="silu").to(dtype)
    ours.load_state_dict(peer.state_dict())
    x, emb = _rand(3, 12, 5, 3, seed=14, shift=1.0, dtype=dtype), _rand(3, 10, seed=15, dtype=dtype)
    _compare(ours, peer, peer, [x, emb], dtype, backend, what="ScaleShiftGroupNorm")


def test_scale_shift_group_norm_three_d():
    ours = _randomize_(ScaleShiftGroupNorm(8, 6, num_groups=2, act=None).double(), seed=16)
    x, emb = _rand(2, 8, 7, seed=17), _rand(2, 6, seed=18)
    scale, shift = ours.emb_layers(emb)[:, :, None].chunk(2, dim=1)
    ref = F.group_norm(x, 2, ours.norm.weight, ours.norm.bias) * (1 + scale) + shift
    assert_rel_close(ours(x, emb), ref, torch.float64, "3-D")


# ----------------------------------------------------------------------------------------------
# state dicts, compile
# ----------------------------------------------------------------------------------------------
MODULES = {
    "SFT": (lambda: SFT(8, 4, 6), lambda: (_rand(2, 8, 5, 5, seed=20), _rand(2, 4, 5, 5, seed=21))),
    "SPADEGroupNorm": (lambda: SPADEGroupNorm(8, 4, 6, num_groups=2, affine=True, act="silu"),
                       lambda: (_rand(2, 8, 6, 6, seed=22), _rand(2, 4, 3, 3, seed=23))),
    "ScaleShiftGroupNorm": (lambda: ScaleShiftGroupNorm(8, 5, num_groups=4),
                            lambda: (_rand(2, 8, 5, 4, seed=24), _rand(2, 5, seed=25))),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_state_dict_round_trip(name):
    make, inputs = MODULES[name]
    a = _randomize_(make().double(), seed=26)
    b = make().double()
    missing, unexpected = b.load_state_dict(a.state_dict(), strict=True)
    assert not missing and not unexpected
    assert a.state_dict().keys() == b.state_dict().keys()
    args = inputs()
    assert torch.equal(a(*args), b(*args))
    fresh = make().double()
    assert not torch.equal(fresh(*args), a(*args))  # the round trip is what made them equal


def test_spade_state_dict_from_bsrd_keys():
    peer = PlainSPADE(8, 4, 6, groups=2)
    ours = SPADEGroupNorm(8, 4, 6, num_groups=2, affine=True)
    result = ours.load_state_dict(peer.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(ours.mlp_gamma_beta.weight[:8], peer.mlp_gamma.weight)
    assert torch.equal(ours.mlp_gamma_beta.bias[8:], peer.mlp_beta.bias)


@pytest.mark.parametrize("name", list(MODULES))
def test_compile_fullgraph_matches_eager(name):
    make, inputs = MODULES[name]
    m = _randomize_(make(), seed=27)
    args = [t.float() for t in inputs()]
    eager = m(*args)
    torch._dynamo.reset()
    # inductor for the conv-free module; aot_eager (dynamo + AOT autograd, no C++ codegen) where convs would cost
    # ~15 s of CPU codegen each in CI: the ops themselves go through inductor in tests/test_sft.py
    compiled = torch.compile(m, fullgraph=True, backend="inductor" if name == "ScaleShiftGroupNorm" else "aot_eager")
    out = compiled(*args)
    assert_rel_close(out, eager, torch.float32, f"{name} compiled")
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    eager.sum().backward()
    for n, p in m.named_parameters():
        assert_rel_close(grads[n], p.grad, torch.float32, f"{name} compiled grad {n}")
