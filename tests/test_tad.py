"""TAD-SR stage (burstkern.methods.train_tad) and its time-aware discriminator: losses, backend parity, overfit on a
fixed batch, determinism, and that the losses and the time modulation route through burstkern ops."""

from __future__ import annotations

import copy

import pytest
import torch

import burstkern
from burstkern import methods, ops
from burstkern.models import EBSRD, PRESETS
from burstkern.models.discriminator import TimeAwareDiscriminator
from burstkern.registry import backend_available
from utils import rel_err, tiny_ebsrd

OPS = ("deform_conv2d", "sft_group_norm", "sft_modulate", "cm_update", "add_noise", "edm_euler_update",
       "edm_heun_update", "denoise_combine")  # (edm_scalings / cm_scalings: reference on every backend)


def backends():
    out = []
    for name in ("native", "triton"):
        bad = [(op, why) for op in OPS for ok, why in [backend_available(name, "cpu", op)] if not ok]
        out.append(pytest.param(name, marks=() if not bad else
                                pytest.mark.skip(reason=f"{name}: {bad[0][0]}: {bad[0][1]}")))
    return out


def make_model(seed=0):
    """tiny E-BSRD with its zero-initialised layers perturbed, student = teacher + a small perturbation."""
    model = tiny_ebsrd(seed)
    with torch.no_grad():
        model.student.load_state_dict(model.denoiser.state_dict())
        for p in model.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def batch(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = PRESETS["tiny"].burst_size
    return torch.rand(n, t, 4, 8, 8, generator=g), torch.rand(n, 3, 64, 64, generator=g) * 2 - 1


def noises(y, seed=2, model=None):
    cfg = (model or EBSRD("tiny")).config
    return methods.tad_noise(y, torch.Generator().manual_seed(seed), cfg.sigma_tau,
                             (cfg.cm_sigma_min, cfg.sigma_tau / 3), (cfg.cm_sigma_min, cfg.sigma_tau))


def _step(model, disc, burst, y, nz, target_steps=2, **kw):
    """One generator loss (+ grads of the student) and one discriminator loss (+ grads of its heads)."""
    prep = methods.tad_prepare(model, burst, y, nz["tau"], target_steps=target_steps)
    model.student.zero_grad(set_to_none=True)
    out = methods.tad_generator_loss(model, disc, prep, nz, **kw)
    out["loss"].backward()
    g_grads = torch.cat([p.grad.flatten() for p in model.student.parameters() if p.grad is not None])
    disc.zero_grad(set_to_none=True)
    d = methods.tad_discriminator_loss(disc, y, out["x_hat"], prep["cond"], nz["d"], nz["d_sigma"])
    d.backward()
    d_grads = torch.cat([p.grad.flatten() for p in disc.trainable_parameters() if p.grad is not None])
    return {"x_T": prep["x_T"], "x_hat": out["x_hat"], "loss": out["loss"].detach(), "mse": out["mse"],
            "sd": out["sd"], "adv": out["adv"], "d": d.detach(), "g_grads": g_grads, "d_grads": d_grads}


def _perturbed_disc(model, time_aware=True):
    torch.manual_seed(5)
    disc = TimeAwareDiscriminator(model.denoiser, time_aware=time_aware)
    with torch.no_grad():
        for lin in disc.time_proj:
            lin.weight.normal_(0, 0.1)
            lin.bias.normal_(0, 0.1)
    return disc


@pytest.mark.parametrize("name", backends())
def test_tad_losses_and_gradients_match_the_reference_backend(name):
    model = make_model()
    # σ_min 2e-3 instead of the teacher's 1e-8: at σ_next = 1e-8 the reference (and triton) fp32 Heun update loses
    # ~2% to cancellation in (x − D)/σ_next while native keeps 4e-8 (against fp64), so outputs there compare the
    # ops' conditioning, not this stage
    model.config.teacher_sigma_min = 2e-3
    burst, y = batch(1)   # tiny: the triton backend runs under the interpreter on a CPU
    nz = noises(y, model=model)
    results = {}
    for b in ("reference", name):
        m = copy.deepcopy(model)
        disc = _perturbed_disc(m)
        with burstkern.backend(b):
            results[b] = _step(m, disc, burst, y, nz, w_sd=1.0, w_adv=0.1)
    ref, out = results["reference"], results[name]
    for k in ("x_T", "x_hat", "loss", "mse", "sd", "adv", "d"):
        assert rel_err(out[k], ref[k]) < 2e-5, k
    for k in ("g_grads", "d_grads"):
        assert rel_err(out[k], ref[k]) < 1e-4, k


def test_score_distillation_is_zero_at_the_teacher_sample_and_plain_sds_is_not():
    model = make_model()
    burst, y = batch()
    nz = noises(y, model=model)
    prep = methods.tad_prepare(model, burst, y, nz["tau"], target_steps=2)
    with torch.no_grad():
        x_hat = methods.tad_generator_loss(model, None, prep, nz, w_adv=0.0)["x_hat"]
    same = dict(prep, x_T=x_hat)  # a student that matches the teacher's sample exactly
    hf = methods.tad_generator_loss(model, None, same, nz, w_adv=0.0, score="hfsd")
    sds = methods.tad_generator_loss(model, None, same, nz, w_adv=0.0, score="sds")
    assert hf["mse"].item() == 0.0 and hf["sd"].item() < 1e-12
    assert sds["sd"].item() > 1e-6
    # elsewhere the surrogate's gradient w.r.t. x_hat is delta / (numel * sigma_tau^2) (no U-Net Jacobian)
    out = methods.tad_generator_loss(model, None, prep, nz, w_adv=0.0, w_sd=1.0)
    assert out["sd"].item() > 0


def test_cm_variant_is_the_teacher_target_distillation_loss():
    """w_sd = w_adv = 0 is E-BSRD's teacher-target student loss (burstkern.train.teacher_distill_loss)."""
    from burstkern.train import teacher_distill_loss

    model = make_model()
    burst, y = batch()
    nz = noises(y, model=model)
    prep = methods.tad_prepare(model, burst, y, nz["tau"], target_steps=2)
    ours = methods.tad_generator_loss(model, None, prep, nz, w_sd=0.0, w_adv=0.0)["loss"]
    with torch.no_grad():
        x_init, cond = model.initial(burst)
    theirs = teacher_distill_loss(model, x_init, cond, nz["tau"], 2)
    assert rel_err(ours.detach(), theirs.detach()) < 1e-6


def test_discriminator_modulates_per_channel_through_sft_modulate(monkeypatch):
    model = make_model()
    calls = []
    real = ops.sft_modulate

    def spy(x, gamma, beta=None, act=None):
        calls.append((tuple(x.shape), tuple(gamma.shape), act))
        return real(x, gamma, beta, act)

    monkeypatch.setattr(ops, "sft_modulate", spy)
    burst, y = batch()
    with torch.no_grad():
        cond = model.encoder(burst)
    x = y.clone().requires_grad_(True)
    for time_aware in (True, False):
        calls.clear()
        disc = _perturbed_disc(model, time_aware)
        logits = disc(x, torch.full((2,), 0.01), cond, noise=torch.randn_like(y))
        assert logits.shape == (2,)
        if time_aware:   # one per scale, per-channel [N, 2C, 1, 1] gamma|beta
            assert len(calls) == len(disc.scale_channels) == 2
            assert all(g == (s[0], 2 * s[1], 1, 1) for s, g, _ in calls)
        else:
            assert calls == []
        logits.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0        # reaches the image (the student)
        assert all(p.grad is None for m in (disc.down, disc.mid) for p in m.parameters())  # encoder frozen
        assert any(p.grad is not None for p in disc.trainable_parameters())
        x.grad = None
    # time injection changes the logits with sigma; the encoder features alone also depend on it
    disc = _perturbed_disc(model, True)
    nz = torch.randn_like(y)
    a = disc(y, torch.full((2,), 0.005), cond, noise=nz)
    b = disc(y, torch.full((2,), 0.02), cond, noise=nz)
    assert not torch.allclose(a, b)


def _prepared(model, n=2):
    burst, y = batch(n)
    nz = noises(y, model=model)
    return [methods.tad_prepare(model, burst, y, nz["tau"], target_steps=2)]


def test_train_tad_overfits_a_fixed_batch():
    model = make_model()
    prep = _prepared(model)
    hist = methods.train_tad(model, None, 25, lr=2e-3, lr_d=1e-3, seed=0, prepared=prep, progress=False,
                             init_from_teacher=False)
    mse = hist["mse"]
    assert len(mse) == 25 and len(hist["d"]) == 25
    assert sum(mse[-5:]) / 5 < 0.5 * sum(mse[:3]) / 3, mse
    # the one-step inference is E-BSRD's call
    burst, _ = batch()
    assert model.one_step(burst, generator=torch.Generator().manual_seed(0)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("variant", [dict(), dict(score="sds", time_aware=False, adv_loss="ns")])
def test_train_tad_is_deterministic_under_a_fixed_seed(variant):
    base = make_model()
    prep = _prepared(base)
    runs = []
    for seed in (3, 3, 4):
        m = copy.deepcopy(base)
        hist = methods.train_tad(m, None, 3, seed=seed, prepared=prep, progress=False, **variant)
        runs.append((hist, torch.cat([p.detach().flatten() for p in m.student.parameters()])))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0]["d"] != runs[2][0]["d"]


def test_train_tad_from_a_loader_initialises_from_the_teacher():
    model = make_model()
    burst, y = batch()
    loader = [{"burst": burst, "gt": (y + 1) / 2}]
    hist = methods.train_tad(model, loader, 1, seed=0, progress=False, target_steps=1)
    assert all(len(v) == 1 for v in hist.values())
    with pytest.raises(ValueError, match="score"):
        methods.train_tad(model, loader, 1, score="nope")
    with pytest.raises(ValueError, match="adv_loss"):
        methods.train_tad(model, loader, 1, adv_loss="nope")
