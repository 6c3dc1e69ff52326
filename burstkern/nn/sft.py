"""SFT conditioning modules on :func:`burstkern.ops.sft_modulate` / :func:`burstkern.ops.sft_group_norm`.

* :class:`SFT` — SFTGAN's ``SFTLayer``: ``x * (scale + 1) + shift`` with scale and shift predicted from a
  condition by two conv1x1 -> leaky_relu(0.1) -> conv1x1 branches. Same attribute names
  (``SFT_scale_conv0/1``, ``SFT_shift_conv0/1``), so SFTGAN state dicts load as they are.
* :class:`SPADEGroupNorm` — the SPADE block of BSRD / E-BSRD's U-Net: ``GroupNorm32(x) * (1 + gamma) + beta`` with
  gamma|beta from ONE merged conv3x3 (read in place by the kernel, no chunk copy) on a shared conv3x3 + ReLU of the
  condition, bicubic-resized to x's size. State dicts of BSRD's ``SPADE`` (separate ``mlp_gamma`` / ``mlp_beta``)
  load too: the two convs are concatenated into the merged one.
* :class:`ScaleShiftGroupNorm` — the diffusion ResBlock ``use_scale_shift_norm`` path:
  ``GroupNorm(x) * (1 + scale) + shift`` with ``scale|shift = Linear(SiLU(emb))`` per channel, optionally
  followed by SiLU, in one kernel.

The active burstkern backend decides which kernels run; the modules take no backend argument.
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops._common import ArgumentError, ArgumentTypeError
from ..ops.sft import sft_group_norm, sft_modulate
from ..ops.sft.op import parse_act
from .resample import bicubic_resize

__all__ = ["SFT", "SPADEGroupNorm", "ScaleShiftGroupNorm"]


def _as(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """Parameters in x's dtype (e.g. fp32 parameters with bf16 activations)."""
    if t is None or t.dtype == dtype:
        return t
    return t.to(dtype)


