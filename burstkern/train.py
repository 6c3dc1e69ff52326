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
import math
import sys
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import distributed, ops
from .models.ebsrd import CHECKPOINT_FORMAT, EBSRD, EBSRDConfig
from .models.samplers import edm_heun_sampler

__all__ = ["train_initial", "train_denoiser", "distill_student", "initial_loss", "denoiser_loss",
           "consistency_loss", "teacher_distill_loss", "distill_schedule", "save_checkpoint", "load_checkpoint",
           "to_model_range", "lr_at", "sample_sigmas"]


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


def _unpack(batch, device: torch.device) -> Tuple[Tensor, Tensor]:
    if not isinstance(batch, dict) or "burst" not in batch or "gt" not in batch:
        raise TypeError(f"loader must yield dicts with 'burst' [B, T, 4, h, w] and 'gt' [B, 3, H, W], got "
                        f"{type(batch).__name__}{'' if not isinstance(batch, dict) else sorted(batch)}")
    burst = batch["burst"].to(device, torch.float32, non_blocking=True)
    gt = batch["gt"].to(device, torch.float32, non_blocking=True)
    return burst, to_model_range(gt)


class StepBatches:
    """Batches indexed by training step: batch ``s`` = items ``[s·B, (s+1)·B)`` of ``dataset`` (whose items are
    pure functions of their index), so a resumed stage reads the batch an uninterrupted one would."""

    def __init__(self, dataset, batch_size: int):
        self.dataset, self.batch_size = dataset, batch_size

    def batch(self, step: int) -> dict:
        n = len(self.dataset)
        items = [self.dataset[(step * self.batch_size + i) % n] for i in range(self.batch_size)]
        return torch.utils.data.default_collate(items)


def _batches(loader, device: torch.device, start: int = 0) -> Callable[[int], Tuple[Tensor, Tensor]]:
    """``get(step) -> (burst, y)`` on ``device`` (y in [-1, 1]): from a :class:`StepBatches` by index, or from a
    re-iterable loader, cycled (steps must then be asked for in order)."""
    if isinstance(loader, StepBatches):
        return lambda step: _unpack(loader.batch(step), device)

    def endless():
        for _ in itertools.count():
            empty = True
            for batch in loader:
                empty = False
                yield _unpack(batch, device)
            if empty:
                raise ValueError("loader yielded no batches")

    it = endless()
    return lambda step: next(it)


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


def lr_at(step: int, steps: int, lr: float, schedule: str = "cosine", warmup: Optional[int] = None,
          final: float = 0.05) -> float:
    """Learning rate of ``step`` (0-based) of ``steps``: ``"constant"``, or ``"cosine"``: linear warm-up over
    ``warmup`` steps (default ``min(200, steps // 20)``), then cosine decay from ``lr`` to ``final * lr``."""
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"lr schedule must be 'cosine' or 'constant', got {schedule!r}")
    warmup = min(200, steps // 20) if warmup is None else warmup
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _show_progress(progress: bool) -> bool:
    """tqdm bars only when asked for and both stdout and stderr are terminals (quiet in logs and CI)."""
    if not progress:
        return False
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _run(name: str, params: List[nn.Parameter], steps: int, loss_fn: Callable[[int], Tensor], *, lr: float,
         weight_decay: float, grad_clip: Optional[float], progress: bool,
         after_step: Optional[Callable[[], None]] = None, lr_schedule: str = "cosine",
         resume: Optional[dict] = None, checkpoint: Optional[Callable[[dict], None]] = None,
         checkpoint_every: int = 0) -> List[float]:
    """The shared loop: AdamW with the ``lr_schedule`` (:func:`lr_at`), optional grad-norm clip, tqdm; losses kept
    on the device (one sync at the end and one per progress-bar refresh, not one per step).

    ``loss_fn(step)`` computes the loss of ``step`` (all randomness of a step derives from its index, so a resumed
    run draws what an uninterrupted one would). ``resume``: ``{"step", "optimizer", "history"}`` from an earlier
    ``checkpoint`` call; ``checkpoint(state)`` is called every ``checkpoint_every`` steps with that dict."""
    if not params:
        raise ValueError(f"{name}: no trainable parameters")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    start, history = 0, []
    if resume:
        start = int(resume["step"])
        opt.load_state_dict(resume["optimizer"])
        history = [torch.tensor(float(v)) for v in resume.get("history", [])]
    bar = None
    if _show_progress(progress) and steps > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc=name, leave=False, dynamic_ncols=True)
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, lr_schedule)
        loss = loss_fn(step)
        if step == start and not bool(torch.isfinite(loss.detach())):  # one sync: fail fast on a broken setup
            raise FloatingPointError(f"{name}: first loss is not finite ({loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.sync_gradients(params)  # torchrun: average over the ranks (no-op in one process)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        history.append(distributed.mean_across_ranks(loss.detach().float()))
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{history[-1].item():.4g}")
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint({"step": step + 1, "optimizer": opt.state_dict(),
                        "history": torch.stack(history).cpu().tolist()})
    if bar is not None:
        bar.close()
    return torch.stack(history).cpu().tolist() if history else []


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one training step: a pure function of (seed, step)."""
    from .data.dataset import _mix_seed

    return torch.Generator(device=device).manual_seed(_mix_seed(seed % 2 ** 31, step))


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
                  grad_clip: Optional[float] = 1.0, seed: int = 0, device=None, progress: bool = True,
                  lr_schedule: str = "cosine", resume: Optional[dict] = None, checkpoint=None,
                  checkpoint_every: int = 0) -> List[float]:
    """Train the burst encoder + initial SR head: L1(x_init, y), both in [-1, 1]. Returns the per-step losses.

    Runs in fp32 (no ``amp``): burstkern.nn's deformable convs do not accept autocast's mixed dtypes.
    ``lr_schedule``, ``resume``, ``checkpoint``, ``checkpoint_every``: see :func:`_run`.
    """
    steps = _check_steps(steps)
    device = _device_of(model, device)
    torch.manual_seed(seed)
    data = _batches(loader, device)
    with _modes([model.encoder, model.head], [model.denoiser, model.student]):
        params = [p for m in (model.encoder, model.head) for p in m.parameters()]
        return _run("initial", params, steps, lambda step: initial_loss(model, *data(step)), lr=lr,
                    weight_decay=weight_decay, grad_clip=grad_clip, progress=progress, lr_schedule=lr_schedule,
                    resume=resume, checkpoint=checkpoint, checkpoint_every=checkpoint_every)


def sample_sigmas(n: int, dist: str, generator: torch.Generator, device, *, p_mean: float = -1.2,
                  p_std: float = 1.2, sigma_range: Tuple[float, float] = (0.002, 0.03)) -> Tensor:
    """Training noise levels ``[n]``: ``"lognormal"`` (EDM: ``exp(P_mean + P_std·N(0, 1))``) or ``"loguniform"``
    on ``sigma_range`` (concentrated where early-step sampling uses the teacher: σ_min ≤ σ ≤ σ_τ)."""
    if dist == "lognormal":
        return torch.exp(p_mean + p_std * torch.randn(n, device=device, generator=generator))
    if dist == "loguniform":
        lo, hi = (float(v) for v in sigma_range)
        if not 0 < lo <= hi:
            raise ValueError(f"sigma_range must be 0 < lo <= hi, got {sigma_range!r}")
        u = torch.rand(n, device=device, generator=generator)
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
    raise ValueError(f"sigma distribution must be 'lognormal' or 'loguniform', got {dist!r}")


def train_denoiser(model: EBSRD, loader: Iterable, steps: int, *, lr: float = 2e-4, weight_decay: float = 0.0,
                   grad_clip: Optional[float] = 1.0, sigma_dist: str = "loguniform",
                   sigma_range: Optional[Tuple[float, float]] = None, p_mean: float = -1.2, p_std: float = 1.2,
                   seed: int = 0, device=None, amp: bool = False, progress: bool = True, lr_schedule: str = "cosine",
                   resume: Optional[dict] = None, checkpoint=None, checkpoint_every: int = 0) -> List[float]:
    """EDM training of ``model.denoiser`` (the teacher) on the ground truth; the encoder is frozen (no grad).

    Per step: σ per sample from ``sigma_dist`` (:func:`sample_sigmas`; default log-uniform on ``sigma_range`` =
    (the model's ``cm_sigma_min``, ``sigma_tau``), where early-step sampling uses the teacher; ``"lognormal"``
    with ``p_mean``/``p_std`` is EDM's), ``x_noisy = y + σ·ε``, F = denoiser(c_in·x_noisy, c_noise, cond),
    loss = ``edm_loss(...).mean()`` (:func:`denoiser_loss`). E-BSRD diffuses y itself, not the residual
    y − x_init (module docstring). ``amp``: bf16 autocast of the U-Net on a GPU. Returns the losses.
    """
    steps = _check_steps(steps)
    device = _device_of(model, device)
    _amp_context(amp, device)  # validate early
    cfg = model.config
    rng = (cfg.cm_sigma_min, cfg.sigma_tau) if sigma_range is None else tuple(sigma_range)
    sample_sigmas(1, sigma_dist, torch.Generator(device=device), device, sigma_range=rng)  # validate early
    torch.manual_seed(seed)
    data = _batches(loader, device)

    def loss_fn(step):
        burst, y = data(step)
        g = _step_generator(seed, step, device)
        with torch.no_grad():
            cond = model.encoder(burst)
        sigma = distributed.global_draw(lambda s: sample_sigmas(s[0], sigma_dist, g, device, p_mean=p_mean,
                                                                p_std=p_std, sigma_range=rng), y.shape[:1])
        noise = distributed.global_draw(lambda s: torch.randn(s, device=device, generator=g), y.shape)
        return denoiser_loss(model, burst, y, sigma, noise, cond=cond, amp=amp)

    with _modes([model.denoiser], [model.encoder, model.head, model.student]):
        return _run("denoiser", list(model.denoiser.parameters()), steps, loss_fn, lr=lr, weight_decay=weight_decay,
                    grad_clip=grad_clip, progress=progress, lr_schedule=lr_schedule, resume=resume,
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every)


def teacher_distill_loss(model: EBSRD, x_init: Tensor, cond: Tensor, noise: Tensor, target_steps: int,
                         generator: Optional[torch.Generator] = None, sigma_tau: Optional[float] = None,
                         sigma_min: Optional[float] = None, amp: bool = False) -> Tensor:
    """Distillation of the one-step student at σ_τ onto the sample the teacher actually reaches from there.

    ``x_τ = x_init + σ_τ·noise`` — exactly what :meth:`EBSRD.one_step` sees at inference —; the target is the
    teacher's EDM Heun solution from ``x_τ`` (``target_steps`` steps down to ``teacher_sigma_min``, no grad);
    ``loss = mean((f_student(x_τ, σ_τ) − target)²) / σ_τ²`` with the consistency output
    ``f = c_skip^cm·x + c_out^cm·F`` (:func:`burstkern.ops.cm_update`, boundary σ_min = ``cm_sigma_min``).
    """
    cfg = model.config
    sd = cfg.sigma_data
    s_tau = cfg.sigma_tau if sigma_tau is None else float(sigma_tau)
    s_min = cfg.cm_sigma_min if sigma_min is None else float(sigma_min)
    autocast = _amp_context(amp, x_init.device)
    sigma = torch.full((x_init.shape[0],), s_tau, device=x_init.device, dtype=torch.float32)
    x_tau = ops.add_noise(x_init, sigma, noise=noise)
    with torch.no_grad(), autocast():
        target = edm_heun_sampler(lambda x_in, c_noise: model.denoiser(x_in, c_noise, cond), x_tau,
                                  num_steps=target_steps, sigma_min=cfg.teacher_sigma_min, sigma_max=s_tau,
                                  start="noised", sigma_data=sd, generator=generator)
    _, _, s_in, s_noise = ops.cm_scalings(sigma, s_min, sd)
    f = ops.cm_update(x_tau, _net_out(model.student, x_tau, s_in, s_noise, cond, autocast), sigma, s_min, sd)
    return (f - target.float()).square().mean() / (s_tau ** 2)


def distill_student(model: EBSRD, loader: Iterable, steps: int, *, lr: float = 1e-4, weight_decay: float = 0.0,
                    grad_clip: Optional[float] = 1.0, target: str = "teacher", target_steps: int = 4,
                    num_scales: int = 5, ema: float = 0.95, sigma_max: Optional[float] = None,
                    sigma_min: Optional[float] = None, weighting: str = "snr", init_from_teacher: bool = True,
                    seed: int = 0, device=None, amp: bool = False, progress: bool = True,
                    lr_schedule: str = "cosine", resume: Optional[dict] = None, checkpoint=None,
                    checkpoint_every: int = 0) -> List[float]:
    """Distillation of ``model.student`` from the teacher ``model.denoiser`` (E-BSRD's one-step model).

    ``target="teacher"`` (default): at σ_τ from x_init, onto the teacher's ``target_steps``-step Heun solution
    from the same ``x_τ`` (:func:`teacher_distill_loss`) — the input the one-step sampler sees and the output the
    teacher reaches. ``target="cd"``: consistency distillation as in E-BSRD's code: Karras schedule of
    ``num_scales`` levels from ``sigma_max`` (default σ_τ) to ``sigma_min`` (default ``cm_sigma_min``) on the
    noised ground truth, a random adjacent pair per sample, one teacher Heun step, target = EMA (rate ``ema``) of
    the student, loss :func:`consistency_loss` with ``weighting``. ``init_from_teacher``: start the student from
    the teacher's weights. Returns the losses.
    """
    steps = _check_steps(steps)
    if model.student is None:
        raise ValueError("distill_student: the model has no student (built with student=False)")
    if target not in ("teacher", "cd"):
        raise ValueError(f"target must be 'teacher' or 'cd', got {target!r}")
    if weighting not in ("snr", "uniform"):
        raise ValueError(f"weighting must be 'snr' or 'uniform', got {weighting!r}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema!r}")
    if not isinstance(target_steps, int) or target_steps < 1:
        raise ValueError(f"target_steps must be an int >= 1, got {target_steps!r}")
    device = _device_of(model, device)
    _amp_context(amp, device)
    cfg: EBSRDConfig = model.config
    sigma_max = cfg.sigma_tau if sigma_max is None else float(sigma_max)
    sigma_min = cfg.cm_sigma_min if sigma_min is None else float(sigma_min)
    schedule = distill_schedule(num_scales, sigma_min, sigma_max, device=device)
    torch.manual_seed(seed)
    data = _batches(loader, device)
    if init_from_teacher and not resume:
        model.student.load_state_dict(model.denoiser.state_dict())
    ema_net = copy.deepcopy(model.student).eval().requires_grad_(False)
    if resume and resume.get("ema_state") is not None:
        ema_net.load_state_dict(resume["ema_state"])
    distributed.broadcast_module(ema_net)  # the EMA target starts identical on every rank
    online = [p for p in model.student.parameters()]
    shadow = [p for p in ema_net.parameters()]

    def loss_fn(step):
        burst, y = data(step)
        g = _step_generator(seed, step, device)
        with torch.no_grad():
            if target == "teacher":
                x_init, cond = model.initial(burst)
            else:
                cond = model.encoder(burst)
        noise = distributed.global_draw(lambda s: torch.randn(s, device=device, generator=g), y.shape)
        if target == "teacher":
            return teacher_distill_loss(model, x_init, cond, noise, target_steps, generator=g, sigma_tau=sigma_max,
                                        sigma_min=sigma_min, amp=amp)
        index = distributed.global_draw(lambda s: torch.randint(0, num_scales - 1, s, device=device, generator=g),
                                        y.shape[:1])
        return consistency_loss(model, ema_net, burst, y, index, noise, schedule, sigma_min, cond=cond, amp=amp,
                                weighting=weighting)

    @torch.no_grad()
    def update_target():
        if target == "cd":
            for s_, o in zip(shadow, online):
                s_.lerp_(o, 1.0 - ema)

    def ckpt(state):
        distributed.check_consistent(ema_net, "the EMA target of the distillation")  # every rank calls it
        if checkpoint is not None:
            checkpoint(dict(state, ema_state={k: v.detach().cpu() for k, v in ema_net.state_dict().items()}))

    with _modes([model.student], [model.encoder, model.head, model.denoiser]):
        return _run("student", online, steps, loss_fn, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                    progress=progress, after_step=update_target, lr_schedule=lr_schedule, resume=resume,
                    checkpoint=ckpt, checkpoint_every=checkpoint_every)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(path, model: EBSRD, losses: Optional[Dict[str, List[float]]] = None, *, half: bool = False,
                    **extra) -> dict:
    """Save ``{"format", "config", "state_dict", "losses", **extra}`` with :func:`torch.save`; returns it.

    ``config`` is the model's :class:`EBSRDConfig` as a dict, so :func:`load_checkpoint` rebuilds the same model.
    ``half``: store the floating-point weights as fp16 (half the size; loading casts them back to fp32).
    """
    def store(v):
        v = v.detach().cpu()
        return v.half() if half and v.is_floating_point() else v

    ckpt = {"format": CHECKPOINT_FORMAT, "config": model.config_dict(),
            "state_dict": {k: store(v) for k, v in model.state_dict().items()},
            "losses": dict(losses or {}), **extra}
    torch.save(ckpt, path)
    return ckpt


def load_checkpoint(path, map_location="cpu") -> Tuple[EBSRD, dict]:
    """Rebuild the model saved by :func:`save_checkpoint`: returns ``(model, checkpoint dict)``.

    Any unusable file raises :class:`burstkern.models.CheckpointError` (a ``ValueError``) with one line saying why
    (see :meth:`EBSRD.from_checkpoint`)."""
    return EBSRD.from_checkpoint(path, map_location=map_location, return_checkpoint=True)
