"""The E-BSRD pipeline: burst encoder → x_init → (x_τ → EDM Heun teacher) or (consistency one-step student).

Images in the diffusion part live in [-1, 1] (``x = 2·rgb − 1``), as in E-BSRD: the student's one-step output is
``clamp(f(x_init + σ_τ·ε, σ_τ), −1, 1)`` with σ_τ the config's inference level ``start_sigma`` (E-BSRD's 0.03, the
training level ``sigma_tau``, unless ``inference_sigma_tau`` was selected on the validation split). The encoder's fused features condition every U-Net block through
SPADE norms. No backend argument anywhere: the active burstkern backend decides which kernels run.

Presets: ``tiny`` (CPU-friendly, trains in minutes), ``paper`` (128-channel U-Net, 8-frame bursts, 384² output).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

import torch
from torch import nn

from ..ops._common import ArgumentError, ArgumentTypeError, describe
from ..profiling import nvtx_range
from .baseline import demosaic_bilinear, merge_burst, upsample_true_phase
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
    sigma_tau: float = 0.03      # E-BSRD's start noise level (sigma_max of the early-started sampler); training σ
    # the inference start level of one_step / teacher / forward when set (python/train_ebsrd.py selects it on the
    # validation split after stage 3); None: sigma_tau. Training (stages 2 and 3) always uses sigma_tau.
    inference_sigma_tau: Optional[float] = None
    teacher_sigma_min: float = 1e-8
    teacher_steps: int = 40
    cm_sigma_min: float = 0.002
    student: bool = True
    # x_init = base + head(features), the head starting at 0: "merge" (registered shift-and-add of the frames),
    # "reference" (the interpolated reference frame = the aligned single-frame baseline) or "none" (head alone)
    init_base: str = "merge"
    extra: dict = field(default_factory=dict)

    @property
    def start_sigma(self) -> float:
        """The inference start noise level σ_τ: ``inference_sigma_tau`` if set, else ``sigma_tau``."""
        return self.sigma_tau if self.inference_sigma_tau is None else float(self.inference_sigma_tau)


CHECKPOINT_FORMAT = "burstkern.ebsrd/1"
INIT_BASES = ("merge", "reference", "none")
MERGE_ROBUSTNESS = 1.0   # chosen on the validation set (0.1: 33.33 dB, 1.0: 33.45 dB untrained; held-out untouched)
MAX_PARAMETERS = 200_000_000   # a config that builds more than this is refused (absurd values, e.g. unet_ch=4096)
# (field, type, min, max) of every numeric config field: a checkpoint's config is checked against these
_INT_RANGES = {"burst_size": (1, 64), "enc_ch": (1, 1024), "enc_blocks": (0, 64), "levels": (1, 6),
               "deform_groups": (1, 64), "head_blocks": (0, 64), "scale": (2, 16), "unet_ch": (1, 1024),
               "unet_blocks": (1, 16), "num_groups": (1, 1024), "spade_hidden": (1, 2048),
               "teacher_steps": (1, 10_000)}
_FLOAT_RANGES = {"sigma_data": (1e-6, 1e3), "sigma_tau": (1e-8, 1e3), "teacher_sigma_min": (0.0, 1.0),
                 "cm_sigma_min": (0.0, 1.0)}
# fields a checkpoint may lack (written before they existed), with the value such a checkpoint means
_OPTIONAL_FIELDS = {"inference_sigma_tau": None}


TRAINING_API = ("burstkern.train: initial_loss (x_init, through EBSRD.initial, which is differentiable), "
                "denoiser_loss (the teacher U-Net), teacher_distill_loss / consistency_loss (the student), or the "
                "loops train_initial / train_denoiser / distill_student")
NO_GRADIENT_MESSAGE = ("EBSRD.forward / one_step / teacher are inference entry points: the samplers run without "
                       "autograd (torch.no_grad), so their output has no gradient to backpropagate. To train, use "
                       "the differentiable losses of " + TRAINING_API + "; to run inference without this guard, "
                       "call the model under torch.no_grad() or torch.inference_mode().")


class _NoGradient(torch.autograd.Function):
    """Identity on the sampled output whose backward raises :data:`NO_GRADIENT_MESSAGE`: ``.backward()`` through an
    inference output says what to use instead of torch's "element 0 of tensors does not require grad"."""

    @staticmethod
    def forward(ctx, out, anchor):  # anchor: a tensor that requires grad, so the output joins the graph
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(NO_GRADIENT_MESSAGE)


