"""End-to-end E-BSRD: one-step student and 40-step Heun teacher, `paper` preset, burst 1x8x4x48x48 -> 3x384x384.

Providers (same weights, same input, one run): the reference backend eager, the triton and cuda backends,
torch.compile (inductor) of the reference, each optionally replayed from a CUDA graph; plus a per-stage
breakdown (encoder incl. alignment, initial SR head, one U-Net call, the consistency update) on the fastest
available backend. fp32 and bf16.

CPU cases (``test_one_step_cpu``; on machines without a GPU, or with BURSTKERN_BENCH_CPU=1): one step of
EBSRD("tiny") and EBSRD("paper"), burst 1xTx4x48x48 -> 3x384x384, fp32, 1 thread and all cores, on the reference
and native backends and torch.compile of the model on the reference backend; the per-stage breakdown (encoder,
alignment, initial head, U-Net, rest = denoise ops and glue) goes into extra_info["stages_ms"].
"""

import pytest
import torch

import burstkern
from burstkern.registry import backend_available
from burstkern.models import EBSRD
import cpu_cases as C
from cpu_harness import cpu_cases_enabled, measure_cpu, thread_counts
from harness import measure, requires_gpu


cpu_case = pytest.mark.skipif(not cpu_cases_enabled(), reason="CPU cases run on machines without a GPU "
                              "(BURSTKERN_BENCH_CPU=1 runs them anyway)")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_MODELS = {}


def model_for(dtype):
    if dtype not in _MODELS:
        torch.manual_seed(0)
        model = EBSRD("paper").eval()
        with torch.no_grad():  # zero-initialised output layers would make the U-Net a constant
            for p in model.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.02)
        _MODELS[dtype] = model.to("cuda", dtype)
    return _MODELS[dtype]


def make_burst(dtype):
    return lambda: (torch.rand(1, 8, 4, 48, 48, device="cuda", dtype=dtype),)


def backend_ok(name):
    return all(backend_available(name, "cuda", op)[0] for op in ("deform_conv2d", "sft_group_norm", "cm_update",
                                                                  "add_noise"))


def one_step_fn(model, provider):
    if provider == "compile":
        compiled = torch.compile(model.one_step, fullgraph=True)

        def run(b):
            with burstkern.backend("reference"):
                return compiled(b)
        return run

    def run(b):
        with burstkern.backend(provider):
            return model.one_step(b)
    return run


def graphed(fn, example):
    """Capture ``fn(static)`` once; the returned callable copies its input in and replays."""
    static = example.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static)

    def run(b):
        static.copy_(b)
        graph.replay()
        return out
    return run


PROVIDERS = ["reference", "triton", "cuda", "compile"]


@requires_gpu
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "cudagraph"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dt", list(DTYPES))
def test_one_step(benchmark, dt, provider, graph):
    dtype = DTYPES[dt]
    if provider in ("triton", "cuda") and not backend_ok(provider):
        pytest.skip(f"{provider} backend cannot run every op of the pipeline")
    model = model_for(dtype)
    fn = one_step_fn(model, provider)
    with torch.no_grad():
        if graph:
            fn = graphed(fn, make_burst(dtype)()[0])
        measure(benchmark, torch.no_grad()(fn), make_burst(dtype), group=f"ebsrd one-step paper 384 {dt}",
                provider=provider + ("+graph" if graph else ""))


@requires_gpu
@pytest.mark.parametrize("provider", ["reference", "triton", "cuda"])
def test_teacher_40_steps(benchmark, provider):
    if provider != "reference" and not backend_ok(provider):
        pytest.skip(f"{provider} backend cannot run every op of the pipeline")
    model = model_for(torch.bfloat16)

    def run(b):
        with burstkern.backend(provider):
            return model.teacher(b, num_steps=40)
    measure(benchmark, torch.no_grad()(run), make_burst(torch.bfloat16), group="ebsrd teacher 40 Heun paper 384 bf16",
            provider=provider)


STAGES = ["encoder", "initial_sr", "unet", "cm_update"]


@requires_gpu
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("dt", list(DTYPES))
def test_stage(benchmark, dt, stage):
    dtype = DTYPES[dt]
    provider = next((p for p in ("cuda", "triton") if backend_ok(p)), "reference")
    model = model_for(dtype)
    with torch.no_grad():
        b = make_burst(dtype)()[0]
        cond = model.encoder(b)
        x_init = model.head(cond)
        sigma = torch.full((1,), 0.03, device="cuda")
        c_noise = torch.log(sigma) / 4
    fns = {
        "encoder": (lambda b: model.encoder(b), make_burst(dtype)),
        "initial_sr": (lambda c: model.head(c), lambda: (torch.randn_like(cond),)),
        "unet": (lambda x: model.student(x, c_noise, cond), lambda: (torch.randn_like(x_init),)),
        "cm_update": (lambda x, f: burstkern.ops.cm_update(x, f, sigma, clamp=1.0),
                      lambda: (torch.randn_like(x_init), torch.randn_like(x_init))),
    }
    fn, make = fns[stage]

    def run(*args):
        with burstkern.backend(provider):
            return fn(*args)
    measure(benchmark, torch.no_grad()(run), make, group=f"ebsrd stages paper 384 {dt}", provider=f"{stage}[{provider}]")


# ----------------------------------------------------------------------------------------------
# CPU
# ----------------------------------------------------------------------------------------------
@cpu_case
@pytest.mark.parametrize("threads", thread_counts(), ids=lambda t: f"{t}t")
@pytest.mark.parametrize("provider", C.E2E_PROVIDERS)
@pytest.mark.parametrize("preset", list(C.E2E_PRESETS))
def test_one_step_cpu(benchmark, preset, provider, threads):
    measure_cpu(benchmark, C.e2e_group(preset), provider, torch.float32, threads)