def _to(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A predicted modulation in x's dtype."""
    return t if t.dtype == dtype else t.to(dtype)


@torch.jit.unused
def _modulate_eager(x: Tensor, gamma: Tensor, beta: Optional[Tensor], act: Optional[str]) -> Tensor:
    return sft_modulate(x, gamma, beta, act=act)


@torch.jit.unused
def _group_norm_eager(x: Tensor, gamma: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                      eps: float, act: Optional[str]) -> Tensor:
    return sft_group_norm(x, gamma, None, num_groups, weight, bias, eps, act=act)


@torch.jit.unused
def _resize_eager(cond: Tensor, size: List[int]) -> Tensor:
    return bicubic_resize(cond, size)


# Under torch.jit.script the modules call the ops themselves (which resolve their kernel at run time); in Python
# the public functions, with their argument checks and autocast policy.
def _modulate(x: Tensor, gamma: Tensor, beta: Optional[Tensor], act: Optional[str], code: int, slope: float) -> Tensor:
    if torch.jit.is_scripting():
        return torch.ops.burstkern.sft_modulate(x, gamma, beta, code, slope)
    return _modulate_eager(x, gamma, beta, act)


def _group_norm(x: Tensor, gamma: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float, act: Optional[str], code: int, slope: float) -> Tensor:
    if torch.jit.is_scripting():
        return torch.ops.burstkern.sft_group_norm(x, gamma, None, num_groups, weight, bias, eps, code, slope)[0]
    return _group_norm_eager(x, gamma, num_groups, weight, bias, eps, act)


def _check_input(module: nn.Module, name: str, t, ranks: Tuple[int, ...], channels: int, layout: str) -> None:
    """A module's input: a floating tensor of one of ``ranks`` with ``channels`` in dim 1 (what the module was
    built for), said in the module's own terms rather than by the op it feeds."""
    kind = type(module).__name__
    if not isinstance(t, Tensor):
        raise ArgumentTypeError(f"{kind}: {name} must be a tensor {layout}, got {type(t).__name__}")
    got = f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"
    device = next(module.parameters()).device
    if t.device != device:
        raise ArgumentError(f"{kind}: {name} is on {t.device} but the module's parameters are on {device} ({got})")
    if t.dim() not in ranks or t.shape[1] != channels:
        raise ArgumentError(f"{kind}: {name} must be a {'-D or '.join(map(str, ranks))}-D tensor {layout} (the "
                            f"module's channels), got {got}")
    if not t.is_floating_point():
        raise ArgumentTypeError(f"{kind}: {name} must be a floating-point tensor, got {got}")


def _check_x(module: nn.Module, x: Tensor, channels: int) -> None:
    _check_input(module, "x", x, (4,), channels, f"[N, {channels}, H, W]")


class SFT(nn.Module):
    """Spatial feature transform (SFTGAN ``SFTLayer``): ``act(x * (scale + 1) + shift)``.

    ``scale = SFT_scale_conv1(leaky_relu(SFT_scale_conv0(cond), 0.1))`` and likewise ``shift``.

    Args:
        channels: C of the features x (SFTGAN: 64).
        cond_channels: channels of the condition (SFTGAN: 32).
        hidden_channels: width of each branch (SFTGAN: 32).
        act: optional activation fused after the modulation (None in SFTGAN).

    Shapes: ``x [N, C, H, W]``, ``cond [N, cond_channels, H, W]`` -> ``[N, C, H, W]``. ``forward`` also takes
    SFTGAN's single tuple argument ``(x, cond)``.

    Example::

        >>> sft = SFT(64, cond_channels=32)
        >>> sft(torch.randn(2, 64, 24, 24), torch.randn(2, 32, 24, 24)).shape
        torch.Size([2, 64, 24, 24])
    """

    def __init__(self, channels: int = 64, cond_channels: int = 32, hidden_channels: int = 32,
                 act: Optional[str] = None):
        super().__init__()
        self.channels, self.cond_channels, self.act = channels, cond_channels, act
        self._act_code, self._slope = parse_act(act)
        self.SFT_scale_conv0 = nn.Conv2d(cond_channels, hidden_channels, 1)
        self.SFT_scale_conv1 = nn.Conv2d(hidden_channels, channels, 1)
        self.SFT_shift_conv0 = nn.Conv2d(cond_channels, hidden_channels, 1)
        self.SFT_shift_conv1 = nn.Conv2d(hidden_channels, channels, 1)

    def forward(self, x: Union[Tensor, List[Tensor], Tuple[Tensor, Tensor]], cond: Optional[Tensor] = None) -> Tensor:
        if isinstance(x, Tensor):
            if cond is None:
                raise ArgumentTypeError("SFT.forward takes (x, cond) or one (x, cond) pair, got a single Tensor")
            feat, c = x, cond
        elif isinstance(x, list):
            if len(x) != 2 or cond is not None:
                raise ArgumentTypeError("SFT.forward takes (x, cond) or one (x, cond) pair")
            feat, c = x[0], x[1]
        else:
            if cond is not None:
                raise ArgumentTypeError("SFT.forward takes (x, cond) or one (x, cond) pair")
            feat, c = x[0], x[1]
        if not torch.jit.is_scripting():
            _check_x(self, feat, self.channels)
            _check_input(self, "cond", c, (4,), self.cond_channels, f"[N, {self.cond_channels}, H, W]")
        scale = self.SFT_scale_conv1(F.leaky_relu(self.SFT_scale_conv0(c), 0.1))
        shift = self.SFT_shift_conv1(F.leaky_relu(self.SFT_shift_conv0(c), 0.1))
        return _modulate(feat, _to(scale, feat.dtype), _to(shift, feat.dtype), self.act, self._act_code, self._slope)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, cond_channels={self.cond_channels}, act={self.act!r}"


class SPADEGroupNorm(nn.Module):
    """SPADE GroupNorm (BSRD / E-BSRD): ``act(GroupNorm(x) * (1 + gamma) + beta)``, one fused kernel.

    ``gamma|beta = mlp_gamma_beta(relu(mlp_shared(resize(cond))))``: a shared conv3x3 and ONE merged conv3x3
    producing ``[N, 2C, H, W]`` that the kernel reads in place; the condition is bicubic-resized to x's size
    when it differs (BSRD feeds each U-Net level its burst features at that level's size).

    Args:
        channels: C of x.
        cond_channels: channels of the condition map (BSRD: burst size x condition features, 8 x 48).
        hidden_channels: width of the shared conv (BSRD: 256).
        num_groups: GroupNorm groups (32: GroupNorm32).
        affine: learnable GroupNorm weight/bias (False: parameter-free, as in SPADE). BSRD's ``normalization()``
            is an affine GroupNorm32: load its state dicts with ``affine=True``.
        eps: GroupNorm epsilon.
        act: optional activation fused after the modulation, e.g. ``"silu"``.

    Shapes: ``x [N, C, H, W]``, ``cond [N, cond_channels, h, w]`` -> ``[N, C, H, W]``.

    Example::

        >>> spade = SPADEGroupNorm(128, cond_channels=384, hidden_channels=256)
        >>> spade(torch.randn(2, 128, 48, 48), torch.randn(2, 384, 96, 96)).shape
        torch.Size([2, 128, 48, 48])
    """

    def __init__(self, channels: int, cond_channels: int, hidden_channels: int = 256, num_groups: int = 32,
                 affine: bool = False, eps: float = 1e-5, act: Optional[str] = None):
        super().__init__()
        self.channels, self.cond_channels, self.act = channels, cond_channels, act
        self._act_code, self._slope = parse_act(act)
        self.param_free_norm = nn.GroupNorm(num_groups, channels, eps=eps, affine=affine)
        self.mlp_shared = nn.Sequential(nn.Conv2d(cond_channels, hidden_channels, 3, padding=1), nn.ReLU())
        self.mlp_gamma_beta = nn.Conv2d(hidden_channels, 2 * channels, 3, padding=1)

    @staticmethod
    def resize(cond: Tensor, size: List[int]) -> Tensor:
        """The condition at ``size`` ``[H, W]``: bicubic, as BSRD resizes it for each U-Net level."""
        if torch.jit.is_tracing():  # ONNX export: a constant size keeps the graph's shapes static
            size = [int(size[0]), int(size[1])]
        if torch.jit.is_scripting():
            return F.interpolate(cond, size=size, mode="bicubic", align_corners=False)
        return _resize_eager(cond, size)

    def modulation(self, x: Tensor, cond: Tensor) -> Tensor:
        """The merged ``[N, 2C, H, W]`` gamma|beta for x (gamma first)."""
        if cond.shape[-2:] != x.shape[-2:]:
            cond = self.resize(cond, [x.shape[-2], x.shape[-1]])
        return self.mlp_gamma_beta(self.mlp_shared(cond))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            _check_x(self, x, self.channels)
            _check_input(self, "cond", cond, (4,), self.cond_channels, f"[N, {self.cond_channels}, h, w]")
        norm = self.param_free_norm
        return _group_norm(x, _to(self.modulation(x, cond), x.dtype), norm.num_groups, _as(norm.weight, x.dtype),
                           _as(norm.bias, x.dtype), norm.eps, self.act, self._act_code, self._slope)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BSRD's SPADE keeps gamma and beta in two convs: concatenate them into the merged one
        g, b = prefix + "mlp_gamma.", prefix + "mlp_beta."
        for name in ("weight", "bias"):
            if g + name in state_dict and b + name in state_dict:
                state_dict[prefix + "mlp_gamma_beta." + name] = torch.cat(
                    [state_dict.pop(g + name), state_dict.pop(b + name)], dim=0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, cond_channels={self.cond_channels}, act={self.act!r}"


class ScaleShiftGroupNorm(nn.Module):
    """Time-embedding scale-shift GroupNorm (diffusion ResBlock ``use_scale_shift_norm``), one fused kernel:
    ``act(GroupNorm(x) * (1 + scale) + shift)`` with ``scale|shift = emb_layers(emb)`` ``[N, 2C]`` per channel.

    Args:
        channels: C of x.
        emb_channels: width of the embedding (e.g. 4 x the U-Net's base channels).
        num_groups: GroupNorm groups (32: GroupNorm32), affine as in guided-diffusion's ``normalization()``.
        eps: GroupNorm epsilon.
        act: ``"silu"`` (the ResBlock's next op, fused here) or None.

    Shapes: ``x [N, C, H, W]``, ``emb [N, emb_channels]`` -> ``[N, C, H, W]``.

    Example::

        >>> ssn = ScaleShiftGroupNorm(128, emb_channels=512, act="silu")
        >>> ssn(torch.randn(2, 128, 48, 48), torch.randn(2, 512)).shape
        torch.Size([2, 128, 48, 48])
    """

    def __init__(self, channels: int, emb_channels: int, num_groups: int = 32, eps: float = 1e-5,
                 act: Optional[str] = "silu"):
        super().__init__()
        self.channels, self.act = channels, act
        self._act_code, self._slope = parse_act(act)
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            _check_input(self, "x", x, (3, 4), self.channels, f"[N, {self.channels}, H, W]")
            _check_input(self, "emb", emb, (2,), self.emb_layers[1].in_features,
                         f"[N, {self.emb_layers[1].in_features}]")
        scale_shift = self.emb_layers(emb).unsqueeze(-1)  # unsqueeze, not [..., None]: shapes stay known in ONNX
        if x.dim() == 4:
            scale_shift = scale_shift.unsqueeze(-1)
        norm = self.norm
        return _group_norm(x, _to(scale_shift, x.dtype), norm.num_groups, _as(norm.weight, x.dtype),
                           _as(norm.bias, x.dtype), norm.eps, self.act, self._act_code, self._slope)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, act={self.act!r}"
