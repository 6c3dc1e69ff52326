"""Training stages of E-BSRD on burstkern ops: initial burst SR, EDM denoiser (teacher), consistency distillation.

Three small, separate stages, each ``stage(model, loader, steps, ...) -> list of per-step losses``:

1. :func:`train_initial` — burst encoder + initial SR head, L1 between ``x_init`` and the ground truth.
2. :func:`train_denoiser` — EDM training of ``model.denoiser`` (the teacher), conditioned on the frozen encoder.
3. :func:`distill_student` — consistency distillation of ``model.student`` from the teacher at E-BSRD's σ_τ.

What is diffused (facts from kenty-k/E-BSRD, ``consistency_models/cm/train_util.py`` ``TrainLoopBSR_EDM`` and
``cm/karras_diffusion.py`` ``training_losses`` / ``consistency_losses``): the EDM teacher is trained on the ground
truth itself, ``x_t = y + σ·n`` with target ``y`` (not on the residual ``y − x_init``), with the burst as the
condition; only at sampling time does E-BSRD start from ``x_τ = x_init + σ_τ·ε`` (early-step skipping, which
works because x_init is already close to y and σ_τ = 0.03 is small). Its consistency distillation also noises
the ground truth: σ_i / σ_{i+1} adjacent on a Karras schedule of ``start_scales = 5`` levels from σ_max = 0.03
down to σ_min, one Heun step of the teacher between them, target = a fixed-rate EMA (0.95) of the student,
uniform weighting. We do the same, with three documented differences: the distance is the squared error (E-BSRD
uses LPIPS, which needs downloaded weights), weighted by 1/σ² by default (see :func:`consistency_loss`), and
σ_min is the model's ``cm_sigma_min`` (E-BSRD: 1e-8) so that training and :meth:`EBSRD.one_step` use the same
consistency boundary ``f(x, σ_min) = x``.

Everything numeric runs through ``burstkern.ops`` (``add_noise``, ``edm_scalings`` / ``cm_scalings``,
``edm_loss``, ``edm_euler_update`` + ``edm_heun_update`` for the teacher step, ``cm_update`` for the consistency
outputs), so the active backend decides which kernels run. Images live in [-1, 1] (``y = 2·gt − 1``).

Batches are dicts with ``burst`` ``[B, T, 4, h, w]`` and ``gt`` ``[B, 3, 8h, 8w]`` in [0, 1] (what
:class:`burstkern.data.SyntheticBurstDataset` + a DataLoader yield); a loader is any re-iterable of them
(cycled when ``steps`` exceeds its length — a one-element list is a fixed batch).

Example::

    >>> from burstkern.models import EBSRD
    >>> from burstkern.data import SyntheticBurstDataset
    >>> loader = torch.utils.data.DataLoader(SyntheticBurstDataset(None, crop=112, burst_size=4), batch_size=4)
    >>> model = EBSRD("tiny")
    >>> h1 = train_initial(model, loader, 200)
    >>> h2 = train_denoiser(model, loader, 200)
    >>> h3 = distill_student(model, loader, 100)
    >>> save_checkpoint("tiny.pt", model, losses={"initial": h1, "denoiser": h2, "student": h3})
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import ops
from .models.ebsrd import EBSRD, EBSRDConfig

__all__ = ["train_initial", "train_denoiser", "distill_student", "initial_loss", "denoiser_loss",
           "consistency_loss", "distill_schedule", "save_checkpoint", "load_checkpoint", "to_model_range"]

CHECKPOINT_FORMAT = "burstkern.ebsrd/1"


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def to_model_range(gt: Tensor) -> Tensor:
    """Ground truth in [0, 1] → the diffusion range [-1, 1]."""
    return gt * 2.0 - 1.0


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _batches(loader: Iterable, device: torch.device) -> Iterator[Tuple[Tensor, Tensor]]:
    """Endless (burst, y) on ``device`` from a re-iterable loader, y in [-1, 1]."""
    for epoch in itertools.count():
        empty = True
        for batch in loader:
            empty = False
            if not isinstance(batch, dict) or "burst" not in batch or "gt" not in batch:
                raise TypeError(f"loader must yield dicts with 'burst' [B, T, 4, h, w] and 'gt' [B, 3, H, W], got "
                                f"{type(batch).__name__}{'' if not isinstance(batch, dict) else sorted(batch)}")
            burst = batch["burst"].to(device, torch.float32, non_blocking=True)
            gt = batch["gt"].to(device, torch.float32, non_blocking=True)
            yield burst, to_model_range(gt)
        if empty:
            raise ValueError("loader yielded no batches")


def _check_steps(steps) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    return steps


def _amp_context(amp: bool, device: torch.device):
    """bf16 autocast for the U-Net calls on a GPU (the fused ops themselves always compute in fp32)."""
    if not amp:
        return contextlib.nullcontext
    if device.type != "cuda":
        raise ValueError(f"amp=True (bf16 autocast) needs a CUDA device, got {device}")
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)


def _expand(v: Tensor, x: Tensor) -> Tensor:
    """Per-sample ``[N]`` → broadcastable against ``x`` ``[N, ...]``."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def _net_out(net: nn.Module, x: Tensor, c_in: Tensor, c_noise: Tensor, cond: Tensor, autocast) -> Tensor:
    """Raw network output F(c_in·x, c_noise, cond) in x's dtype (fp32 even when the U-Net ran in bf16)."""
    with autocast():
        out = net(x * _expand(c_in, x).to(x.dtype), c_noise, cond)
    return out.to(x.dtype)


