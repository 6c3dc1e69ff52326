"""Samplers on the denoise ops, checked where the answer is known in closed form: Gaussian data
y ~ N(mu, s²) per element, whose ideal EDM denoiser is D(x; σ) = (s²·x + σ²·mu)/(s² + σ²) and whose probability
flow ODE is x(σ) = mu + (x(σ') − mu)·√(s² + σ²)/√(s² + σ'²). The raw network output F a perfectly trained
network would return is derived from D (or from the ideal consistency function) and the scalings.
"""

from __future__ import annotations

import math

import pytest
import torch

import burstkern
from burstkern.registry import backend_available
from burstkern.models.samplers import consistency_sample, edm_heun_sampler
from burstkern.ops.denoise import rng

from utils import assert_rel_close, requires_cuda

MU, S = 0.3, 0.6   # data mean and standard deviation
SD = 0.5           # sigma_data of the preconditioning (deliberately != S)
SMIN_CM = 0.002

triton_ok, triton_why = backend_available("triton", "cpu", "edm_euler_update")
needs_triton = pytest.mark.skipif(not triton_ok, reason=triton_why)


def _sigma_x(x_in, c_noise):
    sigma = torch.exp(4 * c_noise.double()).view(-1, *([1] * (x_in.dim() - 1)))
    x = x_in.double() * torch.sqrt(sigma ** 2 + SD ** 2)  # undo c_in
    return sigma, x


def ideal_edm_F(x_in, c_noise):
    """The raw output F with c_skip·x + c_out·F = D_ideal(x; σ) (EDM scalings)."""
    sigma, x = _sigma_x(x_in, c_noise)
    D = (S ** 2 * x + sigma ** 2 * MU) / (S ** 2 + sigma ** 2)
    c_skip = SD ** 2 / (sigma ** 2 + SD ** 2)
    c_out = sigma * SD / torch.sqrt(sigma ** 2 + SD ** 2)
    return ((D - c_skip * x) / c_out).to(x_in.dtype)


def ode_map(x, s_from, s_to):
    """Exact probability-flow ODE transport of Gaussian data from noise level s_from to s_to."""
    return MU + (x - MU) * math.sqrt(S ** 2 + s_to ** 2) / math.sqrt(S ** 2 + s_from ** 2)


def ideal_cm_F(x_in, c_noise):
    """The raw output F with c_skip^cm·x + c_out^cm·F = f_ideal(x, σ) = ODE endpoint at σ_min."""
    sigma, x = _sigma_x(x_in, c_noise)
    f = MU + (x - MU) * math.sqrt(S ** 2 + SMIN_CM ** 2) / torch.sqrt(S ** 2 + sigma ** 2)
    c_skip = SD ** 2 / ((sigma - SMIN_CM) ** 2 + SD ** 2)
    c_out = (sigma - SMIN_CM) * SD / torch.sqrt(sigma ** 2 + SD ** 2)
    return ((f - c_skip * x) / c_out).to(x_in.dtype)


def _check_gaussian(x, what, bias=0.0):
    """Sample mean / variance of ``x`` within 5 standard errors (+ ``bias``·s² of known discretisation bias)."""
    x = x.double().flatten()
    n = x.numel()
    assert torch.isfinite(x).all(), what
    assert abs(x.mean().item() - MU) < 5 * S / math.sqrt(n), f"{what}: mean {x.mean().item():.4f} != {MU}"
    assert abs(x.var().item() - S ** 2) < 5 * S ** 2 * math.sqrt(2 / n) + bias * S ** 2, \
        f"{what}: variance {x.var().item():.4f} != {S ** 2}"


def test_heun_from_noise_reproduces_gaussian_data():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 1, 32, 32, generator=g)  # 65536 samples
    with burstkern.backend("reference"):
        out = edm_heun_sampler(ideal_edm_F, noise, num_steps=40, sigma_min=0.002, sigma_max=80.0, sigma_data=SD)
    # 40 deterministic Heun steps from σ = 80 leave a variance bias of about 2.5% for this data (it shrinks 4x
    # per doubling of the steps, see the next test); allow 3%
    _check_gaussian(out, "heun 40 steps", bias=0.03)


