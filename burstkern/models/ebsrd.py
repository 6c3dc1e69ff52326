"""The E-BSRD pipeline: burst encoder → x_init → (x_τ → EDM Heun teacher) or (consistency one-step student).

Images in the diffusion part live in [-1, 1] (``x = 2·rgb − 1``), as in E-BSRD: the student's one-step output is
``clamp(f(x_init + 0.03·ε, 0.03), −1, 1)``. The encoder's fused features condition every U-Net block through
SPADE norms. No backend argument anywhere: the active burstkern backend decides which kernels run.

Presets: ``tiny`` (CPU-friendly, trains in minutes), ``paper`` (128-channel U-Net, 8-frame bursts, 384² output).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

import torch
from torch import nn

from ..profiling import nvtx_range
from .encoder import BurstEncoder, InitialSRHead
from .samplers import consistency_sample, edm_heun_sampler
from .unet import SFTUNet


@dataclass
class EBSRDConfig:
    burst_size: int = 8
    enc_ch: int = 64
    enc_blocks: int = 2
    levels: int = 3
    deform_groups: int = 8
    head_blocks: int = 2
    scale: int = 8
    unet_ch: int = 128
    unet_mults: Tuple[int, ...] = (1, 1, 2, 2)
    unet_blocks: int = 2
    num_groups: int = 32
    spade_hidden: int = 128
    sigma_data: float = 0.5
    sigma_tau: float = 0.03      # E-BSRD's start noise level (sigma_max of the early-started sampler)
    teacher_sigma_min: float = 1e-8
    teacher_steps: int = 40
    cm_sigma_min: float = 0.002
    student: bool = True
    extra: dict = field(default_factory=dict)


PRESETS = {
    "tiny": EBSRDConfig(burst_size=4, enc_ch=16, enc_blocks=1, levels=2, deform_groups=4, head_blocks=1,
                        unet_ch=16, unet_mults=(1, 2), unet_blocks=1, num_groups=4, spade_hidden=16),
    "paper": EBSRDConfig(),
}


class EBSRD(nn.Module):
    """E-BSRD at library scale.

    Example::

        >>> model = EBSRD("tiny").eval()
        >>> burst = torch.rand(1, 4, 4, 16, 16)
        >>> model.one_step(burst, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([1, 3, 128, 128])
    """

    def __init__(self, preset="tiny", **overrides):
        super().__init__()
        cfg = copy.deepcopy(PRESETS[preset]) if isinstance(preset, str) else copy.deepcopy(preset)
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"EBSRD: unknown config field {k!r}")
            setattr(cfg, k, v)
        self.config = cfg
        self.encoder = BurstEncoder(4, cfg.enc_ch, cfg.enc_blocks, cfg.levels, cfg.deform_groups)
        self.head = InitialSRHead(cfg.enc_ch, cfg.scale, cfg.head_blocks)
        unet = lambda: SFTUNet(3, 3, cfg.unet_ch, cfg.unet_mults, cfg.unet_blocks, cfg.enc_ch,  # noqa: E731
                               cfg.num_groups, cfg.spade_hidden)
        self.denoiser = unet()
        self.student = unet() if cfg.student else None

    def config_dict(self) -> dict:
        return asdict(self.config)

    # -- stages ---------------------------------------------------------------------------------------------
    def initial(self, burst: torch.Tensor):
        """Burst ``[B, T, 4, h, w]`` in [0, 1] → (x_init in [-1, 1] ``[B, 3, 8h, 8w]``, condition features)."""
        cond = self.encoder(burst)
        x_init = self.head(cond)
        return x_init, cond

    def _raw(self, net: nn.Module, cond: torch.Tensor):
        return lambda x_in, c_noise: net(x_in, c_noise, cond)

    def teacher(self, burst: torch.Tensor, num_steps: Optional[int] = None, generator=None, **sampler_kw):
        """EDM Heun sampling from x_τ = x_init + σ_τ·ε (early-step start), as E-BSRD's teacher."""
        cfg = self.config
        x_init, cond = self.initial(burst)
        with nvtx_range("sample"):
            return edm_heun_sampler(self._raw(self.denoiser, cond), x_init, num_steps=num_steps or cfg.teacher_steps,
                                    sigma_min=cfg.teacher_sigma_min, sigma_max=cfg.sigma_tau, start="early",
                                    sigma_data=cfg.sigma_data, generator=generator, **sampler_kw)

    def one_step(self, burst: torch.Tensor, generator=None, sigmas=None) -> torch.Tensor:
        """The consistency student: ``clamp(f(x_init + σ_τ·ε, σ_τ), −1, 1)`` (multistep with more ``sigmas``)."""
        cfg = self.config
        net = self.student if self.student is not None else self.denoiser
        x_init, cond = self.initial(burst)
        with nvtx_range("sample"):
            return consistency_sample(self._raw(net, cond), x_init, sigmas=sigmas or (cfg.sigma_tau,),
                                      sigma_min=cfg.cm_sigma_min, sigma_data=cfg.sigma_data, clamp=1.0,
                                      generator=generator)

    def forward(self, burst: torch.Tensor, generator=None) -> torch.Tensor:
        """One-step SR: RGB in [0, 1], ``[B, 3, 8h, 8w]``."""
        return (self.one_step(burst, generator=generator) + 1) / 2