def _run(name: str, params: List[nn.Parameter], steps: int, loss_fn: Callable[[], Tensor], *, lr: float,
         weight_decay: float, grad_clip: Optional[float], progress: bool,
         after_step: Optional[Callable[[], None]] = None) -> List[float]:
    """The shared loop: AdamW, optional grad-norm clip, tqdm; losses kept on the device (one sync at the end and
    one per progress-bar refresh, not one per step)."""
    if not params:
        raise ValueError(f"{name}: no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history: List[Tensor] = []
    bar = None
    if progress and steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=name, leave=False, dynamic_ncols=True)
    for step in range(steps):
        loss = loss_fn()
        if step == 0 and not bool(torch.isfinite(loss.detach())):  # one sync: fail fast on a broken setup
            raise FloatingPointError(f"{name}: first loss is not finite ({loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        history.append(loss.detach().float())
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{history[-1].item():.4g}")
    if bar is not None:
        bar.close()
    return torch.stack(history).cpu().tolist() if history else []


@contextlib.contextmanager
def _modes(train: Iterable[nn.Module], frozen: Iterable[nn.Module]):
    """Put ``train`` modules in train mode with grads, ``frozen`` in eval mode without; restore afterwards."""
    train, frozen = [m for m in train if m is not None], [m for m in frozen if m is not None]
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in train + frozen]
    try:
        for m in frozen:
            m.eval().requires_grad_(False)
        for m in train:
            m.train().requires_grad_(True)
        yield
    finally:
        for m, training, grads in saved:
            m.train(training)
            for p, g in zip(m.parameters(), grads):
                p.requires_grad_(g)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# losses (one batch each; the stages below are loops over these)
# ----------------------------------------------------------------------------------------------
def initial_loss(model: EBSRD, burst: Tensor, y: Tensor) -> Tensor:
    """Mean L1 between ``x_init`` and ``y`` (both in [-1, 1]).

    ``burst`` ``[B, T, 4, h, w]`` in [0, 1], ``y`` ``[B, 3, 8h, 8w]``; returns a 0-d tensor.
    """
    x_init, _ = model.initial(burst)
    if x_init.shape != y.shape:
        raise ValueError(f"ground truth has shape {tuple(y.shape)} but x_init {tuple(x_init.shape)}; expected "
                         f"gt [B, 3, {model.config.scale}h, {model.config.scale}w] for a burst [B, T, 4, h, w]")
    return (x_init.float() - y).abs().mean()