def test_heun_is_second_order():
    """Pathwise error against the exact ODE solution falls ~4x when the steps double (Euler alone: ~2x)."""
    noise = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = ode_map(noise * 80.0, 80.0, 0.0)
    errs = []
    with burstkern.backend("reference"):
        for steps in (20, 40):
            out = edm_heun_sampler(ideal_edm_F, noise, num_steps=steps, sigma_max=80.0, sigma_data=SD)
            errs.append(((out - exact).norm() / exact.norm()).item())
    assert errs[1] < 1e-2 and 3.0 < errs[0] / errs[1] < 6.0, f"errors {errs}"


def test_heun_with_churn_reproduces_gaussian_data():
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(64, 1, 32, 32, generator=g)
    with burstkern.backend("reference"):
        out = edm_heun_sampler(ideal_edm_F, noise, num_steps=80, sigma_min=0.002, sigma_max=80.0, S_churn=40.0,
                               S_min=0.05, S_max=50.0, S_noise=1.0, generator=g, sigma_data=SD)
    # churn converges at first order: about 3.5% variance bias at 80 steps (1% at 160)
    _check_gaussian(out, "heun churn", bias=0.05)


def algorithm2(F, noise, num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise, gen, clamp=None,
               seen=None):
    """EDM Algorithm 2 transcribed in fp64 (noise ε_i: the rng.py normals of the generator's successive seeds).
    ``clamp``: E-BSRD's variant, every denoised estimate and the result clamped to [-clamp, clamp]; ``seen``: a
    list that collects every denoised estimate before the clamp."""
    t = [(sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
         for i in range(num_steps)] + [0.0]

    def D(x, s):
        c_in = 1 / math.sqrt(s ** 2 + SD ** 2)
        f = F(x * c_in, torch.full((x.shape[0],), math.log(s) / 4, dtype=torch.float64)).double()
        out = SD ** 2 / (s ** 2 + SD ** 2) * x + s * SD / math.sqrt(s ** 2 + SD ** 2) * f
        if seen is not None:
            seen.append(out)
        return out if clamp is None else out.clamp(-clamp, clamp)

    x = noise.double() * t[0]
    for i in range(num_steps):
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t[i] <= S_max else 0.0
        t_hat = t[i] + gamma * t[i]
        x_hat = x
        if gamma > 0:
            eps = rng.randn(rng.draw_seed(torch.device("cpu"), gen), x.shape).double()
            x_hat = x + math.sqrt(t_hat ** 2 - t[i] ** 2) * S_noise * eps
        d = (x_hat - D(x_hat, t_hat)) / t_hat
        x = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d2 = (x - D(x, t[i + 1])) / t[i + 1]
            x = x_hat + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d2)
    return x if clamp is None else x.clamp(-clamp, clamp)


def test_heun_matches_algorithm2():
    noise = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    net = lambda x_in, c: torch.tanh(x_in) * 0.7 + 0.1 * c.view(-1, 1, 1, 1)  # noqa: E731  (any network)
    kw = dict(num_steps=12, sigma_min=0.002, sigma_max=20.0, rho=7.0, S_churn=8.0, S_min=0.05, S_max=5.0,
              S_noise=1.003)
    with burstkern.backend("reference"):
        out = edm_heun_sampler(net, noise, generator=torch.Generator().manual_seed(4), sigma_data=SD, **kw)
    want = algorithm2(net, noise, gen=torch.Generator().manual_seed(4), **kw)
    # the device schedule is float32 (karras_schedule), the transcription's fp64
    assert_rel_close(out, want, torch.float32, "Algorithm 2")


HEUN_KW = dict(num_steps=12, sigma_min=0.002, sigma_max=20.0, rho=7.0, S_churn=8.0, S_min=0.05, S_max=5.0,
               S_noise=1.003)


