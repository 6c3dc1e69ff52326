"""DP-IR (modular conditional diffusion for image reconstruction) on burstkern ops.

Three modules, as in the paper, with E-BSRD's parts and EDM's notation (images in [-1, 1], noise level σ):

- **IR network** (:class:`IRNetwork`, frozen): the E-BSRD burst encoder + initial SR head, ``E[x0 | y] = x_IR``
  (the same function as :meth:`EBSRD.initial`; loadable from an E-BSRD checkpoint, :meth:`DPIR.from_ebsrd`).
- **Denoiser** (:class:`UnconditionalDenoiser`, frozen for the task): an EDM-preconditioned U-Net trained on
  clean images only (no burst), ``E[x0 | x_σ] = D_den``. It is the library's :class:`SFTUNet` fed a constant zero
  condition, so its SPADE norms reduce to learned per-channel constants: unconditional.
- **Fusion network** (:class:`FusionNet`, the only trained part): small, conditioned on σ through
  :func:`burstkern.ops.sft_group_norm` (per-channel ``[N, 2C, 1, 1]`` γ|β from a time embedding). From
  ``(c_in·x_σ, D_den, x_IR)`` it predicts a per-pixel, per-channel mix ``m`` and a residual ``r`` of the raw
  network output::

      F_fused = F_den + m ⊙ (F_IR − F_den) + r,   F_IR = (x_IR − c_skip·x_σ) / c_out,

  so ``D_fused = c_skip·x_σ + c_out·F_fused = D_den + m ⊙ (x_IR − D_den) + c_out·r`` = E[x0 | y, x_σ]:
  between the prior's and the IR network's estimate. ``r`` starts at 0 and ``m`` at ``σ²/(σ² + s²)``, the weight
  of x_IR when x_σ and x_IR are independent Gaussian estimates of x0 with variances σ² and s² (s learnt).

Accelerated sampling (:func:`dpir_sample`): the closed-form cumulative transition from the IR estimate,
``x_τ = x_IR + σ_τ·ε`` (EDM's ``q(x_τ | x0)`` with x0 := x_IR), then ``nfe`` Euler steps of the probability-flow
ODE on a Karras schedule σ_τ → σ_min → 0 (one fused-network evaluation each; the IR network runs once per burst
and is not counted). ``start="noise"`` (the ablation) starts from ``σ_max·ε`` instead. Every update runs through
burstkern's denoise ops (``add_noise``, ``edm_scalings``, ``edm_euler_update``; ``edm_loss`` for training).

Example::

    >>> from burstkern.models import EBSRD
    >>> dpir = DPIR.from_ebsrd(EBSRD("tiny")).eval()
    >>> burst = torch.rand(1, 4, 4, 8, 8)
    >>> dpir.sample(burst, nfe=4, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([1, 3, 64, 64])
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from ..profiling import nvtx_range
from .ebsrd import EBSRD, PRESETS, CheckpointError, EBSRDConfig, config_from_dict
from .encoder import BurstEncoder, InitialSRHead
from .unet import SFTUNet, timestep_features

__all__ = ["DPIR", "DPIRConfig", "IRNetwork", "UnconditionalDenoiser", "FusionNet", "dpir_sample",
           "DPIR_CHECKPOINT_FORMAT"]

DPIR_CHECKPOINT_FORMAT = "burstkern.dpir/1"


@dataclass
class DPIRConfig:
    fusion_ch: int = 16          # width of the fusion network
    fusion_blocks: int = 2       # time-modulated conv blocks
    fusion_groups: int = 4       # GroupNorm groups of its sft_group_norm
    sigma_tau: Optional[float] = None   # closed-form start level (None: the E-BSRD config's sigma_tau)
    sigma_min: float = 0.002     # last σ of the sampling schedule before 0
    sigma_max: float = 80.0      # from-noise start (the ablation)
    den_ch: int = 16             # the unconditional denoiser's U-Net (independent of the IR network's config)
    den_mults: Tuple[int, ...] = (1, 2)
    den_blocks: int = 1
    den_groups: int = 4
    den_hidden: int = 8


class IRNetwork(nn.Module):
    """The frozen IR network: E-BSRD's burst encoder + initial SR head (``EBSRD.initial``'s exact function)."""

    def __init__(self, cfg: EBSRDConfig):
        super().__init__()
        self.config = cfg
        self.encoder = BurstEncoder(4, cfg.enc_ch, cfg.enc_blocks, cfg.levels, cfg.deform_groups)
        self.head = InitialSRHead(cfg.enc_ch, cfg.scale, cfg.head_blocks)

    def __getattr__(self, name):
        # EBSRD.initial's helpers (e.g. the base image x_init is a residual over) bound to this module, so the IR
        # network stays EBSRD.initial's exact function whatever helpers it uses
        try:
            return super().__getattr__(name)
        except AttributeError:
            attr = getattr(EBSRD, name, None)
            if callable(attr) and not isinstance(attr, type):
                return attr.__get__(self, type(self))
            raise

    def forward(self, burst: Tensor) -> Tensor:
        """Burst ``[B, T, 4, h, w]`` in [0, 1] → ``x_IR`` ``[B, 3, 8h, 8w]`` in [-1, 1]."""
        return EBSRD.initial(self, burst)[0]


class UnconditionalDenoiser(nn.Module):
    """EDM raw network ``F(c_in·x, c_noise)`` for clean images: an :class:`SFTUNet` with a zero condition."""

    def __init__(self, ch: int = 16, mults=(1, 2), num_res_blocks: int = 1, num_groups: int = 4,
                 spade_hidden: int = 8):
        super().__init__()
        self.net = SFTUNet(3, 3, ch, tuple(mults), num_res_blocks, 1, num_groups, spade_hidden)

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        cond = x_in.new_zeros(x_in.shape[0], 1, 1, 1)
        return self.net(x_in, c_noise, cond)


class FusionNet(nn.Module):
    """E[x0 | y, x_σ] from ``(c_in·x_σ, D_den, x_IR)`` and σ: returns mix logits and residual ``[N, 6, H, W]``.

    conv3x3(9 → C), then ``blocks`` × [``sft_group_norm`` with per-channel γ|β(σ), SiLU fused → conv3x3],
    then a zero-initialised conv3x3(C → 6) (3 mix-logit corrections, 3 residual channels); ``log_ir_std``: the
    learnt log std of the IR estimate's error, which sets the starting mix ``σ²/(σ² + s²)``.
    """

    def __init__(self, ch: int = 16, blocks: int = 2, num_groups: int = 4, emb_dim: int = 32, ir_std: float = 0.03):
        super().__init__()
        self.emb_dim = emb_dim
        self.time = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.conv_in = nn.Conv2d(9, ch, 3, padding=1)
        self.norms = nn.ModuleList(nn.GroupNorm(num_groups, ch) for _ in range(blocks))
        self.mods = nn.ModuleList(nn.Linear(emb_dim, 2 * ch) for _ in range(blocks))
        self.convs = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(blocks))
        self.conv_out = nn.Conv2d(ch, 6, 3, padding=1)
        self.log_ir_std = nn.Parameter(torch.tensor(math.log(ir_std)))   # s of the IR estimate's error
        for m in (self.conv_out, *self.mods):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x_in: Tensor, d_den: Tensor, x_ir: Tensor, c_noise: Tensor) -> Tensor:
        t = self.time(timestep_features(c_noise.reshape(-1).expand(x_in.shape[0]), self.emb_dim).to(x_in.dtype))
        h = self.conv_in(torch.cat([x_in, d_den, x_ir], 1))
        for norm, mod, conv in zip(self.norms, self.mods, self.convs):
            gb = mod(t)[:, :, None, None].to(h.dtype)   # per-channel gamma|beta [N, 2C, 1, 1]
            h = h + conv(ops.sft_group_norm(h, gb, None, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                            act="silu"))
        return self.conv_out(h)


class DPIR(nn.Module):
    """DP-IR pipeline: frozen IR network, unconditional denoiser, trained fusion network, accelerated sampler.

    Args:
        ebsrd_config: the E-BSRD config (preset name or :class:`EBSRDConfig`) of the IR network.
        config: :class:`DPIRConfig` (or its fields as keyword arguments).
    """

    def __init__(self, ebsrd_config="tiny", config: Optional[DPIRConfig] = None, **overrides):
        super().__init__()
        cfg = copy.deepcopy(PRESETS[ebsrd_config]) if isinstance(ebsrd_config, str) else copy.deepcopy(ebsrd_config)
        dcfg = copy.deepcopy(config) if config is not None else DPIRConfig()
        for k, v in overrides.items():
            if not hasattr(dcfg, k):
                raise TypeError(f"DPIR: unknown config field {k!r}")
            setattr(dcfg, k, v)
        self.ebsrd_config, self.config = cfg, dcfg
        self.ir = IRNetwork(cfg)
        self.denoiser = UnconditionalDenoiser(dcfg.den_ch, dcfg.den_mults, dcfg.den_blocks, dcfg.den_groups,
                                              dcfg.den_hidden)
        self.fusion = FusionNet(dcfg.fusion_ch, dcfg.fusion_blocks, dcfg.fusion_groups)
        self.ir.requires_grad_(False)

    @property
    def sigma_tau(self) -> float:
        return self.ebsrd_config.sigma_tau if self.config.sigma_tau is None else float(self.config.sigma_tau)

    @property
    def sigma_data(self) -> float:
        return self.ebsrd_config.sigma_data

    def parameter_counts(self) -> dict:
        """Parameters per module (``fusion`` is all that the task trains)."""
        n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"ir": n(self.ir), "denoiser": n(self.denoiser), "fusion": n(self.fusion)}

    # -- construction from E-BSRD ---------------------------------------------------------------------------
    @classmethod
    def from_ebsrd(cls, model, config: Optional[DPIRConfig] = None, **overrides) -> "DPIR":
        """A DP-IR whose IR network is ``model``'s encoder + head (an :class:`EBSRD` or a checkpoint path)."""
        if not isinstance(model, EBSRD):
            model = EBSRD.from_checkpoint(model)
        dpir = cls(model.config, config, **overrides)
        dpir.ir.encoder.load_state_dict(model.encoder.state_dict())
        dpir.ir.head.load_state_dict(model.head.state_dict())
        return dpir.to(next(model.parameters()).device)

    # -- the estimates ----------------------------------------------------------------------------------------
    def fused_F(self, x: Tensor, sigma: Tensor, x_ir: Tensor) -> Tensor:
        """Raw output ``F_fused`` at ``(x, σ)`` given the IR estimate: ``D_fused = c_skip·x + c_out·F_fused``."""
        sd = self.sigma_data
        sigma = sigma.reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = ops.edm_scalings(sigma, sd)
        e = lambda v: v.reshape(-1, 1, 1, 1).to(x.dtype)  # noqa: E731
        x_in = x * e(c_in)
        with torch.no_grad():  # the denoiser is frozen for the task
            f_den = self.denoiser(x_in, c_noise)
            d_den = ops.denoise_combine(x, f_den, sigma, sd)
        out = self.fusion(x_in, d_den, x_ir, c_noise)
        # the mix starts at the Bayes weight of two independent Gaussian estimates, x_σ (variance σ²) and x_IR
        # (variance s², s learnt): m0 = σ²/(σ² + s²); the network learns a correction of its logit
        log_m0 = 2 * torch.log(e(sigma)) - 2 * self.fusion.log_ir_std
        mix, res = torch.sigmoid(out[:, :3] + log_m0), out[:, 3:]
        f_ir = (x_ir - e(c_skip) * x) / e(c_out)
        return f_den + mix * (f_ir - f_den) + res

    def denoiser_F(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Raw output of the unconditional denoiser alone (E[x0 | x_σ])."""
        sigma = sigma.reshape(-1).expand(x.shape[0])
        _, _, c_in, c_noise = ops.edm_scalings(sigma, self.sigma_data)
        return self.denoiser(x * c_in.reshape(-1, 1, 1, 1).to(x.dtype), c_noise)

    @torch.no_grad()
    def sample(self, burst: Tensor, nfe: int = 4, start: str = "tau", generator: Optional[torch.Generator] = None,
               sigma_tau: Optional[float] = None, sigma_max: Optional[float] = None, clamp: bool = True) -> Tensor:
        """Super-resolve ``burst`` with ``nfe`` fused-network evaluations: ``[B, 3, 8h, 8w]`` in [-1, 1].

        ``start="tau"``: closed-form start ``x_τ = x_IR + σ_τ·ε``; ``"noise"``: ``σ_max·ε`` (ablation).
        """
        x_ir = self.ir(burst)
        with nvtx_range("sample"):
            x = dpir_sample(lambda x, s: self.fused_F(x, s, x_ir), x_ir, nfe=nfe, start=start,
                            sigma_start=(self.sigma_tau if sigma_tau is None else sigma_tau) if start == "tau"
                            else (self.config.sigma_max if sigma_max is None else sigma_max),
                            sigma_min=self.config.sigma_min, sigma_data=self.sigma_data, generator=generator)
        return x.clamp(-1.0, 1.0) if clamp else x

    def forward(self, burst: Tensor, nfe: int = 1, generator=None) -> Tensor:
        """RGB in [0, 1]."""
        return (self.sample(burst, nfe=nfe, generator=generator) + 1) / 2

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self, path, **extra) -> dict:
        ckpt = {"format": DPIR_CHECKPOINT_FORMAT, "ebsrd_config": asdict(self.ebsrd_config),
                "config": asdict(self.config),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}, **extra}
        torch.save(ckpt, path)
        return ckpt

    @classmethod
    def load(cls, path, map_location="cpu") -> "DPIR":
        path = os.fspath(path)
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__})") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != DPIR_CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a burstkern DP-IR checkpoint")
        dc = dict(ckpt["config"])
        dc["den_mults"] = tuple(dc.get("den_mults", (1, 2)))
        dpir = cls(config_from_dict(ckpt["ebsrd_config"], source=path), DPIRConfig(**dc))
        dpir.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
        return dpir


@torch.no_grad()
def dpir_sample(F, x_ir: Tensor, nfe: int = 4, start: str = "tau", sigma_start: float = 0.03,
                sigma_min: float = 0.002, sigma_data: float = 0.5, rho: float = 7.0,
                generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
    """DP-IR's accelerated sampler: Euler steps of the probability-flow ODE with the fused estimate.

    Args:
        F: ``F(x, sigma) -> raw output`` (``sigma`` a 0-d tensor) with ``D = c_skip·x + c_out·F``.
        x_ir: the IR estimate ``[N, 3, H, W]``.
        nfe: number of function evaluations = Euler steps on the Karras schedule ``sigma_start → sigma_min → 0``
            (1: ``D(x_τ; σ_τ)`` directly).
        start: ``"tau"`` (``x = x_IR + σ_start·ε``, the closed-form start) or ``"noise"`` (``x = σ_start·ε``).
        noise: explicit start noise like ``x_ir`` (else drawn from ``generator`` by :func:`burstkern.ops.add_noise`).
    """
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe must be an int >= 1, got {nfe!r}")
    if start not in ("tau", "noise"):
        raise ValueError(f"start must be 'tau' or 'noise', got {start!r}")
    if not sigma_start > sigma_min > 0:
        raise ValueError(f"need sigma_start > sigma_min > 0, got {sigma_start}, {sigma_min}")
    sig = ops.karras_schedule(nfe, sigma_min, sigma_start, rho, device=x_ir.device)   # [nfe + 1], last 0
    base = x_ir if start == "tau" else torch.zeros_like(x_ir)
    x = ops.add_noise(base, sig[0], noise=noise, generator=generator if noise is None else None)
    for i in range(nfe):
        f = F(x, sig[i]).to(x.dtype)
        x, _ = ops.edm_euler_update(x, f, sig[i], sig[i + 1], sigma_data)
    return x

