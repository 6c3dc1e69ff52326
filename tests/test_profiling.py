"""NVTX ranges: off costs nothing (a shared null context), on wraps every op call in a named range."""

import contextlib

import pytest
import torch

import burstkern
from burstkern import profiling
from burstkern.ops import deform_conv2d


@pytest.fixture
def restore():
    was = profiling.enabled()
    yield
    profiling.enable(was)


def test_disabled_returns_the_shared_null_context(restore):
    profiling.enable(False)
    assert profiling.nvtx_range("a") is profiling.nvtx_range("b")
    with profiling.nvtx_range("a"):
        pass


def test_enabled_ranges_work_without_a_gpu(restore):
    profiling.enable(True)
    with profiling.nvtx_range("outer"):
        with profiling.nvtx_range("inner"):
            pass


def test_every_op_call_opens_a_named_range(restore, monkeypatch):
    names = []

    @contextlib.contextmanager
    def record(name):
        names.append(name)
        yield

    monkeypatch.setattr(profiling, "nvtx_range", record)
    profiling.enable(True)
    x = torch.randn(1, 2, 5, 5)
    off = torch.randn(1, 18, 5, 5)
    w = torch.randn(3, 2, 3, 3)
    with burstkern.backend("reference"):
        deform_conv2d(x, off, w, padding=1)
    assert "deform_conv2d[reference]" in names
    names.clear()
    profiling.enable(False)
    deform_conv2d(x, off, w, padding=1)
    assert names == []


def test_environment_switch(monkeypatch):
    import importlib

    monkeypatch.setenv("BURSTKERN_NVTX", "1")
    mod = importlib.reload(profiling)
    try:
        assert mod.enabled()
    finally:
        monkeypatch.setenv("BURSTKERN_NVTX", "0")
        importlib.reload(profiling)
