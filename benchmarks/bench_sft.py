"""SFT feature-modulation benchmarks: GPU cases (timing by benchmarks/harness.py) and CPU cases (cpu_cases.py).

Three uses, at U-Net levels of a 384² and a 256² image (N = 1, 4, 16; C = 64 ... 256), fp32 and bf16, forward
and forward + backward:

* ``spade``       -- ``sft_group_norm(x, gamma|beta, act="silu")``, spatial merged ``[N, 2C, H, W]`` gamma|beta, no
                     affine (BSRD / E-BSRD's SPADE GroupNorm32 + SiLU): the main sweep, with the issue's two bar
                     shapes (N4 C128 192² bf16 and N1 C64 384² fp32: >= 60% of copy bandwidth),
* ``scale_shift`` -- ``sft_group_norm(x, scale|shift, act="silu")``, per-channel merged ``[N, 2C, 1, 1]``, affine
                     (the diffusion ResBlock's time-embedding scale-shift norm + SiLU),
* ``sft``         -- ``sft_modulate(x, gamma, beta)``, spatial gamma and beta (SFTGAN's SFT layer).

The grid is a chosen list of (use, shape, dtype) cases (28 x 4 providers = 112 benchmarks), not a full product.

Providers: ``triton`` / ``cuda`` (burstkern's kernels; ``cuda`` only when the extension registered one),
``eager`` (the reference composition in plain PyTorch, computed in fp32 as the reference does) and ``compile``
(torch.compile of that composition). Bytes: every input read once and every output written once (forward:
x, gamma, beta -> out; backward adds dy, x, gamma, beta -> dx, dgamma, dbeta).

    pytest benchmarks/bench_sft.py --benchmark-only --benchmark-json=sft.json

CPU cases (``test_sft_cpu``; on machines without a GPU, or with BURSTKERN_BENCH_CPU=1): sft_group_norm + SiLU
at N2 C128 96² (issue 11), forward and forward + backward, fp32 and bf16, 1 thread and all cores: eager
composition, torch.compile of it, burstkern native / reference, and a copy of the same bytes (the floor).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import cpu_cases as C
from cpu_harness import cpu_cases_enabled, measure_cpu, thread_counts
from harness import forward_backward, measure, requires_gpu, with_backend

from burstkern.registry import backend_available
from burstkern.ops import sft_group_norm, sft_modulate
from burstkern.ops.sft import reference as R


cpu_case = pytest.mark.skipif(not cpu_cases_enabled(), reason="CPU cases run on machines without a GPU "
                              "(BURSTKERN_BENCH_CPU=1 runs them anyway)")

# (use, (N, C, H = W), dtype): U-Net levels of a 384² image (64 channels at full size, 128 at 1/2, 256 below) and
# of a 256² image; every case runs fwd and fwd+bwd
FP32, BF16 = torch.float32, torch.bfloat16
SPADE_SHAPES = [(1, 64, 384), (4, 128, 192), (16, 256, 48), (4, 64, 256), (4, 128, 128)]
CASES = ([("spade", s, d) for s in SPADE_SHAPES for d in (FP32, BF16)]
         + [("scale_shift", s, BF16) for s in [(4, 128, 192), (16, 256, 48)]]
         + [("sft", (4, 128, 192), BF16), ("sft", (1, 64, 384), FP32)])
PROVIDERS = ["triton", "cuda", "eager", "compile"]
MODES = ["fwd", "fwd+bwd"]
GROUPS = 32


# ----------------------------------------------------------------------------------------------
# the three uses: (fused call, eager reference composition), both fn(x, gamma, beta, weight, bias)
# ----------------------------------------------------------------------------------------------
def _fused(use):
    if use == "sft":
        return lambda x, g, b, w, bias: sft_modulate(x, g, b)
    if use == "spade":
        return lambda x, g, b, w, bias: sft_group_norm(x, g, None, GROUPS, act="silu")
    return lambda x, g, b, w, bias: sft_group_norm(x, g, None, GROUPS, w, bias, act="silu")


def _eager(use):
    """reference.py's math without its statistics side outputs: what the op computes, in plain PyTorch."""
    if use == "sft":
        return lambda x, g, b, w, bias: R.sft_modulate(x, g, b, R.ACT_NONE, 0.0)
    act = R.ACT_SILU

    def gn(x, g, b, w, bias):
        up = lambda t: None if t is None else t.float()  # noqa: E731
        h = F.group_norm(x.float(), GROUPS, up(w), up(bias), 1e-5)
        return R.modulate(h, g.float(), None, act, 0.0).to(x.dtype)

    return gn


