"""The backend switch: choice precedence, errors that say why, per-op plug-in kernels, warn-once fallback."""

import importlib
import threading
import warnings

import pytest
import torch

import burstkern
from burstkern.backend import (BUILD_HINT, BackendUnavailableError, backend_available, register_kernel, resolve)

# `burstkern.backend` the attribute is the context manager; the module is reached through the import system
B = importlib.import_module("burstkern.backend")

OP = "_test_only_op"


@pytest.fixture
def test_op():
    """A throw-away op with a reference and a triton kernel, removed afterwards."""
    register_kernel(OP, "reference", lambda x: ("reference", x))
    register_kernel(OP, "triton", lambda x: ("triton", x))
    yield OP
    B._kernels.pop(OP, None)
    B._resolve_cache.clear()


@pytest.fixture(autouse=True)
def clean_choice(monkeypatch):
    monkeypatch.delenv("BURSTKERN_BACKEND", raising=False)
    saved = B._global_choice
    B._global_choice = None
    yield
    B._global_choice = saved


def test_default_is_auto():
    assert burstkern.get_backend() == "auto"


def test_set_backend_and_invalid_names():
    burstkern.set_backend("reference")
    assert burstkern.get_backend() == "reference"
    burstkern.set_backend("AUTO")
    assert burstkern.get_backend() == "auto"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        burstkern.set_backend("fast")
    with pytest.raises(ValueError, match="backend"):
        with burstkern.backend("cudnn"):
            pass


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("BURSTKERN_BACKEND", "reference")
    assert burstkern.get_backend() == "reference"
    burstkern.set_backend("triton")  # an explicit call wins over the environment
    assert burstkern.get_backend() == "triton"
    B._global_choice = None
    monkeypatch.setenv("BURSTKERN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="BURSTKERN_BACKEND"):
        burstkern.get_backend()


def test_context_manager_nests_restores_and_is_per_thread():
    burstkern.set_backend("reference")
    seen = []
    with burstkern.backend("triton"):
        assert burstkern.get_backend() == "triton"
        with burstkern.backend("cuda"):
            assert burstkern.get_backend() == "cuda"
        assert burstkern.get_backend() == "triton"
        t = threading.Thread(target=lambda: seen.append(burstkern.get_backend()))
        t.start()
        t.join()
    assert seen == ["reference"]  # the other thread sees the process-wide choice, not this block
    with pytest.raises(KeyError):
        with burstkern.backend("triton"):
            raise KeyError("boom")
    assert burstkern.get_backend() == "reference"


def test_kernels_plug_in_per_op_and_backend(test_op, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve(test_op, cpu)[0] == "reference"  # auto on CPU: reference
    with burstkern.backend("triton"):
        assert resolve(test_op, cpu)[1](1) == ("triton", 1)
    with burstkern.backend("reference"):
        assert resolve(test_op, cpu)[1](2) == ("reference", 2)


def test_unavailable_backends_say_why(test_op, monkeypatch):
    cpu = torch.device("cpu")
    with burstkern.backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="no cuda kernel is registered"):
            resolve(test_op, cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with burstkern.backend("triton"):
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
            resolve(test_op, cpu)
    register_kernel(test_op, "cuda", lambda x: ("cuda", x))
    ok, why = backend_available("cuda", "cpu", test_op)
    assert not ok and ("CUDA tensors" in why or "not available" in why)


def test_missing_extension_explains_how_to_build(test_op, monkeypatch):
    register_kernel(test_op, "cuda", lambda x: ("cuda", x))
    monkeypatch.setattr(burstkern._extension, "_cuda_error", "import failed: No module named 'burstkern._C'")
    ok, why = backend_available("cuda", "cuda", test_op)
    assert not ok
    assert "burstkern._C is not available" in why and BUILD_HINT in why
    with burstkern.backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="--no-build-isolation"):
            resolve(test_op, torch.device("cuda"))


def test_unknown_op():
    with pytest.raises(RuntimeError, match="no registered kernels"):
        resolve("_no_such_op", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a GPU without kernels; only meaningful without one")
def test_auto_fallback_on_gpu_warns_once(monkeypatch):
    op = "_test_only_ref_op"
    register_kernel(op, "reference", lambda: "reference")
    try:
        gpu = torch.device("cuda")  # resolve() only looks at the device type
        with pytest.warns(RuntimeWarning, match="falls back|uses the reference backend"):
            assert resolve(op, gpu)[0] == "reference"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):
                assert resolve(op, gpu)[0] == "reference"
    finally:
        B._kernels.pop(op, None)
        B._resolve_cache.clear()


def test_every_public_op_has_a_reference_kernel():
    assert B.registered_ops(), "no ops registered"
    for op in B.registered_ops():
        if op.startswith("_test"):
            continue
        assert B.has_kernel(op, "reference"), op
