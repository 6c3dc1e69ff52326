"""E-BSRD models on burstkern ops: shapes, presets, reproducibility, backend swap, op routing, NVTX stages,
torch.compile and CUDA graphs."""

import contextlib

import pytest
import torch

import burstkern
from burstkern import _extension
from burstkern import profiling
from burstkern.registry import backend_available
from burstkern.models import EBSRD, PRESETS
from utils import assert_rel_close, rel_err, requires_cuda, tiny_ebsrd


make_model = tiny_ebsrd


def burst(n=1, dtype=torch.float32, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, PRESETS["tiny"].burst_size, 4, 8, 8, generator=g).to(device=device, dtype=dtype)


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def test_shapes_ranges_and_presets():
    model = make_model()
    b = burst(2)
    with torch.no_grad():
        x_init, cond = model.initial(b)
        y = model(b, generator=gen())
        yt = model.teacher(b, num_steps=3, generator=gen())
    assert x_init.shape == (2, 3, 64, 64) and cond.shape == (2, model.config.enc_ch, 8, 8)
    assert y.shape == (2, 3, 64, 64) and 0 <= y.min() and y.max() <= 1  # one-step output is clamped
    assert yt.shape == (2, 3, 64, 64) and torch.isfinite(yt).all()
    paper = PRESETS["paper"]
    assert (paper.unet_ch, paper.burst_size, paper.scale) == (128, 8, 8)
    with pytest.raises(TypeError, match="unknown config field"):
        EBSRD("tiny", not_a_field=1)
    with pytest.raises(ValueError, match="divisible"):
        model.initial(torch.rand(1, 4, 4, 7, 8))


def test_seeded_runs_reproduce():
    model, b = make_model(), burst()
    with torch.no_grad():
        a, a2, c = (model.one_step(b, generator=gen(s)) for s in (3, 3, 4))
    assert torch.equal(a, a2)
    assert not torch.equal(a, c)


def _swap_params():
    params = []
    for name in ("triton", "native"):
        ok = all(bool(backend_available(name, "cuda" if torch.cuda.is_available() else "cpu", op))
                 for op in ("deform_conv2d", "sft_group_norm", "cm_update", "add_noise"))
        params.append(pytest.param(name, marks=() if ok else pytest.mark.skip(reason=f"{name} cannot run every op")))
    return params


@pytest.mark.parametrize("name", _swap_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_weights_same_image_under_every_backend(name, dtype):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, b = make_model(dtype=dtype, device=device), burst(dtype=dtype, device=device)
    with torch.no_grad():
        with burstkern.backend("reference"):
            ref = model.one_step(b, generator=gen(5, device))
        with burstkern.backend(name):
            out = model.one_step(b, generator=gen(5, device))
    # fp32: only summation order differs; bf16: each op rounds once, a few ulps of bf16 through the network
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(out, ref) < tol


@pytest.mark.skipif(_extension.cuda_extension_error() is not None, reason="needs burstkern._C")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_image_with_the_cuda_kernels_emulated(dtype, native_on_cpu, simt_emulation):
    """Without a GPU: the native backend on CPU tensors, its CUDA kernels on the SIMT emulation (conftest), through
    the whole one-step pipeline."""
    model, b = make_model(dtype=dtype), burst(dtype=dtype)
    with torch.no_grad():
        with burstkern.backend("reference"):
            ref = model.one_step(b, generator=gen(5, "cpu"))
        with burstkern.backend("native"):
            out = model.one_step(b, generator=gen(5, "cpu"))
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(out, ref) < tol


@contextlib.contextmanager
def recorded_ranges():
    names = []

    @contextlib.contextmanager
    def record(name):
        names.append(name)
        yield

    saved_fn, saved_on = profiling.nvtx_range, profiling.enabled()
    profiling.nvtx_range = record
    profiling.enable(True)
    # the models imported nvtx_range by name: patch their module globals too
    import burstkern.models.ebsrd as e
    import burstkern.models.encoder as enc
    import burstkern.models.unet as u
    saved_mod = [(m, m.nvtx_range) for m in (e, enc, u)]
    for m, _ in saved_mod:
        m.nvtx_range = record
    try:
        yield names
    finally:
        profiling.nvtx_range = saved_fn
        profiling.enable(saved_on)
        for m, f in saved_mod:
            m.nvtx_range = f


def test_hot_spots_run_through_burstkern_ops_and_stages_are_ranged(monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.ops, "deform_conv2d", lambda *a, **k: pytest.fail("torchvision op called"))
    model, b = make_model(), burst()
    with recorded_ranges() as names, torch.no_grad(), burstkern.backend("reference"):
        model.one_step(b, generator=gen())
        model.teacher(b, num_steps=2, generator=gen())
    ops = {n.split("[")[0] for n in names if "[" in n}
    assert {"deform_conv2d", "sft_group_norm", "add_noise", "cm_update", "edm_euler_update"} <= ops, ops
    stages = {n for n in names if "[" not in n}
    assert {"encode", "align", "fuse", "initial_sr", "denoise", "sample"} <= stages, stages


def test_compile_fullgraph_one_step_matches_eager():
    model, b = make_model(), burst()
    compiled = torch.compile(model.one_step, fullgraph=True,
                             backend="inductor" if torch.cuda.is_available() else "aot_eager")
    with torch.no_grad(), burstkern.backend("reference"):
        torch.manual_seed(11)
        eager = model.one_step(b)
        torch.manual_seed(11)
        out = compiled(b)
    assert_rel_close(out, eager, torch.float32, "compiled one-step", scale=5)


@requires_cuda
def test_one_step_cuda_graph_replays_to_the_same_image():
    model, b = make_model(device="cuda"), burst(device="cuda")
    static_in = b.clone()
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):  # warm-up: Triton compilation, allocator
                model.one_step(static_in)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model.one_step(static_in)
        torch.cuda.manual_seed(123)
        graph.replay()
        replayed = static_out.clone()
        torch.cuda.manual_seed(123)
        eager = model.one_step(b)
        graph.replay()
        again = static_out.clone()
    assert_rel_close(replayed, eager, torch.float32, "graph replay vs eager", scale=5)
    assert not torch.equal(again, replayed)  # a later replay draws fresh noise


def test_teacher_honours_num_steps():
    """num_steps=0 is an error, not the default 40 steps in disguise; None means the config's count."""
    model, b = make_model(), burst()
    with torch.no_grad(), burstkern.backend("reference"):
        with pytest.raises(ValueError, match="num_steps must be an int >= 1, got 0"):
            model.teacher(b, num_steps=0)
        one = model.teacher(b, num_steps=1, generator=torch.Generator().manual_seed(0))
        two = model.teacher(b, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(one, two)
