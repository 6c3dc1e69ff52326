"""TAD-SR's time-aware discriminator, built from the teacher U-Net's encoder.

A noised image ``z = x + σ·ε`` (a real ground truth or a student output, in [-1, 1]) goes through a frozen copy of
the teacher's encoder half (timestep embedding, ``conv_in``, the down path and the middle blocks of
:class:`burstkern.models.SFTUNet`, conditioned on the same burst features as the teacher), fed ``c_in·z`` and
``c_noise(σ)`` exactly as the teacher is. The features at the end of every resolution level (and after the
middle blocks, which replace the last level's) are modulated per channel by a time embedding of σ,

    ``f · (1 + γ(t)) + β(t)``, ``γ|β`` of shape ``[N, 2C, 1, 1]`` — :func:`burstkern.ops.sft_modulate`'s
    per-channel form (merged gamma|beta, LeakyReLU(0.2) fused),

and a small head per scale (conv3x3 → LeakyReLU → conv1x1 → spatial mean) gives one logit per image and scale;
the heads are averaged. ``time_aware=False`` (the ablation) skips the modulation: the features only pass the
LeakyReLU. The per-scale γ|β layers start at zero, so both variants start as the same function.

Only the time embedding and the heads are trained (the encoder copy is frozen: the discriminator uses the
teacher's prior, as TAD-SR does); gradients still flow through it to the image, which is how the adversarial
loss reaches the student. The active burstkern backend runs every modulation and SFT norm.

Example::

    >>> from burstkern.models import EBSRD
    >>> model = EBSRD("tiny")
    >>> disc = TimeAwareDiscriminator(model.denoiser)
    >>> x, cond = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(2, 16, 8, 8)
    >>> disc(x, torch.full((2,), 0.01), cond, noise=torch.randn_like(x)).shape
    torch.Size([2])
"""

from __future__ import annotations

import copy
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .unet import SFTResBlock, SFTUNet, timestep_features

__all__ = ["TimeAwareDiscriminator"]


class _Head(nn.Module):
    def __init__(self, ch: int, hidden: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 1, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(F.leaky_relu(self.conv(h), 0.2)).mean(dim=(1, 2, 3))


class TimeAwareDiscriminator(nn.Module):
    """Time-aware discriminator on the teacher U-Net's multi-scale encoder features.

    Args:
        teacher: the teacher :class:`SFTUNet` (its encoder half is deep-copied and frozen).
        time_aware: modulate each scale's features by the time embedding (False: the no-injection ablation).
        emb_dim: width of the discriminator's own time embedding.
        head_ch: hidden width of each scale's head (default: the scale's channels).
        sigma_data: EDM σ_data of the teacher's preconditioning (``c_in``).

    ``forward(x, sigma, cond, noise=None, generator=None)``: ``x`` ``[N, 3, H, W]`` in [-1, 1], ``sigma`` ``[N]``
    (the discriminator's noise level t), ``cond`` the burst features ``[N, C, h, w]``; returns logits ``[N]``.
    """

    def __init__(self, teacher: SFTUNet, time_aware: bool = True, emb_dim: int = 64,
                 head_ch: Optional[int] = None, sigma_data: float = 0.5):
        super().__init__()
        if not isinstance(teacher, SFTUNet):
            raise TypeError(f"teacher must be an SFTUNet, got {type(teacher).__name__}")
        self.time_aware, self.sigma_data, self.emb_dim = bool(time_aware), float(sigma_data), emb_dim
        self.backbone_ch = teacher.ch
        # the frozen encoder half of the teacher
        self.emb = copy.deepcopy(teacher.emb)
        self.conv_in = copy.deepcopy(teacher.conv_in)
        self.down = copy.deepcopy(teacher.down)
        self.mid = copy.deepcopy(teacher.mid)
        for m in (self.emb, self.conv_in, self.down, self.mid):
            m.requires_grad_(False)
        self.scale_channels = self._scale_channels()
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.time_proj = nn.ModuleList(nn.Linear(emb_dim, 2 * c) for c in self.scale_channels)
        for lin in self.time_proj:  # γ = β = 0 at the start: identity modulation
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.heads = nn.ModuleList(_Head(c, head_ch or c) for c in self.scale_channels)

    def _scale_channels(self) -> List[int]:
        chans, cur = [], self.conv_in.out_channels
        for layer in self.down:
            if isinstance(layer, SFTResBlock):
                cur = layer.conv1.out_channels
            else:  # a downsampling conv ends a level
                chans.append(cur)
        for layer in self.mid:
            cur = layer.conv1.out_channels
        chans.append(cur)
        return chans

    def trainable_parameters(self) -> List[nn.Parameter]:
        """The parameters the discriminator step trains (time embedding and heads; not the frozen encoder)."""
        return [p for m in (self.time_mlp, self.time_proj, self.heads) for p in m.parameters()]

    def train(self, mode: bool = True):
        super().train(mode)
        for m in (self.emb, self.conv_in, self.down, self.mid):  # the frozen encoder stays in eval mode
            m.eval()
        return self

    def features(self, z: Tensor, sigma: Tensor, cond: Tensor) -> List[Tensor]:
        """The teacher encoder's features of the noised image ``z`` at noise level ``sigma`` ``[N]``, per scale."""
        _, _, c_in, c_noise = ops.edm_scalings(sigma, self.sigma_data)
        x_in = z * c_in.reshape(-1, 1, 1, 1).to(z.dtype)
        emb = self.emb(timestep_features(c_noise.reshape(-1).expand(z.shape[0]), self.backbone_ch).to(z.dtype))
        h = self.conv_in(x_in)
        feats = []
        for layer in self.down:
            if isinstance(layer, SFTResBlock):
                h = layer(h, emb, cond)
            else:
                feats.append(h)
                h = layer(h)
        for layer in self.mid:
            h = layer(h, emb, cond)
        feats.append(h)
        return feats

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor, noise: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        z = ops.add_noise(x, sigma, noise=noise, generator=generator if noise is None else None)
        feats = self.features(z, sigma, cond)
        _, _, _, c_noise = ops.edm_scalings(sigma, self.sigma_data)
        t = self.time_mlp(timestep_features(c_noise, self.emb_dim).to(x.dtype))
        logits = []
        for f, proj, head in zip(feats, self.time_proj, self.heads):
            if self.time_aware:
                gb = proj(t)[:, :, None, None].to(f.dtype)          # [N, 2C, 1, 1]: gamma | beta per channel
                h = ops.sft_modulate(f, gb, None, act="leaky_relu(0.2)")
            else:
                h = F.leaky_relu(f, 0.2)
            logits.append(head(h))
        return torch.stack(logits, 0).mean(0)
