"""Shared timing for every benchmark suite: one protocol, written once.

Protocol (DESIGN.md "Performance protocol"): device-event timing with ``triton.testing.do_bench``
(median, after warm-up; do_bench also clears L2 before each repetition), argument sets rotated so the
working set exceeds the L2 cache, fresh random data (never zeros), each timed region inside an NVTX range.
Results go into pytest-benchmark's JSON through ``benchmark.extra_info``: median ms, achieved GB/s and
TFLOP/s, the floor (bytes at the measured copy bandwidth, FLOPs at the measured matrix rate), % of floor,
and peak memory of one call. Benchmarks never assert on timings.

Usage in a suite::

    from harness import measure, requires_gpu, with_backend

    @requires_gpu
    def test_op(benchmark):
        measure(benchmark, with_backend("triton", fn), make_args, group="op N8 fp16", nbytes=..., flops=...)
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Optional, Sequence

import pytest
import torch

import burstkern
from burstkern import profiling

GPU = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not GPU, reason="benchmarks time kernels on a CUDA GPU")

MAX_SETS = 32


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0


def l2_bytes() -> int:
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))


def rotation(make_args: Callable[[], Sequence], min_bytes: Optional[int] = None) -> list:
    """Fresh argument sets whose total size is at least 3x L2 (capped at MAX_SETS sets)."""
    min_bytes = 3 * l2_bytes() if min_bytes is None else min_bytes
    sets, total = [], 0
    while len(sets) < MAX_SETS and (not sets or total < min_bytes):
        args = tuple(make_args())
        sets.append(args)
        total += _nbytes(args)
    return sets


@functools.lru_cache(maxsize=None)
def ceilings() -> dict:
    """Measured copy bandwidth (bytes read + written per second) and bf16 matrix rate of this GPU."""
    import triton.testing

    def copy_rate() -> float:
        n = 1 << 28  # 1 GiB of fp32: far beyond L2
        src = torch.rand(n, device="cuda")
        dst = torch.empty_like(src)
        ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median")
        return 2 * n * 4 / (ms * 1e-3)

    def matmul_rate() -> float:
        m = 8192
        a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        ms = triton.testing.do_bench(lambda: a @ b, warmup=10, rep=50, return_mode="median")
        return 2 * m ** 3 / (ms * 1e-3)

    copy_bps, mm_flops = copy_rate(), matmul_rate()
    torch.cuda.empty_cache()
    return {"copy_GBps": copy_bps / 1e9, "bf16_mm_TFLOPs": mm_flops / 1e12}


def with_backend(name: str, fn: Callable) -> Callable:
    """``fn`` run with burstkern's backend forced to ``name``."""

    def run(*args):
        with burstkern.backend(name):
            return fn(*args)

    return run


def forward_backward(fn: Callable, grad_argnums: Sequence[int]) -> Callable:
    """A callable that runs ``fn`` forward and backward (with a random upstream gradient)."""

    def run(*args):
        args = list(args)
        for i in grad_argnums:
            args[i] = args[i].detach().requires_grad_()
        out = fn(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loss_inputs = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        grads = [torch.ones_like(o) for o in loss_inputs]
        torch.autograd.backward(loss_inputs, grads)
        return out

    return run


def measure(benchmark, fn: Callable, make_args: Callable[[], Sequence], *, group: str, provider: str,
            nbytes: Optional[float] = None, flops: Optional[float] = None, label: Optional[str] = None) -> float:
    """Time ``fn(*args)`` over rotated argument sets; record everything in ``benchmark``; return median ms.

    ``nbytes``/``flops``: the minimum traffic / work of ONE call, for the floor and achieved rates.
    """
    import triton.testing

    benchmark.group = group
    sets = rotation(make_args)
    cycle = itertools.cycle(sets)

    def run():
        return fn(*next(cycle))

    for _ in range(3):  # warm-up: compilation, autotuning, allocator
        run()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(*sets[0])
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    name = label or f"{group} [{provider}]"
    with profiling.nvtx_range(name):
        ms = triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")
    info = {"provider": provider, "median_ms": ms, "peak_mem_MB": peak / 2 ** 20, "sets": len(sets),
            "gpu": torch.cuda.get_device_name(0)}
    ceil = ceilings()
    floor_ms = 0.0
    if nbytes:
        info["GBps"] = nbytes / (ms * 1e-3) / 1e9
        info["pct_copy_bw"] = 100 * info["GBps"] / ceil["copy_GBps"]
        floor_ms = max(floor_ms, nbytes / (ceil["copy_GBps"] * 1e9) * 1e3)
    if flops:
        info["TFLOPs"] = flops / (ms * 1e-3) / 1e12
        floor_ms = max(floor_ms, flops / (ceil["bf16_mm_TFLOPs"] * 1e12) * 1e3)
    if floor_ms:
        info["floor_ms"] = floor_ms
        info["x_floor"] = ms / floor_ms
    benchmark.extra_info.update(info)

    def run_sync():
        run()
        torch.cuda.synchronize()

    # pytest-benchmark's own (host-timed, synchronised) statistics, for its tables and comparisons
    benchmark.pedantic(run_sync, rounds=10, iterations=1, warmup_rounds=1)
    return ms