def _tracing() -> bool:
    """Under torch.jit / torch.compile / torch.export tracing or CUDA-graph capture (no data-dependent checks)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class CheckpointError(ValueError):
    """A file or config that is not a usable E-BSRD checkpoint; the message is one line saying why."""


def config_from_dict(d, source: str = "config") -> EBSRDConfig:
    """Validate a config dict (as saved in a checkpoint) and build the :class:`EBSRDConfig`.

    Unknown or missing fields, wrong types, values out of range, inconsistent widths (groups that do not divide
    the channels) and configs that would build more than :data:`MAX_PARAMETERS` parameters raise
    :class:`CheckpointError` with a one-line message.
    """
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: the config must be a dict, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(EBSRDConfig)]
    unknown = sorted(set(d) - set(names), key=str)
    missing = [n for n in names if n not in d and n not in _OPTIONAL_FIELDS]
    if unknown:
        raise CheckpointError(f"{source}: unknown config field(s) {', '.join(map(repr, unknown))}")
    if missing:
        raise CheckpointError(f"{source}: missing config field(s) {', '.join(map(repr, missing))}")
    v = {**_OPTIONAL_FIELDS, **d}
    s = v["inference_sigma_tau"]
    if s is not None:
        lo, hi = _FLOAT_RANGES["sigma_tau"]
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or not lo <= s <= hi:
            raise CheckpointError(f"{source}: config field 'inference_sigma_tau' must be null or a number in "
                                  f"[{lo}, {hi}], got {s!r}")
        v["inference_sigma_tau"] = float(s)
    for k, (lo, hi) in _INT_RANGES.items():
        if not isinstance(v[k], int) or isinstance(v[k], bool) or not lo <= v[k] <= hi:
            raise CheckpointError(f"{source}: config field {k!r} must be an int in [{lo}, {hi}], got {v[k]!r}")
    for k, (lo, hi) in _FLOAT_RANGES.items():
        x = v[k]
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x) or not lo <= x <= hi:
            raise CheckpointError(f"{source}: config field {k!r} must be a number in [{lo}, {hi}], got {x!r}")
        v[k] = float(x)
    if v["init_base"] not in INIT_BASES:
        raise CheckpointError(f"{source}: config field 'init_base' must be one of {INIT_BASES}, got {v['init_base']!r}")
    for k in ("student",):
        if not isinstance(v[k], bool):
            raise CheckpointError(f"{source}: config field {k!r} must be true or false, got {v[k]!r}")
    m = v["unet_mults"]
    if (not isinstance(m, (list, tuple)) or not 1 <= len(m) <= 6
            or any(not isinstance(a, int) or isinstance(a, bool) or not 1 <= a <= 16 for a in m)):
        raise CheckpointError(f"{source}: config field 'unet_mults' must be 1 to 6 ints in [1, 16], got {m!r}")
    v["unet_mults"] = tuple(m)
    if not isinstance(v["extra"], dict):
        raise CheckpointError(f"{source}: config field 'extra' must be a dict, got {type(v['extra']).__name__}")
    if v["scale"] % 2:
        raise CheckpointError(f"{source}: config field 'scale' must be even (x2 of the RGGB packing), got {v['scale']}")
    if v["enc_ch"] % v["deform_groups"]:
        raise CheckpointError(f"{source}: deform_groups={v['deform_groups']} must divide enc_ch={v['enc_ch']}")
    for w in sorted({v["unet_ch"] * a for a in v["unet_mults"]}):
        if w % v["num_groups"]:
            raise CheckpointError(f"{source}: num_groups={v['num_groups']} must divide every U-Net width "
                                  f"(unet_ch x unet_mults), not {w}")
    cfg = EBSRDConfig(**v)
    n = estimate_parameters(cfg)
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: the config builds {n / 1e6:.0f} M parameters, more than the "
                              f"{MAX_PARAMETERS / 1e6:.0f} M allowed (absurd sizes, e.g. unet_ch={v['unet_ch']})")
    return cfg


def estimate_parameters(cfg: EBSRDConfig) -> int:
    """Parameter count of the model ``cfg`` builds, without allocating it (built on the meta device)."""
    with torch.device("meta"):
        m = EBSRD(cfg)
    return sum(p.numel() for p in m.parameters())


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
        if isinstance(preset, str) and preset not in PRESETS:
            raise ValueError(f"EBSRD: unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
        cfg = copy.deepcopy(PRESETS[preset]) if isinstance(preset, str) else copy.deepcopy(preset)
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"EBSRD: unknown config field {k!r}")
            setattr(cfg, k, v)
        self.config = cfg
        self.encoder = BurstEncoder(4, cfg.enc_ch, cfg.enc_blocks, cfg.levels, cfg.deform_groups)
        self.head = InitialSRHead(cfg.enc_ch, cfg.scale, cfg.head_blocks)
        if cfg.init_base not in INIT_BASES:
            raise ValueError(f"EBSRD: init_base must be one of {INIT_BASES}, got {cfg.init_base!r}")
        if cfg.init_base != "none":  # the head predicts a correction of the base image: it starts at 0
            nn.init.zeros_(self.head.to_pixels.weight)
            nn.init.zeros_(self.head.to_pixels.bias)
        unet = lambda: SFTUNet(3, 3, cfg.unet_ch, cfg.unet_mults, cfg.unet_blocks, cfg.enc_ch,  # noqa: E731
                               cfg.num_groups, cfg.spade_hidden)
        self.denoiser = unet()
        self.student = unet() if cfg.student else None

    def config_dict(self) -> dict:
        return asdict(self.config)

    # -- input checks ---------------------------------------------------------------------------------------
    def check_burst(self, burst, name: str = "burst") -> torch.Tensor:
        """``burst`` as every entry point takes it, else :class:`burstkern.ArgumentError` (a ``ValueError`` and a
        ``RuntimeError``; :class:`burstkern.ArgumentTypeError` for a non-tensor or non-float) naming the argument,
        its shape and what was expected: a floating-point ``[B, T, 4, h, w]`` tensor (packed RGGB), B ≥ 1,
        T ≥ 1, h and w ≥ 1 and divisible by the encoder's pyramid, every value finite.

        The finiteness check is one reduction and a host sync; it is skipped under torch.jit / torch.compile /
        torch.export tracing and CUDA-graph capture (what a NaN/Inf then gives depends on the backend's kernels).
        A non-finite frame is refused rather than propagated because the backends disagree on it (a deformable
        sampling position of NaN is all-NaN on CUDA, skipped as out of range by Triton, an index error in the
        registration of ``init_base="merge"``): the error is the one result every backend gives.
        """
        if not isinstance(burst, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor [B, T, 4, h, w] (packed RGGB in [0, 1]), got "
                                    f"{type(burst).__name__}")
        if not burst.is_floating_point():
            raise ArgumentTypeError(f"{name} must be a floating-point tensor [B, T, 4, h, w], got {describe(burst)}")
        if burst.dim() != 5:
            raise ArgumentError(f"{name} must be a 5-D tensor [B, T, 4, h, w] (batch, frames, packed RGGB, height, "
                                f"width), got a {burst.dim()}-D tensor of shape {tuple(burst.shape)}")
        b, t, c, h, w = burst.shape
        if c != 4:
            raise ArgumentError(f"{name} must have 4 channels (packed RGGB) in dim 2 of [B, T, 4, h, w], got shape "
                                f"{tuple(burst.shape)}")
        if b == 0:
            raise ArgumentError(f"{name} has batch size B = 0 (shape {tuple(burst.shape)}); expected B >= 1")
        if t == 0:
            raise ArgumentError(f"{name} has T = 0 frames (shape {tuple(burst.shape)}); expected T >= 1 (frame 0 "
                                f"is the reference)")
        div = 2 ** (self.config.levels - 1)
        if h == 0 or w == 0 or h % div or w % div:
            raise ArgumentError(f"{name} height and width must be >= {div} and divisible by {div} (the encoder's "
                                f"{self.config.levels} pyramid levels), got h x w = {h}x{w} (shape "
                                f"{tuple(burst.shape)})")
        if not _tracing() and burst.device.type != "meta":
            finite = torch.isfinite(burst)
            if not bool(finite.all()):
                bad = (~finite).flatten(2).any(2).nonzero()[0].tolist()  # first (burst, frame) holding one
                raise ArgumentError(f"{name} contains NaN or Inf in frame {bad[1]} of burst {bad[0]} (shape "
                                    f"{tuple(burst.shape)}); expected finite values (packed RGGB in [0, 1])")
        return burst

    def _inference_output(self, out: torch.Tensor, burst: torch.Tensor) -> torch.Tensor:
        """``out`` of a no-grad sampler; when autograd is on and a parameter (or the burst) requires grad, marked
        so that ``.backward()`` through it raises :data:`NO_GRADIENT_MESSAGE` (naming the training API)."""
        if not torch.is_grad_enabled() or _tracing():
            return out
        anchor = burst if burst.requires_grad else next((p for p in self.parameters() if p.requires_grad), None)
        return out if anchor is None else _NoGradient.apply(out, anchor)

    # -- stages ---------------------------------------------------------------------------------------------
    def initial(self, burst: torch.Tensor):
        """Burst ``[B, T, 4, h, w]`` in [0, 1] → (x_init ``[B, 3, 8h, 8w]``, condition features).

        x_init is about [-1, 1] (a residual over :meth:`base_image`, not clamped). Differentiable: this is the
        stage ``burstkern.train.initial_loss`` trains. ``burst`` is checked by :meth:`check_burst`.
        """
        self.check_burst(burst)
        cond = self.encoder(burst)
        x_init = self.head(cond)
        if self.config.init_base != "none":
            x_init = x_init + self._base_image(burst)
        return x_init, cond

    def base_image(self, burst: torch.Tensor) -> torch.Tensor:
        """The image x_init is a residual over, in [-1, 1] (no grad): ``init_base="reference"``: frame 0
        demosaiced bilinearly and upsampled bicubically at the true phase (the aligned single-frame baseline,
        :func:`burstkern.models.baseline.aligned_baseline`); ``"merge"``: all frames registered to frame 0 and
        averaged (:func:`burstkern.models.baseline.merge_burst`)."""
        return self._base_image(self.check_burst(burst))

    def _base_image(self, burst: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.config.init_base == "merge":
                base = merge_burst(burst, self.config.scale // 2, robustness=MERGE_ROBUSTNESS)
            else:
                base = upsample_true_phase(demosaic_bilinear(burst[:, 0]), self.config.scale // 2).clamp(0.0, 1.0)
        return base * 2.0 - 1.0

    # -- checkpoints -----------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", return_checkpoint: bool = False):
        """Load a checkpoint of :func:`burstkern.train.save_checkpoint` (``torch.load(weights_only=True)``).

        Anything that is not a usable checkpoint — a missing, empty, truncated, foreign or non-checkpoint file, a
        directory, a config with unknown, missing or absurd values, a state dict that does not fit — raises
        :class:`CheckpointError` with one line saying why (``FileNotFoundError`` for a missing path).
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"{path}: the file is empty, not a checkpoint")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle/zip errors of every kind: one clear line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated, corrupt or not made by "
                                  f"torch.save: {type(e).__name__}: {msg[:160]})") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
            raise CheckpointError(f"{path}: not a burstkern E-BSRD checkpoint (format {fmt!r}, expected "
                                  f"{CHECKPOINT_FORMAT!r}); write one with python/train_ebsrd.py")
        if "config" not in ckpt or "state_dict" not in ckpt:
            raise CheckpointError(f"{path}: the checkpoint has no {'config' if 'config' not in ckpt else 'state_dict'}")
        cfg = config_from_dict(ckpt["config"], source=path)
        model = cls(cfg)
        sd = ckpt["state_dict"]
        if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
            raise CheckpointError(f"{path}: the state_dict is not a dict of tensors")
        own = model.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad:
            what = (f"{len(missing)} missing (e.g. {missing[0]!r})" if missing else
                    f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})" if unexpected else
                    f"shape of {bad[0]!r} is {tuple(sd[bad[0]].shape)}, the config needs {tuple(own[bad[0]].shape)}")
            raise CheckpointError(f"{path}: the state_dict does not fit its config: {what}")
        if not all(t.is_floating_point() for t in sd.values()):
            raise CheckpointError(f"{path}: the state_dict holds non-floating-point tensors")
        model.load_state_dict({k: v.float() for k, v in sd.items()})
        return (model, ckpt) if return_checkpoint else model

    @classmethod
    def from_pretrained(cls, name: str = "tiny", map_location="cpu"):
        """The shipped checkpoint ``name`` from ``burstkern/weights/`` (model card: burstkern/weights/README.md)."""
        from .. import weights

        path = weights.path(name)
        if not os.path.isfile(path):
            have = sorted(f[:-3] for f in os.listdir(weights.WEIGHTS_DIR) if f.endswith(".pt"))
            raise ValueError(f"no shipped weights named {name!r} (shipped: {', '.join(have) or 'none'})")
        return cls.from_checkpoint(path, map_location=map_location)

    def _raw(self, net: nn.Module, cond: torch.Tensor):
        return lambda x_in, c_noise: net(x_in, c_noise, cond)

    def teacher(self, burst: torch.Tensor, num_steps: Optional[int] = None, generator=None, clamp=None,
                sigma_tau: Optional[float] = None, **sampler_kw):
        """EDM Heun sampling from x_τ = x_init + σ_τ·ε (early-step start), as E-BSRD's teacher.

        ``sigma_tau``: the start noise level σ_τ (the sampler's σ_max); ``None`` (default) is the config's
        inference level :attr:`EBSRDConfig.start_sigma` (``inference_sigma_tau``, selected on the validation split
        by python/train_ebsrd.py, else the training ``sigma_tau``). Another value only explores the sampler (e.g.
        the perception–distortion trade-off); the shipped numbers were measured at the default. The one-step
        student's counterpart is :meth:`one_step`'s ``sigmas=(σ,)``.

        ``clamp``: ``None`` (default) samples with EDM's unclamped Heun steps, so the result is in [-1, 1] only
        approximately (it may overshoot slightly; convert with ``((x + 1) / 2).clamp(0, 1)``) — the sampler the
        shipped weights' held-out teacher numbers were measured with and the one the student is distilled from.
        ``True`` (or a float bound) is E-BSRD's sampler: every denoised estimate and the result clamped to
        [-1, 1]. See :func:`burstkern.models.samplers.edm_heun_sampler`; ``sampler_kw`` go to it as well.
        """
        cfg = self.config
        x_init, cond = self.initial(burst)
        with nvtx_range("sample"):
            steps = cfg.teacher_steps if num_steps is None else num_steps  # 0 is an error, not "the default"
            out = edm_heun_sampler(self._raw(self.denoiser, cond), x_init, num_steps=steps,
                                   sigma_min=cfg.teacher_sigma_min,
                                   sigma_max=cfg.start_sigma if sigma_tau is None else float(sigma_tau), start="early",
                                   sigma_data=cfg.sigma_data, generator=generator, clamp=clamp, **sampler_kw)
        return self._inference_output(out, burst)

    def one_step(self, burst: torch.Tensor, generator=None, sigmas=None) -> torch.Tensor:
        """The consistency student: ``clamp(f(x_init + σ_τ·ε, σ_τ), −1, 1)`` (multistep with more ``sigmas``).

        σ_τ is the config's inference level :attr:`EBSRDConfig.start_sigma` unless ``sigmas`` is given.

        Inference only, like :meth:`forward` and :meth:`teacher`: the sampler runs without autograd, and
        ``.backward()`` through the output raises an error naming the training losses of ``burstkern.train``.
        """
        cfg = self.config
        net = self.student if self.student is not None else self.denoiser
        x_init, cond = self.initial(burst)
        with nvtx_range("sample"):
            out = consistency_sample(self._raw(net, cond), x_init, sigmas=sigmas or (cfg.start_sigma,),
                                     sigma_min=cfg.cm_sigma_min, sigma_data=cfg.sigma_data, clamp=1.0,
                                     generator=generator)
        return self._inference_output(out, burst)

    def forward(self, burst: torch.Tensor, generator=None) -> torch.Tensor:
        """One-step SR: RGB in [0, 1], ``[B, 3, 8h, 8w]``, from a burst ``[B, T, 4, h, w]`` in [0, 1].

        Inference: the one-step sampler runs without autograd (run it under ``torch.no_grad()`` or
        ``torch.inference_mode()``). With autograd on and parameters that require grad, ``model(burst).backward()``
        raises a ``RuntimeError`` saying so and naming the differentiable training API (``burstkern.train``:
        ``initial_loss``, ``denoiser_loss``, ``teacher_distill_loss``, ``consistency_loss``). A bad burst (wrong
        rank or channels, B, T, h or w of 0, NaN/Inf) raises :class:`burstkern.ArgumentError`
        (:meth:`check_burst`).
        """
        return (self.one_step(burst, generator=generator) + 1) / 2