@functools.lru_cache(maxsize=None)
def _compiled(use):
    return torch.compile(_eager(use))


def _make_args(use, shape, dtype):
    n, c, hw = shape

    def make():
        x = torch.randn(n, c, hw, hw, device="cuda", dtype=dtype)
        if use == "sft":
            g = torch.randn(n, c, hw, hw, device="cuda", dtype=dtype) * 0.5
            return x, g, torch.randn(n, c, hw, hw, device="cuda", dtype=dtype), None, None
        spatial = use == "spade"
        g = torch.randn(n, 2 * c, hw if spatial else 1, hw if spatial else 1, device="cuda", dtype=dtype) * 0.5
        if spatial:
            return x, g, None, None, None
        return x, g, None, torch.rand(c, device="cuda", dtype=dtype) + 0.5, torch.randn(c, device="cuda", dtype=dtype)

    return make


def _nbytes(use, shape, dtype, mode):
    n, c, hw = shape
    es = torch.empty((), dtype=dtype).element_size()
    x = n * c * hw * hw
    mod = 2 * x if use in ("sft", "spade") else 2 * n * c  # gamma + beta
    fwd = (x + mod + x) * es
    return fwd if mode == "fwd" else fwd + (2 * x + mod + x + mod) * es


def _provider_fn(use, provider, mode, args_have_beta):
    if provider in ("triton", "cuda"):
        ok, why = backend_available(provider, "cuda", "sft_group_norm" if use != "sft" else "sft_modulate")
        if not ok:
            pytest.skip(why)
        fn = with_backend(provider, _fused(use))
    elif provider == "compile":
        fn = _compiled(use)
    else:
        fn = _eager(use)
    if mode == "fwd":
        return fn
    grad_args = (0, 1, 2) if args_have_beta else (0, 1)
    if use == "scale_shift":
        grad_args = (0, 1, 3, 4)
    return forward_backward(fn, grad_args)


def _case_id(case):
    use, (n, c, hw), dtype = case
    return f"{use}-N{n}C{c}_{hw}-{'fp32' if dtype == FP32 else 'bf16'}"


@requires_gpu
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_sft(benchmark, case, mode, provider):
    use, shape, dtype = case
    fn = _provider_fn(use, provider, mode, args_have_beta=use == "sft")
    n, c, hw = shape
    measure(benchmark, fn, _make_args(use, shape, dtype),
            group=f"{use} {mode} N{n} C{c} {hw}x{hw} {str(dtype).replace('torch.', '')}", provider=provider,
            nbytes=_nbytes(use, shape, dtype, mode))


# ----------------------------------------------------------------------------------------------
# CPU
# ----------------------------------------------------------------------------------------------
@cpu_case
@pytest.mark.parametrize("threads", thread_counts(), ids=lambda t: f"{t}t")
@pytest.mark.parametrize("provider", C.SFT_PROVIDERS)
@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", C.SFT_SHAPES, ids=lambda s: f"N{s[0]}C{s[1]}_{s[2]}")
def test_sft_cpu(benchmark, shape, mode, dtype, provider, threads):
    measure_cpu(benchmark, C.sft_group(shape, mode == "fwd+bwd"), provider, dtype, threads)
