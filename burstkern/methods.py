"""Training stages of the methods beside E-BSRD's consistency distillation: TAD-SR and DP-IR (docs/methods.md).

**TAD-SR** (:func:`train_tad`): one-step student by time-aware distillation, a stage beside
:func:`burstkern.train.distill_student`. The student is initialised from the teacher; its one-step output is the
same call as E-BSRD's (:meth:`EBSRD.one_step`): ``x̂ = f_student(x_τ, σ_τ)``, ``x_τ = x_init + σ_τ·ε``. Per step,
alternating one generator (student) and one discriminator update:

- ``L_mse = mean((x̂ − x_T)²) / σ_τ²`` with ``x_T`` the teacher's ``target_steps``-step Heun sample from the same
  ``x_τ`` (what :func:`burstkern.train.teacher_distill_loss` uses; 1/σ_τ² keeps the gradients O(1)).
- **High-frequency-enhanced score distillation** ``L_sd``: σ_s log-uniform on ``sd_sigma`` (default
  [cm_sigma_min, σ_τ/3], well below σ_τ), the SAME noise ε' added to both outputs, ``z_s = x̂ + σ_s·ε'``,
  ``z_T = x_T + σ_s·ε'``; with the teacher's denoised predictions ``D_T(·; σ_s)`` (no grad),
  ``Δ = D_T(z_s) − D_T(z_T)``; the U-Net Jacobian is omitted as in SDS, i.e. the gradient w.r.t. x̂ is Δ
  (surrogate ``½·mean((x̂ − sg(x̂ − Δ))²)/σ_τ²``, whose value is ``½·mean(Δ²)/σ_τ²``). Zero when the student
  matches the teacher. ``score="sds"`` (the ablation) is plain SDS: ``Δ = x̂ − D_T(z_s)`` (the student is pulled
  to the teacher's denoised estimate of its own noised output; not zero at the teacher's sample).
- **Adversarial** ``L_adv``: the :class:`burstkern.models.discriminator.TimeAwareDiscriminator` (teacher encoder
  features of the noised image, per-channel time modulation by ``sft_modulate``, heads averaged) at σ_d
  log-uniform on [cm_sigma_min, σ_τ] (where the teacher's encoder was trained); **hinge** loss
  (D: ``relu(1 − D(real)) + relu(1 + D(fake))``, G: ``−D(fake)``); ``adv_loss="ns"`` gives the non-saturating one.
- ``L_G = L_mse + w_sd·L_sd + w_adv·L_adv`` (the two weights).

Documented difference: TAD-SR distils in a VAE latent space; here the "latent" is the image in [-1, 1].

**DP-IR** (:func:`train_dpir_denoiser`, :func:`train_dpir_fusion`): the unconditional denoiser is trained with the
EDM loss on clean ground-truth images only (no burst); then only the fusion network is trained (IR network and
denoiser frozen), with the EDM loss of the fused estimate on ``x_σ = y + σ·n``. Both draw σ from a mixture
(:func:`dpir_sigmas`): with probability ``p_low`` log-uniform on [σ_min, σ_τ] (where the closed-form start samples),
else EDM's log-normal (so the from-noise ablation is in distribution too).

Everything numeric runs through ``burstkern.ops`` (``add_noise``, ``edm_scalings`` / ``cm_scalings``,
``denoise_combine``, ``cm_update``, ``edm_euler_update`` / ``edm_heun_update``, ``edm_loss``, ``sft_modulate``,
``sft_group_norm``), so the active backend decides which kernels run. Batches as in :mod:`burstkern.train`: dicts
with ``burst`` ``[B, T, 4, h, w]`` and ``gt`` ``[B, 3, 8h, 8w]`` in [0, 1]; a loader is a re-iterable of them
(cycled) or a :class:`burstkern.train.StepBatches`.

Example::

    >>> model = EBSRD.from_pretrained("tiny")            # teacher + encoder
    >>> hist = train_tad(model, loader, 300)               # model.student is now the TAD-SR student
    >>> sr = model.one_step(burst)
    >>> dpir = DPIR.from_ebsrd(model)
    >>> train_dpir_denoiser(dpir, loader, 2000); train_dpir_fusion(dpir, loader, 300)
    >>> sr4 = dpir.sample(burst, nfe=4)
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import ops
from .models.discriminator import TimeAwareDiscriminator
from .models.dpir import DPIR
from .models.ebsrd import EBSRD
from .models.samplers import edm_heun_sampler
from .train import _check_steps, _modes

__all__ = ["train_tad", "tad_noise", "tad_prepare", "tad_generator_loss", "tad_discriminator_loss",
           "train_dpir_denoiser", "train_dpir_fusion", "dpir_sigmas", "dpir_denoiser_loss", "dpir_fusion_loss",
           "cosine_lr"]


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------
def _mix(seed: int, step: int) -> int:
    """A 32-bit seed from (seed, step) (splitmix64 finaliser)."""
    z = (((seed % 2 ** 31) << 32) | (step & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0xFFFFFFFF


def _step_generator(seed: int, step: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_mix(seed, step))


def _batch_source(loader, device) -> Callable[[int], Tuple[Tensor, Tensor]]:
    """``get(step) -> (burst, y)`` with y = 2·gt − 1; from ``loader.batch(step)`` or a cycled re-iterable."""
    def unpack(b):
        if not isinstance(b, dict) or "burst" not in b or "gt" not in b:
            raise TypeError(f"loader must yield dicts with 'burst' and 'gt', got {type(b).__name__}")
        return b["burst"].to(device, torch.float32), b["gt"].to(device, torch.float32) * 2.0 - 1.0

    if hasattr(loader, "batch"):
        return lambda step: unpack(loader.batch(step))

    def endless():
        for _ in itertools.count():
            empty = True
            for b in loader:
                empty = False
                yield unpack(b)
            if empty:
                raise ValueError("loader yielded no batches")

    it = endless()
    return lambda step: next(it)


def cosine_lr(step: int, steps: int, lr: float, warmup: Optional[int] = None, final: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps (default ``min(50, steps // 20)``), then cosine to ``final·lr``."""
    warmup = min(50, steps // 20) if warmup is None else warmup
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _progress(name: str, steps: int, progress: bool):
    try:
        tty = progress and sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty or steps == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=name, leave=False, dynamic_ncols=True)