def _wild_net(x_in, c):
    """A network whose denoised estimates leave [-1, 1] (|D| up to ~1.5 at large σ, x itself beyond 1 late)."""
    return torch.tanh(x_in) * 3.0 + 0.1 * c.view(-1, 1, 1, 1)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_heun_clamp_is_e_bsrd_sampler(backend):
    """clamp=True: every denoised estimate and the result clamped to [-1, 1] (E-BSRD's Heun sampler), checked
    against the fp64 transcription of Algorithm 2 with the same clamps, with a network whose D leaves [-1, 1]."""
    noise = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(3))
    with burstkern.backend(backend):
        out = edm_heun_sampler(_wild_net, noise, generator=torch.Generator().manual_seed(4), sigma_data=SD,
                               clamp=True, **HEUN_KW)
        same = edm_heun_sampler(_wild_net, noise, generator=torch.Generator().manual_seed(4), sigma_data=SD,
                                clamp=1.0, **HEUN_KW)
    seen = []
    want = algorithm2(_wild_net, noise, gen=torch.Generator().manual_seed(4), clamp=1.0, seen=seen, **HEUN_KW)
    unclamped = algorithm2(_wild_net, noise, gen=torch.Generator().manual_seed(4), **HEUN_KW)
    assert max(d.abs().max().item() for d in seen) > 1.2, "the test network must leave [-1, 1]"
    assert (unclamped - want).abs().max().item() > 0.1, "clamping must matter for this network"
    assert torch.equal(out, same)
    assert out.abs().max().item() <= 1.0
    assert_rel_close(out, want, torch.float32, "clamped Heun vs clamped Algorithm 2")


@pytest.mark.parametrize("start", ["noise", "early"])
def test_heun_clamp_off_is_the_edm_sampler(start):
    """The default (clamp=None) is EDM's unclamped sampler, bit for bit the same as clamp=False and as the
    sampler before the option existed (the fused Euler/Heun ops; the transcription of Algorithm 2 without
    clamps): its output may leave [-1, 1]."""
    noise = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(3))
    outs = []
    for kw in ({}, {"clamp": None}, {"clamp": False}):
        with burstkern.backend("reference"):
            outs.append(edm_heun_sampler(_wild_net, noise, generator=torch.Generator().manual_seed(4),
                                         sigma_data=SD, start=start, **HEUN_KW, **kw))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    if start == "noise":
        want = algorithm2(_wild_net, noise, gen=torch.Generator().manual_seed(4), **HEUN_KW)
        assert_rel_close(outs[0], want, torch.float32, "unclamped Heun vs Algorithm 2")
        assert outs[0].abs().max().item() > 1.0
    with pytest.raises(ValueError, match="clamp must be None, a bool or a finite float > 0"):
        edm_heun_sampler(_wild_net, noise, clamp=-1.0, **HEUN_KW)


def test_heun_early_start():
    g = torch.Generator().manual_seed(1)
    x_init = MU + S * torch.randn(16, 1, 32, 32, generator=g)  # data samples: x_τ is the σ=0.03 marginal
    with burstkern.backend("reference"):
        out = edm_heun_sampler(ideal_edm_F, x_init, num_steps=18, sigma_min=1e-6, sigma_max=0.03, start="early",
                               generator=torch.Generator().manual_seed(7), sigma_data=SD)
    seed = rng.draw_seed(torch.device("cpu"), torch.Generator().manual_seed(7))
    x_tau = x_init.double() + 0.03 * rng.randn(seed, x_init.shape).double()
    assert_rel_close(out, ode_map(x_tau, 0.03, 0.0), torch.float32, "early start vs exact ODE", scale=20)
    _check_gaussian(out, "early start")


def test_consistency_one_step_equals_target():
    g = torch.Generator().manual_seed(2)
    x_init = MU + S * torch.randn(8, 3, 16, 16, generator=g)
    x_init[0, 0, 0, :4] = torch.tensor([3.0, -3.0, 1.0, -1.0])  # some outputs land beyond the clamp
    with burstkern.backend("reference"):
        out = consistency_sample(ideal_cm_F, x_init, generator=torch.Generator().manual_seed(3), sigma_data=SD)
    seed = rng.draw_seed(torch.device("cpu"), torch.Generator().manual_seed(3))
    x = x_init.double() + 0.03 * rng.randn(seed, x_init.shape).double()
    target = ode_map(x, 0.03, SMIN_CM).clamp(-1, 1)
    assert (target.abs() == 1).any()
    assert_rel_close(out, target, torch.float32, "one-step consistency", scale=5)


