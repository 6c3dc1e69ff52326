"""Denoise-update benchmarks: GPU cases (timing by benchmarks/harness.py) and CPU cases (cpu_cases.py).

Each fused op against the eager reference composition (plain torch, one kernel per elementwise op) and against
torch.compile of that composition, at image shapes of the E-BSRD pipeline, fp32 and bf16. For the ops that
draw noise the peers draw it with ``torch.randn_like`` (their natural way; inductor fuses its own Philox), and
the fused op draws it in-kernel. Then a 40-step EDM Heun loop with a trivial denoiser, so the op costs
dominate: eager reference vs fused vs fused replayed from a CUDA graph (launch overhead gone).

    pytest benchmarks/bench_denoise.py --benchmark-only --benchmark-json=denoise.json

CPU cases (``test_denoise_cpu``; on machines without a GPU, or with BURSTKERN_BENCH_CPU=1): edm_heun_update at
16x3x192² (issue 11), fp32 and bf16, 1 thread and all cores: eager composition, torch.compile of it, burstkern
native / reference, and a copy of the same bytes (the memcpy floor; GB/s in extra_info).
"""

from __future__ import annotations

import functools

import pytest
import torch

import cpu_cases as C
from cpu_harness import cpu_cases_enabled, measure_cpu, thread_counts
from harness import measure, requires_gpu, with_backend
from burstkern.registry import backend_available

import burstkern
from burstkern import ops
from burstkern.models.samplers import edm_heun_sampler
from burstkern.ops.denoise import reference as R


cpu_case = pytest.mark.skipif(not cpu_cases_enabled(), reason="CPU cases run on machines without a GPU "
                              "(BURSTKERN_BENCH_CPU=1 runs them anyway)")

SHAPES = [(1, 3, 384, 384), (16, 3, 384, 384), (4, 3, 1024, 1024), (16, 4, 128, 128)]
DTYPES = [torch.float32, torch.bfloat16]
PROVIDERS = ["reference", "compile", "triton", "cuda"]
SD, SMIN = 0.5, 0.002


# ----------------------------------------------------------------------------------------------
# peers: the eager composition (reference.py; torch.randn_like for noise) and torch.compile of it
# ----------------------------------------------------------------------------------------------
def _combine(x, F, s):
    return R.denoise_combine(x, F, s, SD, SMIN, "edm", True)


def _euler(x, F, s, sn):
    return R.edm_euler_update(x, F, s, sn, SD)


def _heun(xh, d, xn, Fn, sh, sn):
    return R.edm_heun_update(xh, d, xn, Fn, sh, sn, SD)


def _add_noise(x, s, sb):
    return R.add_noise(x, s, sb, 1.0, torch.randn_like(x), None)


def _cm(x, F, s, sn):
    return R.cm_update(x, F, s, SMIN, SD, sn, 1.0, torch.randn_like(x), None)


def _loss(x, F, y, s):
    return R.edm_loss(x, F, y, s, SD)


# fused: the public ops (in-kernel noise for add_noise / cm_update)
FUSED = {
    "denoise_combine": lambda x, F, s: ops.denoise_combine(x, F, s, return_d=True),
    "edm_euler_update": lambda x, F, s, sn: ops.edm_euler_update(x, F, s, sn),
    "edm_heun_update": lambda xh, d, xn, Fn, sh, sn: ops.edm_heun_update(xh, d, xn, Fn, sh, sn),
    "add_noise": lambda x, s, sb: ops.add_noise(x, s, sigma_base=sb),
    "cm_update": lambda x, F, s, sn: ops.cm_update(x, F, s, sigma_next=sn, clamp=1.0),
    "edm_loss": lambda x, F, y, s: ops.edm_loss(x, F, y, s),
}
EAGER = {"denoise_combine": _combine, "edm_euler_update": _euler, "edm_heun_update": _heun,
         "add_noise": _add_noise, "cm_update": _cm, "edm_loss": _loss}
