"""Helpers shared by the tests: error norms, tolerances, which backends can run where."""

from __future__ import annotations

import os

import pytest
import torch


from burstkern.registry import backend_available

# Relative-norm tolerances against an fp64 reference, by the dtype the kernel ran in.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; NaN/inf anywhere in ``out`` is an infinite error."""
    out64, ref64 = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    if not torch.isfinite(out64).all():
        return float("inf")
    den = ref64.norm().item()
    num = (out64 - ref64).norm().item()
    return num / den if den > 0 else num


def assert_rel_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "", scale: float = 1.0):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    tol = TOL[dtype] * scale
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def fused_backends(op: str, device: str):
    """The non-reference backends that can run ``op`` on ``device`` here (skips listed with their reason)."""
    params = []
    for name in ("triton", "native"):
        ok, why = backend_available(name, device, op)
        params.append(pytest.param(name, marks=() if ok else pytest.mark.skip(reason=why)))
    return params


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so an element a kernel forgot to write shows up as an infinite error."""
    return t.fill_(float("nan"))


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_kernel_names(fn):
    """Names of the CUDA kernels one (warmed-up) call of ``fn`` launches, memsets and copies left out."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == DeviceType.CUDA
            and "memset" not in e.name.lower() and "memcpy" not in e.name.lower()]


def find_cuobjdump():
    """cuobjdump from PATH, CUDA_HOME, or Triton's NVIDIA backend (which ships one); None if there is none."""
    import os
    import shutil

    candidates = [shutil.which("cuobjdump"),
                  os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def parse_res_usage(text: str) -> dict:
    """`cuobjdump -res-usage` output -> {mangled kernel name: {"REG", "STACK", "SHARED", "LOCAL": int}}."""
    import re

    kernels, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
        elif name and "REG:" in line:
            kernels[name] = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            name = None
    return kernels


# The devices of the compiled-backend tests (tests/test_*_cuda.py): cpu runs the CPU kernels of burstkern._C, emu the
# CUDA kernels on the SIMT emulation (conftest.simt_emulation), cuda the GPU.
COMPILED_DEVICES = ["cpu", "emu", pytest.param("cuda", marks=requires_cuda)]


def compiled_device(request, *cpu_fixtures: str, every: tuple = ()) -> str:
    """Body of a `dev` fixture parametrized by COMPILED_DEVICES: sets up conftest's native_on_cpu plus
    ``cpu_fixtures`` (cpu/emu) or poisoned_outputs (cuda), the SIMT emulation for emu, and the file's ``every``
    fixtures on each device; returns the torch device type to put tensors on."""
    if request.param in ("cpu", "emu"):
        request.getfixturevalue("native_on_cpu")
        if request.param == "emu":
            request.getfixturevalue("simt_emulation")
        for name in cpu_fixtures:
            request.getfixturevalue(name)
    else:
        request.getfixturevalue("poisoned_outputs")
    for name in every:
        request.getfixturevalue(name)
    return "cpu" if request.param == "emu" else request.param


class ContiguousOps:
    """An op namespace whose calls get their non-contiguous tensor arguments made contiguous (the native glue)."""

    def __init__(self, ns):
        self.ns = ns

    def __getattr__(self, name):
        op = getattr(self.ns, name)

        def call(*args):
            return op(*[a.contiguous() if isinstance(a, torch.Tensor) and a.dim() == 4 and not a.is_contiguous()
                        and not a.is_contiguous(memory_format=torch.channels_last) else a for a in args])
        return call


_native_state: dict = {}


def native_namespace():
    """(op namespace, skip reason): burstkern._C's ops, or a dev build named by BURSTKERN_NATIVE_LIB /
    BURSTKERN_NATIVE_NS (the same schemas), loaded once."""
    if "ns" not in _native_state:
        ns, why = None, None
        lib, name = os.environ.get("BURSTKERN_NATIVE_LIB"), os.environ.get("BURSTKERN_NATIVE_NS")
        try:
            if lib:
                torch.ops.load_library(lib)
                ns = getattr(torch.ops, name or "burstkern_C")
            else:
                import burstkern._C  # noqa: F401  (registers torch.ops.burstkern_C)

                ns = torch.ops.burstkern_C
        except Exception as exc:  # noqa: BLE001 - not built: a skip reason
            why = f"burstkern._C is not built ({type(exc).__name__}: {exc})"
        _native_state["ns"], _native_state["why"] = ns, why
    return _native_state["ns"], _native_state["why"]


def tiny_ebsrd(seed=0, dtype=torch.float32, device="cpu"):
    """EBSRD("tiny") with its zero-initialised layers perturbed (N(0, 0.05)), so every path contributes to the output."""
    from burstkern.models import EBSRD

    torch.manual_seed(seed)
    model = EBSRD("tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.to(device=device, dtype=dtype)