def test_consistency_multistep_equals_target():
    g = torch.Generator().manual_seed(4)
    x_init = MU + S * torch.randn(4, 3, 16, 16, generator=g)
    sigmas = (0.5, 0.08, 0.03)
    with burstkern.backend("reference"):
        out = consistency_sample(ideal_cm_F, x_init, sigmas=sigmas, clamp=None,
                                 generator=torch.Generator().manual_seed(5), sigma_data=SD)
    gen = torch.Generator().manual_seed(5)
    seeds = [rng.draw_seed(torch.device("cpu"), gen) for _ in sigmas]
    x = x_init.double() + sigmas[0] * rng.randn(seeds[0], x_init.shape).double()
    for i, s in enumerate(sigmas):
        x0 = ode_map(x, s, SMIN_CM)
        if i + 1 < len(sigmas):
            x = x0 + math.sqrt(sigmas[i + 1] ** 2 - SMIN_CM ** 2) * rng.randn(seeds[i + 1], x_init.shape).double()
    assert_rel_close(out, x0, torch.float32, "multistep consistency", scale=5)


@needs_triton
def test_samplers_same_under_reference_and_triton():
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(2, 3, 9, 7, generator=g)
    outs = {}
    for be in ("reference", "triton"):
        with burstkern.backend(be):
            heun = edm_heun_sampler(ideal_edm_F, noise, num_steps=6, sigma_max=10.0, S_churn=5.0, S_min=0.01,
                                    S_max=5.0, S_noise=1.003, generator=torch.Generator().manual_seed(8),
                                    sigma_data=SD)
            early = edm_heun_sampler(ideal_edm_F, noise, num_steps=4, sigma_max=0.03, start="early",
                                     generator=torch.Generator().manual_seed(9), sigma_data=SD)
            cm = consistency_sample(ideal_cm_F, noise, sigmas=(0.3, 0.03), generator=torch.Generator().manual_seed(10),
                                    sigma_data=SD)
            outs[be] = (heun, early, cm)
    for name, a, b in zip(("heun", "early", "consistency"), outs["triton"], outs["reference"]):
        assert_rel_close(a, b, torch.float32, f"{name}: triton vs reference", scale=5)


def test_sampler_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="start must be 'noise', 'early' or 'noised'"):
        edm_heun_sampler(ideal_edm_F, x, start="late")
    with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
        edm_heun_sampler(ideal_edm_F, x, num_steps=0)
    with pytest.raises(TypeError, match="x_init_or_noise must be a floating-point tensor"):
        edm_heun_sampler(ideal_edm_F, [1.0])
    with pytest.raises(ValueError, match=r"sigmas must be a non-empty sequence.*> sigma_min"):
        consistency_sample(ideal_cm_F, x, sigmas=(0.001,))
    with pytest.raises(ValueError, match=r"sigmas must be a non-empty sequence"):
        consistency_sample(ideal_cm_F, x, sigmas=())
    with pytest.raises(ValueError, match=r"denoiser must return a tensor shaped like its input \(2, 3, 4, 4\)"):
        consistency_sample(lambda a, c: a[:1], x)


@requires_cuda
def test_cuda_graph_capture_replays_sampler():
    noise = torch.randn(2, 3, 64, 64, device="cuda")
    x_init = torch.randn(2, 3, 64, 64, device="cuda")

    def run_det():
        return edm_heun_sampler(ideal_edm_F, noise, num_steps=8, sigma_max=10.0, sigma_data=SD)

    def run_noisy():
        return consistency_sample(ideal_cm_F, x_init, sigmas=(0.3, 0.03), sigma_data=SD)

    with burstkern.backend("triton"):
        for fn in (run_det, run_noisy):  # warm up (Triton compiles) outside the capture
            fn()
        torch.cuda.synchronize()
        eager = run_det()
        graphs, outs = [], []
        for fn in (run_det, run_noisy):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs.append(fn())
            graphs.append(graph)
        graphs[0].replay()
        assert_rel_close(outs[0], eager, torch.float32, "graph replay vs eager")
        graphs[1].replay()
        a = outs[1].clone()
        graphs[1].replay()
        assert torch.isfinite(a).all() and not torch.equal(a, outs[1]), "replays must draw fresh noise"