def denoiser_loss(model: EBSRD, burst: Tensor, y: Tensor, sigma: Tensor, noise: Tensor, cond: Optional[Tensor] = None,
                  amp: bool = False) -> Tensor:
    """EDM loss of ``model.denoiser`` on ``y`` at per-sample ``sigma`` ``[B]`` with unit ``noise`` like ``y``.

    ``x_noisy = y + σ·n`` (:func:`burstkern.ops.add_noise`), ``F = denoiser(c_in·x_noisy, c_noise, cond)``,
    ``loss = edm_loss(x_noisy, F, y, σ).mean()`` = mean of ``λ(σ)·(D − y)²``. ``cond``: the encoder features of
    ``burst`` (computed here without grad when None).
    """
    if cond is None:
        with torch.no_grad():
            cond = model.encoder(burst)
    sd = model.config.sigma_data
    x_noisy = ops.add_noise(y, sigma, noise=noise)
    _, _, c_in, c_noise = ops.edm_scalings(sigma, sd)
    F = _net_out(model.denoiser, x_noisy, c_in, c_noise, cond, _amp_context(amp, y.device))
    return ops.edm_loss(x_noisy, F, y, sigma, sd).mean()


def distill_schedule(num_scales: int, sigma_min: float, sigma_max: float, device=None) -> Tensor:
    """The ``num_scales`` Karras noise levels σ_0 = σ_max > ... > σ_{N−1} = σ_min of consistency distillation."""
    if not isinstance(num_scales, int) or isinstance(num_scales, bool) or num_scales < 2:
        raise ValueError(f"num_scales must be an int >= 2 (adjacent pairs of noise levels), got {num_scales!r}")
    return ops.karras_schedule(num_scales, sigma_min, sigma_max, device=device)[:num_scales]


