"""DP-IR (burstkern.models.DPIR + burstkern.methods DP-IR stages): the IR network is E-BSRD's x_init, only the
fusion network trains, the accelerated sampler's closed-form start and NFE, backend parity of losses and samples,
overfit on a fixed batch, determinism, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch

import burstkern
from burstkern import methods, ops
from burstkern.models import EBSRD, PRESETS
from burstkern.models.dpir import DPIR, dpir_sample
from burstkern.registry import backend_available
from utils import rel_err

OPS = ("deform_conv2d", "sft_group_norm", "add_noise", "edm_euler_update", "denoise_combine", "edm_loss")


def backends():
    out = []
    for name in ("native", "triton"):
        bad = [(op, why) for op in OPS for ok, why in [backend_available(name, "cpu", op)] if not ok]
        out.append(pytest.param(name, marks=() if not bad else
                                pytest.mark.skip(reason=f"{name}: {bad[0][0]}: {bad[0][1]}")))
    return out


def perturb(module, seed=0, scale=0.05):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, scale)
    return module


def make_ebsrd(seed=0):
    return perturb(EBSRD("tiny").eval(), seed)


def make_dpir(seed=0):
    dpir = DPIR.from_ebsrd(make_ebsrd(seed)).eval()
    perturb(dpir.denoiser, seed + 1)
    perturb(dpir.fusion, seed + 2, 0.02)
    return dpir


def batch(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, PRESETS["tiny"].burst_size, 4, 8, 8, generator=g),
            torch.rand(n, 3, 64, 64, generator=g) * 2 - 1)


def test_ir_network_is_the_ebsrd_initial_estimate_and_frozen():
    model = make_ebsrd()
    dpir = DPIR.from_ebsrd(model)
    burst, _ = batch()
    with torch.no_grad():
        assert torch.equal(dpir.ir(burst), model.initial(burst)[0])
    assert not any(p.requires_grad for p in dpir.ir.parameters())
    counts = dpir.parameter_counts()
    assert counts["fusion"] < counts["denoiser"] / 10 and counts["fusion"] < counts["ir"] / 5


def test_denoiser_is_unconditional():
    dpir = make_dpir()
    x = torch.randn(2, 3, 64, 64)
    f = dpir.denoiser_F(x, torch.tensor([0.01, 0.5]))
    assert f.shape == x.shape
    # no burst anywhere in its signature: it sees only the noisy image and sigma
    assert rel_err(f[:1], dpir.denoiser_F(x[:1], torch.tensor([0.01]))) < 1e-5


def test_one_nfe_is_the_fused_estimate_at_the_closed_form_start():
    dpir = make_dpir()
    burst, _ = batch()
    eps = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x_ir = dpir.ir(burst)
        out = dpir_sample(lambda x, s: dpir.fused_F(x, s, x_ir), x_ir, nfe=1, sigma_start=dpir.sigma_tau,
                          noise=eps)
        s = torch.tensor(dpir.sigma_tau)
        x_tau = x_ir + dpir.sigma_tau * eps
        want = ops.denoise_combine(x_tau, dpir.fused_F(x_tau, s, x_ir), s, dpir.sigma_data)
    assert rel_err(out, want) < 1e-6


@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_sampler_makes_nfe_fused_evaluations_through_the_denoise_ops(monkeypatch, nfe):
    dpir = make_dpir()
    burst, _ = batch(1)
    calls = {"euler": 0, "fusion": 0, "noise": 0}
    real_euler, real_noise, real_fusion = ops.edm_euler_update, ops.add_noise, dpir.fusion.forward

    def euler(*a, **k):
        calls["euler"] += 1
        return real_euler(*a, **k)

    def noise(*a, **k):
        calls["noise"] += 1
        return real_noise(*a, **k)

    def fusion(*a, **k):
        calls["fusion"] += 1
        return real_fusion(*a, **k)

    monkeypatch.setattr(ops, "edm_euler_update", euler)
    monkeypatch.setattr(ops, "add_noise", noise)
    monkeypatch.setattr(dpir.fusion, "forward", fusion)
    for start in ("tau", "noise"):
        calls.update(euler=0, fusion=0, noise=0)
        out = dpir.sample(burst, nfe=nfe, start=start, generator=torch.Generator().manual_seed(0))
        assert out.shape == (1, 3, 64, 64) and out.abs().max() <= 1
        assert calls == {"euler": nfe, "fusion": nfe, "noise": 1}
    with pytest.raises(ValueError, match="nfe"):
        dpir.sample(burst, nfe=0)
    with pytest.raises(ValueError, match="start"):
        dpir.sample(burst, start="middle")


def _losses_and_sample(dpir, burst, y):
    g = torch.Generator().manual_seed(4)
    sigma = methods.dpir_sigmas(y.shape[0], g, "cpu", 0.002, dpir.sigma_tau)
    noise = torch.randn(y.shape, generator=g)
    dpir.fusion.zero_grad(set_to_none=True)
    fl = methods.dpir_fusion_loss(dpir, burst, y, sigma, noise)
    fl.backward()
    fg = torch.cat([p.grad.flatten() for p in dpir.fusion.parameters()])
    dl = methods.dpir_denoiser_loss(dpir, y, sigma, noise)
    with torch.no_grad():
        x_ir = dpir.ir(burst)
        s = {f"s{k}": dpir_sample(lambda x, sg: dpir.fused_F(x, sg, x_ir), x_ir, nfe=k, sigma_start=dpir.sigma_tau,
                                  noise=noise) for k in (1, 4)}
    return dict(s, fusion=fl.detach(), fusion_grads=fg, denoiser=dl.detach())


@pytest.mark.parametrize("name", backends())
def test_losses_gradients_and_samples_match_the_reference_backend(name):
    dpir = make_dpir()
    burst, y = batch(1)   # tiny: the triton backend runs under the interpreter on a CPU
    res = {}
    for b in ("reference", name):
        d = copy.deepcopy(dpir)
        d.fusion.requires_grad_(True)
        with burstkern.backend(b):
            res[b] = _losses_and_sample(d, burst, y)
    for k in ("s1", "s4", "fusion", "denoiser"):
        assert rel_err(res[name][k], res["reference"][k]) < 2e-5, k
    assert rel_err(res[name]["fusion_grads"], res["reference"]["fusion_grads"]) < 1e-4


def _fixed_eval(dpir, burst, y, which):
    """The stage's loss at a fixed (sigma, noise) draw, to compare before and after training."""
    g = torch.Generator().manual_seed(11)
    sigma = methods.dpir_sigmas(y.shape[0], g, "cpu", 0.002, dpir.sigma_tau, p_low=1.0)
    if which == "denoiser":  # (at tiny sigma its loss is noise prediction, not learnt in a few steps)
        sigma = torch.full_like(sigma, 0.5)
    noise = torch.randn(y.shape, generator=g)
    with torch.no_grad():
        if which == "fusion":
            return methods.dpir_fusion_loss(dpir, burst, y, sigma, noise).item()
        return methods.dpir_denoiser_loss(dpir, y, sigma, noise).item()