# (image tensors read, image tensors written, number of image tensor arguments, number of σ arguments)
TRAFFIC = {"denoise_combine": (2, 2, 2, 1), "edm_euler_update": (2, 2, 2, 2), "edm_heun_update": (4, 1, 4, 2),
           "add_noise": (1, 1, 1, 2), "cm_update": (2, 1, 2, 2), "edm_loss": (3, 0, 3, 1)}


@functools.lru_cache(maxsize=None)
def _compiled(name):
    return torch.compile(EAGER[name])


def _skip_unavailable(backend_name, op):
    ok, why = backend_available(backend_name, "cuda", op)
    if not ok:
        pytest.skip(why)


def _provider_fn(name, provider):
    if provider in ("triton", "cuda"):
        _skip_unavailable(provider, name)
        return with_backend(provider, FUSED[name])
    if provider == "compile":
        return _compiled(name)
    return EAGER[name]


def _make_args(name, shape, dtype):
    _, _, n_img, n_sig = TRAFFIC[name]

    def make():
        imgs = [torch.randn(shape, device="cuda", dtype=dtype) for _ in range(n_img)]
        sig = [torch.exp(torch.empty(shape[0], device="cuda").uniform_(-5.0, 4.0)) for _ in range(n_sig)]
        return (*imgs, *sig)

    return make


@requires_gpu
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(FUSED))
def test_denoise_op(benchmark, name, shape, dtype, provider):
    reads, writes, _, _ = TRAFFIC[name]
    numel = 1
    for s in shape:
        numel *= s
    nbytes = (reads + writes) * numel * torch.empty((), dtype=dtype).element_size()
    measure(benchmark, _provider_fn(name, provider), _make_args(name, shape, dtype),
            group=f"{name} {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}", provider=provider,
            nbytes=nbytes)


# ----------------------------------------------------------------------------------------------
# a 40-step Heun loop (E-BSRD teacher settings) with a trivial denoiser
# ----------------------------------------------------------------------------------------------
def _trivial_denoiser(x_in, c_noise):
    return x_in * 0.5


def _heun_loop(x_init):
    return edm_heun_sampler(_trivial_denoiser, x_init, num_steps=40, sigma_min=1e-8, sigma_max=0.03, start="early")


@requires_gpu
@pytest.mark.parametrize("provider", ["reference", "triton", "cuda", "triton+cudagraph", "cuda+cudagraph"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 3, 384, 384), (16, 3, 384, 384)], ids=lambda s: "x".join(map(str, s)))
def test_heun_loop(benchmark, shape, dtype, provider):
    group = f"heun40 loop {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}"
    make = lambda: (torch.randn(shape, device="cuda", dtype=dtype),)  # noqa: E731
    backend_name = provider.split("+")[0]
    if backend_name != "reference":
        for op in ("add_noise", "edm_euler_update", "edm_heun_update", "denoise_combine"):
            _skip_unavailable(backend_name, op)
    if "+cudagraph" not in provider:
        measure(benchmark, with_backend(backend_name, _heun_loop), make, group=group, provider=provider)
        return
    # CUDA graph: capture the whole 40-step loop once on a static input, time replays (fresh noise each replay)
    static = make()[0]
    with burstkern.backend(backend_name):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: Triton compiles, allocator
                _heun_loop(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _heun_loop(static)
    measure(benchmark, lambda: graph.replay(), lambda: (), group=group, provider=provider)


# ----------------------------------------------------------------------------------------------
# CPU
# ----------------------------------------------------------------------------------------------
@cpu_case
@pytest.mark.parametrize("threads", thread_counts(), ids=lambda t: f"{t}t")
@pytest.mark.parametrize("provider", C.DENOISE_PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", C.DENOISE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_denoise_cpu(benchmark, shape, dtype, provider, threads):
    measure_cpu(benchmark, C.denoise_group(shape), provider, dtype, threads)
