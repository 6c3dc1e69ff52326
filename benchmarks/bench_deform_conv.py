"""deform_conv2d benchmarks: GPU cases (timing by benchmarks/harness.py) and CPU cases (benchmarks/cpu_cases.py).

Providers at the alignment shapes of DESIGN.md (K = 3; og = 8 and og = 1), fp32 / fp16 / bf16, forward and
forward + backward, with peak memory of one call:

* ``triton`` / ``cuda`` -- burstkern's kernels (``cuda`` only when the extension registered a kernel),
* ``torchvision`` -- ``torchvision.ops.deform_conv2d`` (the best peer; it has no bf16 kernel: skipped there),
* ``cudnn`` -- ``F.conv2d`` of the same shape (groups, dilation), the speed a deformable conv could approach.

    pytest benchmarks/bench_deform_conv.py --benchmark-only --benchmark-json=deform_conv.json

CPU cases (``test_deform_conv2d_cpu``; on machines without a GPU, or with BURSTKERN_BENCH_CPU=1): the shapes of
issue 11 (forward: N8 C64 48² og8, N4 C64 96² og8, N14 C48 48² og8 dilation 2, N1 C64 128² og1; forward +
backward: N8 C64 48² og8), fp32 and bf16, at 1 thread and all cores, providers burstkern native / reference,
torchvision, inductor of the reference, onnxruntime DeformConv, OpenVINO DeformableConvolution-8 and dense
conv2d; every provider's numerics checked against torchvision in fp64 first. The interleaved paired-ratio
protocol is ``python benchmarks/cpu_suite.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cpu_cases as C
from cpu_harness import cpu_cases_enabled, measure_cpu, thread_counts
from harness import forward_backward, measure, requires_gpu, with_backend

from burstkern.registry import backend_available
from burstkern.ops import deform_conv2d


cpu_case = pytest.mark.skipif(not cpu_cases_enabled(), reason="CPU cases run on machines without a GPU "
                              "(BURSTKERN_BENCH_CPU=1 runs them anyway)")

# (N, C, H=W, weight groups, dilation, offset groups); 4 shapes x 3 dtypes x 4 providers x 2 modes = 96 cases
SHAPES = [
    (8, 64, 96, 1, 1, 8), (8, 64, 96, 1, 1, 1),  # the bar shape (og 8) and its og 1 twin
    (14, 48, 48, 8, 2, 8),  # Burstormer's alignment layer
    (112, 64, 64, 1, 1, 8),  # a large batch (bursts of 14 x 8)
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PROVIDERS = ["triton", "cuda", "torchvision", "cudnn"]
MODES = ["fwd", "fwd+bwd"]
K = 3


def _make_args(shape, dtype):
    n, c, hw, groups, dil, og = shape

    def make():
        x = torch.randn(n, c, hw, hw, device="cuda", dtype=dtype)
        # offsets of a few pixels, as an alignment network predicts them
        off = (torch.randn(n, 2 * og * K * K, hw, hw, device="cuda") * 2).to(dtype)
        w = (torch.randn(c, c // groups, K, K, device="cuda") * (c // groups * K * K) ** -0.5).to(dtype)
        b = torch.randn(c, device="cuda", dtype=dtype)
        m = torch.rand(n, og * K * K, hw, hw, device="cuda", dtype=dtype)
        return x, off, w, b, m

    return make


def _dcn(dil):
    return lambda x, off, w, b, m: deform_conv2d(x, off, w, b, padding=dil, dilation=dil, mask=m)


def _torchvision(dil):
    import torchvision.ops

    return lambda x, off, w, b, m: torchvision.ops.deform_conv2d(x, off, w, b, padding=dil, dilation=dil, mask=m)


def _cudnn(dil, groups):
    return lambda x, off, w, b, m: F.conv2d(x, w, b, 1, dil, dil, groups)


def _traffic_and_work(shape, dtype, mode):
    """Minimum bytes and FLOPs of one call (every tensor read or written once; the GEMM of the conv)."""
    n, c, hw, groups, dil, og = shape
    es = torch.empty((), dtype=dtype).element_size()
    x = n * c * hw * hw
    off = n * 2 * og * K * K * hw * hw
    m = n * og * K * K * hw * hw
    w = c * c // groups * K * K
    flops = 2 * n * c * hw * hw * (c // groups) * K * K
    fwd_bytes = (x + off + m + w + x) * es  # output has the input's size here
    if mode == "fwd":
        return fwd_bytes, flops
    # backward reads grad, x, offset, mask, weight and writes their gradients; two more GEMMs
    return fwd_bytes + (x + x + off + m + w + x + off + m + w) * es, 3 * flops


@requires_gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}C{s[1]}H{s[2]}g{s[3]}d{s[4]}og{s[5]}")
def test_deform_conv2d(benchmark, shape, dtype, provider, mode):
    n, c, hw, groups, dil, og = shape
    if provider in ("triton", "cuda"):
        ok, why = backend_available(provider, "cuda", "deform_conv2d")
        if not ok:
            pytest.skip(why)
        fn = with_backend(provider, _dcn(dil))
    elif provider == "torchvision":
        if dtype == torch.bfloat16:
            pytest.skip("torchvision.ops.deform_conv2d has no bfloat16 kernel")
        fn = _torchvision(dil)
    else:
        fn = _cudnn(dil, groups)
    if mode == "fwd+bwd":
        grad_argnums = (0, 2, 3) if provider == "cudnn" else (0, 1, 2, 3, 4)
        fn = forward_backward(fn, grad_argnums)
    nbytes, flops = _traffic_and_work(shape, dtype, mode)
    group = f"deform_conv2d N{n} C{c} {hw}x{hw} g{groups} d{dil} og{og} {str(dtype).replace('torch.', '')} {mode}"
    measure(benchmark, fn, _make_args(shape, dtype), group=group, provider=provider, nbytes=nbytes, flops=flops)


# ----------------------------------------------------------------------------------------------
# CPU
# ----------------------------------------------------------------------------------------------
CPU_CASES = ([(s, False, p) for s in C.DCN_SHAPES for p in C.DCN_FWD_PROVIDERS]
             + [(s, True, p) for s in C.DCN_BWD_SHAPES for p in C.DCN_BWD_PROVIDERS])


def _cpu_id(case):
    (n, c, hw, dil, og), bwd, provider = case
    return f"{'fwd+bwd' if bwd else 'fwd'}-N{n}C{c}H{hw}d{dil}og{og}-{provider}"


@cpu_case
@pytest.mark.parametrize("threads", thread_counts(), ids=lambda t: f"{t}t")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CPU_CASES, ids=_cpu_id)
def test_deform_conv2d_cpu(benchmark, case, dtype, threads):
    shape, bwd, provider = case
    measure_cpu(benchmark, C.dcn_group(shape, bwd), provider, dtype, threads,
                mem=bwd and threads == 1 and provider in C.DCN_MEM_PROVIDERS)