def consistency_loss(model: EBSRD, target: nn.Module, burst: Tensor, y: Tensor, index: Tensor, noise: Tensor,
                     schedule: Tensor, sigma_min: float, cond: Optional[Tensor] = None, amp: bool = False,
                     weighting: str = "snr") -> Tensor:
    """Consistency-distillation loss of ``model.student`` for one batch.

    With σ = schedule[index], σ' = schedule[index + 1] (``index`` ``[B]`` int64 in [0, len − 2]):
    ``x_σ = y + σ·n``; one Heun step of the teacher (``model.denoiser``, EDM scalings) ``x_σ → x_σ'``;
    ``loss = mean(w(σ)·(f_student(x_σ, σ) − f_target(x_σ', σ'))²)`` with ``f = c_skip^cm·x + c_out^cm·F``
    (:func:`burstkern.ops.cm_update`), the target network and the teacher without grad.

    ``weighting``: ``"snr"`` (default, ``w = 1/σ²``) or ``"uniform"`` (``w = 1``; E-BSRD's choice, with an LPIPS
    distance). At σ <= 0.03 the mismatch is O(σ), so an unweighted squared error is ~1e-7 and its gradients fall
    below AdamW's eps (1e-8), which then stalls training; 1/σ² (the consistency-models "snr" schedule) measures
    the mismatch in units of the noise level and keeps the gradients O(1).
    """
    if weighting not in ("snr", "uniform"):
        raise ValueError(f"weighting must be 'snr' or 'uniform', got {weighting!r}")
    if cond is None:
        with torch.no_grad():
            cond = model.encoder(burst)
    sd = model.config.sigma_data
    autocast = _amp_context(amp, y.device)
    sigma, sigma_next = schedule[index], schedule[index + 1]
    x = ops.add_noise(y, sigma, noise=noise)
    with torch.no_grad():
        _, _, c_in, c_noise = ops.edm_scalings(sigma, sd)
        _, _, c_in_n, c_noise_n = ops.edm_scalings(sigma_next, sd)
        F = _net_out(model.denoiser, x, c_in, c_noise, cond, autocast)
        x_euler, d = ops.edm_euler_update(x, F, sigma, sigma_next, sd)
        F_next = _net_out(model.denoiser, x_euler, c_in_n, c_noise_n, cond, autocast)
        x_next = ops.edm_heun_update(x, d, x_euler, F_next, sigma, sigma_next, sd)
        _, _, t_in, t_noise = ops.cm_scalings(sigma_next, sigma_min, sd)
        f_target = ops.cm_update(x_next, _net_out(target, x_next, t_in, t_noise, cond, autocast), sigma_next,
                                 sigma_min, sd)
    _, _, s_in, s_noise = ops.cm_scalings(sigma, sigma_min, sd)
    f = ops.cm_update(x, _net_out(model.student, x, s_in, s_noise, cond, autocast), sigma, sigma_min, sd)
    err = (f - f_target).square()
    if weighting == "snr":
        err = err / _expand(sigma.square(), err)
    return err.mean()


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------
def train_initial(model: EBSRD, loader: Iterable, steps: int, *, lr: float = 1e-3, weight_decay: float = 0.0,
                  grad_clip: Optional[float] = 1.0, seed: int = 0, device=None, progress: bool = True) -> List[float]:
    """Train the burst encoder + initial SR head: L1(x_init, y), both in [-1, 1]. Returns the per-step losses.

    Runs in fp32 (no ``amp``): burstkern.nn's deformable convs do not accept autocast's mixed dtypes.
    """
    steps = _check_steps(steps)
    device = _device_of(model, device)
    torch.manual_seed(seed)
    data = _batches(loader, device)
    with _modes([model.encoder, model.head], [model.denoiser, model.student]):
        params = [p for m in (model.encoder, model.head) for p in m.parameters()]
        return _run("initial", params, steps, lambda: initial_loss(model, *next(data)), lr=lr,
                    weight_decay=weight_decay, grad_clip=grad_clip, progress=progress)


def train_denoiser(model: EBSRD, loader: Iterable, steps: int, *, lr: float = 2e-4, weight_decay: float = 0.0,
                   grad_clip: Optional[float] = 1.0, p_mean: float = -1.2, p_std: float = 1.2, seed: int = 0,
                   device=None, amp: bool = False, progress: bool = True) -> List[float]:
    """EDM training of ``model.denoiser`` (the teacher) on the ground truth; the encoder is frozen (no grad).

    Per step: ``σ = exp(P_mean + P_std·n)`` per sample, ``x_noisy = y + σ·ε``, F = denoiser(c_in·x_noisy,
    c_noise, cond), loss = ``edm_loss(...).mean()`` (:func:`denoiser_loss`). E-BSRD diffuses y itself, not the
    residual y − x_init (module docstring). ``amp``: bf16 autocast of the U-Net on a GPU. Returns the losses.
    """
    steps = _check_steps(steps)
    device = _device_of(model, device)
    _amp_context(amp, device)  # validate early
    torch.manual_seed(seed)
    g = _generator(seed, device)
    data = _batches(loader, device)

    def loss_fn():
        burst, y = next(data)
        with torch.no_grad():
            cond = model.encoder(burst)
        n = torch.randn(y.shape[0], device=device, generator=g)
        sigma = torch.exp(p_mean + p_std * n)
        noise = torch.randn(y.shape, device=device, generator=g)
        return denoiser_loss(model, burst, y, sigma, noise, cond=cond, amp=amp)

    with _modes([model.denoiser], [model.encoder, model.head, model.student]):
        return _run("denoiser", list(model.denoiser.parameters()), steps, loss_fn, lr=lr, weight_decay=weight_decay,
                    grad_clip=grad_clip, progress=progress)