@pytest.mark.parametrize("which", ["fusion", "denoiser"])
def test_each_stage_trains_only_its_network_and_overfits_a_fixed_batch(which):
    dpir = make_dpir()
    burst, _ = batch()
    y = torch.nn.functional.interpolate(batch(seed=7)[1][:, :, ::8, ::8], size=(64, 64), mode="bilinear")  # smooth
    before = {k: v.clone() for k, v in dpir.state_dict().items()}
    loader = [{"burst": burst, "gt": (y + 1) / 2}]
    first = _fixed_eval(dpir, burst, y, which)
    train = methods.train_dpir_fusion if which == "fusion" else methods.train_dpir_denoiser
    hist = train(dpir, loader, 30, lr=3e-3, p_low=1.0 if which == "fusion" else 0.0, seed=0, progress=False)
    assert len(hist) == 30
    last = _fixed_eval(dpir, burst, y, which)
    assert last < 0.7 * first, (first, last)
    after = dpir.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {which}


def test_stages_and_sampler_are_deterministic_under_a_fixed_seed():
    base = make_dpir()
    burst, y = batch()
    loader = [{"burst": burst, "gt": (y + 1) / 2}]
    runs = []
    for seed in (5, 5, 6):
        d = copy.deepcopy(base)
        h1 = methods.train_dpir_denoiser(d, loader, 2, seed=seed, progress=False)
        h2 = methods.train_dpir_fusion(d, loader, 2, seed=seed, progress=False)
        out = d.sample(burst, nfe=2, generator=torch.Generator().manual_seed(seed))
        runs.append((h1, h2, out))
    assert runs[0][:2] == runs[1][:2] and torch.equal(runs[0][2], runs[1][2])
    assert runs[0][:2] != runs[2][:2] and not torch.equal(runs[0][2], runs[2][2])


def test_checkpoint_round_trip(tmp_path):
    dpir = make_dpir()
    burst, _ = batch(1)
    path = tmp_path / "dpir.pt"
    dpir.save(path)
    back = DPIR.load(path).eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(dpir.sample(burst, nfe=2, generator=g()), back.sample(burst, nfe=2, generator=g()))
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        DPIR.load(tmp_path / "bad.pt")