def _e(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim())).to(x.dtype)


def _log_uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> Tensor:
    u = torch.rand(n, generator=g, device=device)
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)


def _teacher_F(model: EBSRD, cond: Tensor):
    return lambda x_in, c_noise: model.denoiser(x_in, c_noise, cond)


def _teacher_D(model: EBSRD, z: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
    """The teacher's denoised prediction D(z; σ) (EDM scalings through ops.denoise_combine)."""
    sd = model.config.sigma_data
    _, _, c_in, c_noise = ops.edm_scalings(sigma, sd)
    return ops.denoise_combine(z, model.denoiser(z * _e(c_in, z), c_noise, cond).to(z.dtype), sigma, sd)


# ----------------------------------------------------------------------------------------------
# TAD-SR
# ----------------------------------------------------------------------------------------------
def tad_noise(y: Tensor, generator: torch.Generator, sigma_tau: float, sd_sigma: Tuple[float, float],
              d_sigma: Tuple[float, float]) -> Dict[str, Tensor]:
    """All randomness of one TAD-SR step, drawn explicitly (so every backend sees the same numbers): ``tau``
    (start noise), ``sd`` + ``sd_sigma`` (score distillation), ``g`` + ``g_sigma`` (generator's adversarial
    pass), ``d`` + ``d_sigma`` (discriminator step)."""
    n, dev = y.shape[0], y.device
    rn = lambda: torch.randn(y.shape, generator=generator, device=dev)  # noqa: E731
    return {"tau": rn(), "sd": rn(), "sd_sigma": _log_uniform(n, *sd_sigma, generator, dev),
            "g": rn(), "g_sigma": _log_uniform(n, *d_sigma, generator, dev),
            "d": rn(), "d_sigma": _log_uniform(n, *d_sigma, generator, dev)}


def _adv_g(logits: Tensor, kind: str) -> Tensor:
    return -logits.mean() if kind == "hinge" else torch.nn.functional.softplus(-logits).mean()


@torch.no_grad()
def tad_prepare(model: EBSRD, burst: Tensor, y: Tensor, noise_tau: Tensor, target_steps: int = 4) -> Dict[str, Tensor]:
    """The frozen part of one TAD-SR / teacher-target distillation batch: ``cond`` (encoder features),
    ``x_tau = x_init + σ_τ·noise_tau`` (what :meth:`EBSRD.one_step` sees) and ``x_T``, the teacher's
    ``target_steps``-step Heun sample from ``x_tau`` (no grad), plus ``y``. Cacheable across runs."""
    cfg = model.config
    x_init, cond = model.initial(burst)
    sigma = torch.full((y.shape[0],), cfg.sigma_tau, device=y.device, dtype=torch.float32)
    x_tau = ops.add_noise(x_init, sigma, noise=noise_tau)
    x_T = edm_heun_sampler(_teacher_F(model, cond), x_tau, num_steps=target_steps, sigma_min=cfg.teacher_sigma_min,
                           sigma_max=cfg.sigma_tau, start="noised", sigma_data=cfg.sigma_data)
    return {"cond": cond, "x_tau": x_tau, "x_T": x_T, "y": y}


def tad_generator_loss(model: EBSRD, disc: Optional[TimeAwareDiscriminator], prep: Dict[str, Tensor],
                       noise: Dict[str, Tensor], *, w_sd: float = 1.0, w_adv: float = 0.1, score: str = "hfsd",
                       adv_loss: str = "hinge") -> Dict[str, Tensor]:
    """The student (generator) loss of one TAD-SR step on a :func:`tad_prepare` batch; returns ``loss``, ``mse``,
    ``sd``, ``adv`` and ``x_hat`` (detached, for the discriminator step). ``noise`` from :func:`tad_noise`.
    With ``w_sd = w_adv = 0`` this is E-BSRD's teacher-target distillation loss
    (:func:`burstkern.train.teacher_distill_loss`)."""
    if score not in ("hfsd", "sds"):
        raise ValueError(f"score must be 'hfsd' or 'sds', got {score!r}")
    if adv_loss not in ("hinge", "ns"):
        raise ValueError(f"adv_loss must be 'hinge' or 'ns', got {adv_loss!r}")
    cfg = model.config
    sd, s_tau, s_min = cfg.sigma_data, cfg.sigma_tau, cfg.cm_sigma_min
    cond, x_tau, x_T = prep["cond"], prep["x_tau"], prep["x_T"]
    sigma = torch.full((x_tau.shape[0],), s_tau, device=x_tau.device, dtype=torch.float32)
    _, _, s_in, s_noise = ops.cm_scalings(sigma, s_min, sd)
    x_hat = ops.cm_update(x_tau, model.student(x_tau * _e(s_in, x_tau), s_noise, cond).to(x_tau.dtype), sigma,
                          s_min, sd)
    mse = (x_hat - x_T).square().mean() / s_tau ** 2
    if w_sd != 0:  # score distillation, U-Net Jacobian omitted: the gradient w.r.t. x_hat is delta
        with torch.no_grad():
            s_sd = noise["sd_sigma"]
            z_s = ops.add_noise(x_hat.detach(), s_sd, noise=noise["sd"])
            d_s = _teacher_D(model, z_s, s_sd, cond)
            if score == "hfsd":
                z_t = ops.add_noise(x_T, s_sd, noise=noise["sd"])
                delta = d_s - _teacher_D(model, z_t, s_sd, cond)
            else:
                delta = x_hat.detach() - d_s
        sdl = 0.5 * (x_hat - (x_hat.detach() - delta)).square().mean() / s_tau ** 2
    else:
        sdl = x_hat.new_zeros(())
    if disc is not None and w_adv != 0:
        adv = _adv_g(disc(x_hat, noise["g_sigma"], cond, noise=noise["g"]), adv_loss)
    else:
        adv = x_hat.new_zeros(())
    loss = mse + w_sd * sdl + w_adv * adv
    return {"loss": loss, "mse": mse.detach(), "sd": sdl.detach(), "adv": adv.detach(), "x_hat": x_hat.detach()}


def tad_discriminator_loss(disc: TimeAwareDiscriminator, y: Tensor, x_hat: Tensor, cond: Tensor,
                           noise: Tensor, sigma: Tensor, adv_loss: str = "hinge") -> Tensor:
    """Discriminator loss on real ``y`` and fake ``x_hat`` (both noised with the same ``noise`` at ``sigma``):
    hinge ``relu(1 − D(real)) + relu(1 + D(fake))`` or non-saturating ``softplus(−D(real)) + softplus(D(fake))``."""
    real = disc(y, sigma, cond, noise=noise)
    fake = disc(x_hat.detach(), sigma, cond, noise=noise)
    if adv_loss == "hinge":
        return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()
    sp = torch.nn.functional.softplus
    return sp(-real).mean() + sp(fake).mean()


def train_tad(model: EBSRD, loader, steps: int, *, lr: float = 1e-4, lr_d: float = 2e-4, target_steps: int = 4,
              w_sd: float = 1.0, w_adv: float = 0.1, score: str = "hfsd", time_aware: bool = True,
              adv_loss: str = "hinge", sd_sigma: Optional[Tuple[float, float]] = None,
              d_sigma: Optional[Tuple[float, float]] = None, init_from_teacher: bool = True,
              grad_clip: Optional[float] = 1.0, seed: int = 0, device=None, progress: bool = True,
              prepared=None, return_discriminator: bool = False):
    """TAD-SR distillation of ``model.student`` from the teacher ``model.denoiser`` (module docstring).

    ``steps`` alternating generator/discriminator updates (AdamW, cosine schedule, β = (0.5, 0.999) for D).
    ``score``: ``"hfsd"`` (high-frequency-enhanced score distillation) or ``"sds"`` (plain SDS, the ablation);
    ``time_aware=False``: the discriminator without its time injection (the ablation); ``w_adv=0`` drops the
    adversarial loss and the discriminator; ``w_sd = w_adv = 0`` is E-BSRD's teacher-target distillation
    (the consistency student's loss, for equal-budget comparisons). ``prepared``: a list (indexed by step, cycled)
    of :func:`tad_prepare` batches to use instead of ``loader`` (the teacher targets computed once, shared by
    several runs). Returns the per-step histories ``{"g", "d", "mse", "sd", "adv"}`` (and the discriminator with
    ``return_discriminator``).
    """
    steps = _check_steps(steps)
    if model.student is None:
        raise ValueError("train_tad: the model has no student (built with student=False)")
    if not isinstance(target_steps, int) or target_steps < 1:
        raise ValueError(f"target_steps must be an int >= 1, got {target_steps!r}")
    if adv_loss not in ("hinge", "ns"):
        raise ValueError(f"adv_loss must be 'hinge' or 'ns', got {adv_loss!r}")
    if score not in ("hfsd", "sds"):
        raise ValueError(f"score must be 'hfsd' or 'sds', got {score!r}")
    cfg = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    sd_sigma = (cfg.cm_sigma_min, cfg.sigma_tau / 3.0) if sd_sigma is None else tuple(sd_sigma)
    d_sigma = (cfg.cm_sigma_min, cfg.sigma_tau) if d_sigma is None else tuple(d_sigma)
    if init_from_teacher:
        model.student.load_state_dict(model.denoiser.state_dict())
    torch.manual_seed(seed)
    disc = TimeAwareDiscriminator(model.denoiser, time_aware=time_aware, sigma_data=cfg.sigma_data).to(device) \
        if w_adv != 0 else None
    data = _batch_source(loader, device) if prepared is None else None
    g_params = list(model.student.parameters())
    opt_g = torch.optim.AdamW(g_params, lr=lr, weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.trainable_parameters(), lr=lr_d, betas=(0.5, 0.999), weight_decay=0.0) \
        if disc is not None else None
    hist: Dict[str, List[Tensor]] = {k: [] for k in ("g", "d", "mse", "sd", "adv")}
    bar = _progress("tad", steps, progress)
    with _modes([model.student] + ([disc] if disc is not None else []), [model.encoder, model.head, model.denoiser]):
        if disc is not None:
            for m in (disc.emb, disc.conv_in, disc.down, disc.mid):
                m.eval().requires_grad_(False)
        for step in range(steps):
            g = _step_generator(seed, step, device)
            if prepared is None:
                burst, y = data(step)
                noise = tad_noise(y, g, cfg.sigma_tau, sd_sigma, d_sigma)
                prep = tad_prepare(model, burst, y, noise["tau"], target_steps)
            else:
                prep = prepared[step % len(prepared)]
                y = prep["y"]
                noise = tad_noise(y, g, cfg.sigma_tau, sd_sigma, d_sigma)
            # generator step
            for group in opt_g.param_groups:
                group["lr"] = cosine_lr(step, steps, lr)
            out = tad_generator_loss(model, disc, prep, noise, w_sd=w_sd, w_adv=w_adv, score=score,
                                     adv_loss=adv_loss)
            if step == 0 and not bool(torch.isfinite(out["loss"].detach())):
                raise FloatingPointError(f"train_tad: first loss is not finite ({out['loss'].item()})")
            opt_g.zero_grad(set_to_none=True)
            if disc is not None:
                disc.zero_grad(set_to_none=True)
            out["loss"].backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(g_params, grad_clip)
            opt_g.step()
            # discriminator step on the same batch
            if disc is not None:
                for group in opt_d.param_groups:
                    group["lr"] = cosine_lr(step, steps, lr_d)
                d_loss = tad_discriminator_loss(disc, y, out["x_hat"], prep["cond"], noise["d"], noise["d_sigma"],
                                                adv_loss)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            else:
                d_loss = y.new_zeros(())
            for k, v in (("g", out["loss"]), ("d", d_loss), ("mse", out["mse"]), ("sd", out["sd"]),
                         ("adv", out["adv"])):
                hist[k].append(v.detach().float())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    res = {k: (torch.stack(v).cpu().tolist() if v else []) for k, v in hist.items()}
    return (res, disc) if return_discriminator else res


# ----------------------------------------------------------------------------------------------
# DP-IR
# ----------------------------------------------------------------------------------------------
def dpir_sigmas(n: int, generator: torch.Generator, device, sigma_min: float, sigma_tau: float,
                p_low: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """Training σ ``[n]``: with probability ``p_low`` log-uniform on [σ_min, σ_τ], else EDM log-normal."""
    low = _log_uniform(n, sigma_min, sigma_tau, generator, device)
    high = torch.exp(p_mean + p_std * torch.randn(n, generator=generator, device=device))
    pick = torch.rand(n, generator=generator, device=device) < p_low
    return torch.where(pick, low, high)


def dpir_denoiser_loss(dpir: DPIR, y: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """EDM loss of the unconditional denoiser on clean ``y`` (no burst)."""
    x = ops.add_noise(y, sigma, noise=noise)
    return ops.edm_loss(x, dpir.denoiser_F(x, sigma), y, sigma, dpir.sigma_data).mean()


def dpir_fusion_loss(dpir: DPIR, burst: Tensor, y: Tensor, sigma: Tensor, noise: Tensor,
                     x_ir: Optional[Tensor] = None) -> Tensor:
    """EDM loss of the fused estimate E[x0 | y, x_σ] (only the fusion network gets gradients)."""
    if x_ir is None:
        with torch.no_grad():
            x_ir = dpir.ir(burst)
    x = ops.add_noise(y, sigma, noise=noise)
    return ops.edm_loss(x, dpir.fused_F(x, sigma, x_ir), y, sigma, dpir.sigma_data).mean()


def _simple_loop(name: str, params: List[nn.Parameter], steps: int, loss_fn: Callable[[int], Tensor], lr: float,
                 grad_clip: Optional[float], progress: bool) -> List[float]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    hist: List[Tensor] = []
    bar = _progress(name, steps, progress)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        loss = loss_fn(step)
        if step == 0 and not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError(f"{name}: first loss is not finite ({loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        hist.append(loss.detach().float())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return torch.stack(hist).cpu().tolist() if hist else []


def _train_dpir_stage(dpir: DPIR, loader, steps: int, name: str, net: nn.Module, frozen: List[nn.Module],
                      loss: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], lr: float, p_low: float,
                      grad_clip: Optional[float], seed: int, device, progress: bool) -> List[float]:
    """Train ``net`` alone (``frozen`` held) on ``loss(burst, y, sigma, noise)`` under DP-IR's training σ."""
    steps = _check_steps(steps)
    device = torch.device(device) if device is not None else next(dpir.parameters()).device
    torch.manual_seed(seed)
    data = _batch_source(loader, device)

    def loss_fn(step):
        burst, y = data(step)
        g = _step_generator(seed, step, device)
        sigma = dpir_sigmas(y.shape[0], g, device, dpir.config.sigma_min, dpir.sigma_tau, p_low)
        return loss(burst, y, sigma, torch.randn(y.shape, generator=g, device=device))

    with _modes([net], frozen):
        return _simple_loop(name, list(net.parameters()), steps, loss_fn, lr, grad_clip, progress)


def train_dpir_denoiser(dpir: DPIR, loader, steps: int, *, lr: float = 5e-4, p_low: float = 0.5,
                        grad_clip: Optional[float] = 1.0, seed: int = 0, device=None,
                        progress: bool = True) -> List[float]:
    """Train DP-IR's unconditional denoiser on the loader's clean ground truths (its bursts are ignored)."""
    return _train_dpir_stage(dpir, loader, steps, "dpir-denoiser", dpir.denoiser, [dpir.ir, dpir.fusion],
                             lambda burst, y, sigma, noise: dpir_denoiser_loss(dpir, y, sigma, noise),
                             lr, p_low, grad_clip, seed, device, progress)


def train_dpir_fusion(dpir: DPIR, loader, steps: int, *, lr: float = 1e-3, p_low: float = 0.5,
                      grad_clip: Optional[float] = 1.0, seed: int = 0, device=None,
                      progress: bool = True) -> List[float]:
    """Train only DP-IR's fusion network (IR network and denoiser frozen); returns the per-step losses."""
    return _train_dpir_stage(dpir, loader, steps, "dpir-fusion", dpir.fusion, [dpir.ir, dpir.denoiser],
                             lambda burst, y, sigma, noise: dpir_fusion_loss(dpir, burst, y, sigma, noise),
                             lr, p_low, grad_clip, seed, device, progress)