def distill_student(model: EBSRD, loader: Iterable, steps: int, *, lr: float = 1e-4, weight_decay: float = 0.0,
                    grad_clip: Optional[float] = 1.0, num_scales: int = 5, ema: float = 0.95,
                    sigma_max: Optional[float] = None, sigma_min: Optional[float] = None,
                    weighting: str = "snr", init_from_teacher: bool = True, seed: int = 0, device=None,
                    amp: bool = False, progress: bool = True) -> List[float]:
    """Consistency distillation of ``model.student`` from the teacher ``model.denoiser`` (E-BSRD's one-step model).

    Karras schedule of ``num_scales`` levels from ``sigma_max`` (default the model's σ_τ = 0.03) to ``sigma_min``
    (default the model's ``cm_sigma_min``); per step a random adjacent pair per sample, one teacher Heun step,
    target = EMA (rate ``ema``, fixed) of the student; loss :func:`consistency_loss` with ``weighting``
    (default ``"snr"``: 1/σ², see there). ``init_from_teacher``:
    start the student from the teacher's weights (standard consistency distillation). Returns the losses.
    """
    steps = _check_steps(steps)
    if model.student is None:
        raise ValueError("distill_student: the model has no student (built with student=False)")
    if weighting not in ("snr", "uniform"):
        raise ValueError(f"weighting must be 'snr' or 'uniform', got {weighting!r}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema!r}")
    device = _device_of(model, device)
    _amp_context(amp, device)
    cfg: EBSRDConfig = model.config
    sigma_max = cfg.sigma_tau if sigma_max is None else float(sigma_max)
    sigma_min = cfg.cm_sigma_min if sigma_min is None else float(sigma_min)
    schedule = distill_schedule(num_scales, sigma_min, sigma_max, device=device)
    torch.manual_seed(seed)
    g = _generator(seed, device)
    data = _batches(loader, device)
    if init_from_teacher:
        model.student.load_state_dict(model.denoiser.state_dict())
    target = copy.deepcopy(model.student).eval().requires_grad_(False)
    online = [p for p in model.student.parameters()]
    shadow = [p for p in target.parameters()]

    def loss_fn():
        burst, y = next(data)
        with torch.no_grad():
            cond = model.encoder(burst)
        index = torch.randint(0, num_scales - 1, (y.shape[0],), device=device, generator=g)
        noise = torch.randn(y.shape, device=device, generator=g)
        return consistency_loss(model, target, burst, y, index, noise, schedule, sigma_min, cond=cond, amp=amp,
                                weighting=weighting)

    @torch.no_grad()
    def update_target():
        for s, o in zip(shadow, online):
            s.lerp_(o, 1.0 - ema)

    with _modes([model.student], [model.encoder, model.head, model.denoiser]):
        return _run("student", online, steps, loss_fn, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                    progress=progress, after_step=update_target)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(path, model: EBSRD, losses: Optional[Dict[str, List[float]]] = None, **extra) -> dict:
    """Save ``{"format", "config", "state_dict", "losses", **extra}`` with :func:`torch.save`; returns it.

    ``config`` is the model's :class:`EBSRDConfig` as a dict, so :func:`load_checkpoint` rebuilds the same model.
    """
    ckpt = {"format": CHECKPOINT_FORMAT, "config": model.config_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "losses": dict(losses or {}), **extra}
    torch.save(ckpt, path)
    return ckpt


def load_checkpoint(path, map_location="cpu") -> Tuple[EBSRD, dict]:
    """Rebuild the model saved by :func:`save_checkpoint`: returns ``(model, checkpoint dict)``."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a burstkern E-BSRD checkpoint (format {fmt!r}, expected "
                         f"{CHECKPOINT_FORMAT!r}); write one with burstkern.train.save_checkpoint or "
                         f"python/train_ebsrd.py")
    cfg = dict(ckpt["config"])
    cfg["unet_mults"] = tuple(cfg["unet_mults"])
    model = EBSRD(EBSRDConfig(**cfg))
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt
