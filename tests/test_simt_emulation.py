"""The SIMT emulation (csrc/common/simt_emu.h): the CUDA kernels of csrc/ compiled by the C++ compiler and run on the
CPU, so their tiling, shared memory, barriers, shuffles, tensor-core tile products and atomics are tested without
a GPU (the op parity tests run them through the ``emu`` device of test_*_cuda.py).

Here: the emulation itself (what it computes, and the kernel bugs it must report), that thread order does not
change any kernel's result (a missing barrier would), and the launch counts of the fused ops.
"""

from __future__ import annotations

import pytest
import torch

from burstkern import _extension

if _extension.cuda_extension_error() is not None or not hasattr(torch.ops.burstkern_C, "simt_selftest"):
    pytest.skip(f"burstkern._C without the SIMT emulation ({_extension.cuda_extension_error()})",
                allow_module_level=True)


B = torch.ops.burstkern_C


@pytest.fixture
def mode():
    """Sets the emulation mode for the test body and restores it."""
    prev = B.set_simt_emulation(0)
    yield lambda m: B.set_simt_emulation(m)
    B.set_simt_emulation(prev)


# ----------------------------------------------------------------------------------------------
# the emulation itself
# ----------------------------------------------------------------------------------------------
def test_block_sum_kernel():
    x = torch.randn(8 * 64)
    got = B.simt_selftest(x, "block_sum")
    torch.testing.assert_close(got, x.view(8, 64).sum(1), rtol=1e-6, atol=1e-5)


def test_wmma_tile_product():
    x = torch.randn(512)
    a, b = x[:256].view(16, 16).half().float(), x[256:].view(16, 16).half().float()
    got = B.simt_selftest(x, "wmma").view(16, 16)
    torch.testing.assert_close(got, a @ b, rtol=1e-5, atol=1e-5)


def test_missing_barrier_is_caught(mode):
    """Threads run to their next barrier; a read of a neighbour's shared slot with no barrier in between sees
    stale data in thread order and fresh data in reverse order, so the result is wrong and order-dependent."""
    x = torch.randn(8 * 64)
    want = x.view(8, 64).roll(-1, dims=1).reshape(-1)
    mode(1)
    forward = B.simt_selftest(x, "missing_barrier")
    mode(2)
    reverse = B.simt_selftest(x, "missing_barrier")
    assert not torch.equal(forward, want)
    assert not torch.equal(forward, reverse)


def test_divergent_barrier_is_reported():
    with pytest.raises(RuntimeError, match="divergent barrier"):
        B.simt_selftest(torch.randn(512), "divergent_barrier")


def test_misaligned_tensor_core_tile_is_reported():
    with pytest.raises(RuntimeError, match="misaligned tile"):
        B.simt_selftest(torch.randn(512), "misaligned_wmma")


def test_mode_is_validated():
    with pytest.raises(RuntimeError, match="mode must be 0"):
        B.set_simt_emulation(3)


def test_stats_count_launches_and_blocks():
    l0, b0, _ = B.simt_emulation_stats()
    B.simt_selftest(torch.randn(512), "block_sum")
    l1, b1, s1 = B.simt_emulation_stats()
    assert (l1 - l0, b1 - b0) == (1, 8)
    assert s1 > 0


# ----------------------------------------------------------------------------------------------
# every kernel gives the same bits whatever order the threads of a block run in
# ----------------------------------------------------------------------------------------------
def _in_both_orders(mode, fn):
    mode(1)
    first = fn()
    mode(2)
    second = fn()
    mode(0)
    return first, second


def _assert_same(first, second):
    first = first if isinstance(first, (tuple, list)) else [first]
    second = second if isinstance(second, (tuple, list)) else [second]
    for i, (a, b) in enumerate(zip(first, second)):
        if a is None:
            continue
        assert torch.equal(a, b) or (a.isnan().equal(b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())), \
            f"output {i} depends on the order of the threads (max diff {(a.float() - b.float()).abs().max()})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_deform_conv_thread_order(mode, dtype):
    g = torch.Generator().manual_seed(3)
    n, cin, cout, h, w, og = 2, 40, 70, 9, 10, 5
    x = torch.randn(n, cin, h, w, generator=g).to(dtype)
    off = (2 * torch.randn(n, 2 * og * 9, h, w, generator=g)).to(dtype)
    m = torch.rand(n, og * 9, h, w, generator=g).to(dtype)
    wt = (0.1 * torch.randn(cout, cin, 3, 3, generator=g)).to(dtype)
    b = torch.randn(cout, generator=g).to(dtype)
    args = (x, off, wt, b, 1, 1, 1, 1, 1, 1, m)
    gout = torch.randn(n, cout, h, w, generator=g).to(dtype)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # grad input through index_put_, not order-dependent float atomics
    try:
        fwd = _in_both_orders(mode, lambda: B.deform_conv2d(*args))
        bwd = _in_both_orders(mode, lambda: B.deform_conv2d_backward(gout, *args))
    finally:
        torch.use_deterministic_algorithms(prev)
    _assert_same(*fwd)
    _assert_same(*bwd)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_sft_group_norm_thread_order(mode, layout):
    g = torch.Generator().manual_seed(5)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x, gamma, beta, gout = (torch.randn(2, 64, 7, 9, generator=g).to(memory_format=fmt) for _ in range(4))
    wt, bs = torch.randn(64, generator=g), torch.randn(64, generator=g)
    fwd = _in_both_orders(mode, lambda: B.sft_group_norm(x, gamma, beta, 8, wt, bs, 1e-5, 1, 0.0))
    _assert_same(*fwd)
    _, mean, rstd = fwd[0]
    bwd = _in_both_orders(mode, lambda: B.sft_group_norm_backward(gout, x, gamma, beta, 8, wt, bs, mean, rstd,
                                                                  1e-5, 1, 0.0))
    _assert_same(*bwd)
    # per-channel gamma/beta: the backward reduces them over pixels (partials, then a finalize kernel)
    gc, bc = gamma[:, :, :1, :1].contiguous(), beta[:, :, :1, :1].contiguous()
    _assert_same(*_in_both_orders(mode, lambda: B.sft_modulate_backward(gout, x, gc, bc, 1, 0.0)))


def test_denoise_thread_order(mode):
    """Reductions over groups of several blocks (partials, the last block finalises) and in-kernel noise."""
    g = torch.Generator().manual_seed(7)
    x, F, y = (torch.randn(3, 3, 40, 41, generator=g) for _ in range(3))
    sigma = torch.rand(3, generator=g) + 0.1
    seed = torch.tensor([12345], dtype=torch.int64)
    _assert_same(*_in_both_orders(mode, lambda: B.edm_loss(x, F, y, sigma, 0.5)))
    _assert_same(*_in_both_orders(mode, lambda: B.add_noise(x, sigma, None, 1.0, None, seed)))


# ----------------------------------------------------------------------------------------------
# launches per op, counted by the emulation (the GPU test counts them with torch.profiler)
# ----------------------------------------------------------------------------------------------
def _launches(mode, fn):
    mode(1)
    before = B.simt_emulation_stats()[0]
    fn()
    after = B.simt_emulation_stats()[0]
    mode(0)
    return after - before


def test_denoise_one_launch_per_op(mode):
    g = torch.Generator().manual_seed(9)
    x, F, y = (torch.randn(2, 3, 40, 41, generator=g) for _ in range(3))
    s, s2 = torch.rand(2, generator=g) + 0.5, torch.rand(2, generator=g) + 0.1
    seed = torch.tensor([7], dtype=torch.int64)
    calls = {
        "denoise_combine": lambda: B.denoise_combine(x, F, s, 0.5, 0.002, "edm", True),
        "edm_euler_update": lambda: B.edm_euler_update(x, F, s, s2, 0.5),
        "add_noise": lambda: B.add_noise(x, s, s2, 1.0, None, seed),
        "cm_update": lambda: B.cm_update(x, F, s, 0.002, 0.5, s2, None, None, seed),
        "edm_loss": lambda: B.edm_loss(x, F, y, s, 0.5),
    }
    for name, call in calls.items():
        assert _launches(mode, call) == 1, name


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_sft_launch_counts(mode, layout):
    """As sft_cuda.cu documents: modulate 1, its backward 1 (+1 finalize for per-channel gamma/beta), group norm
    3 (statistics, finalize, apply), its backward 3."""
    g = torch.Generator().manual_seed(11)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x, gamma, beta, gout = (torch.randn(2, 32, 9, 7, generator=g).to(memory_format=fmt) for _ in range(4))
    gc, bc = gamma[:, :, :1, :1].contiguous(), beta[:, :, :1, :1].contiguous()
    assert _launches(mode, lambda: B.sft_modulate(x, gamma, beta, 1, 0.0)) == 1
    assert _launches(mode, lambda: B.sft_modulate_backward(gout, x, gamma, beta, 1, 0.0)) == 1
    assert _launches(mode, lambda: B.sft_modulate_backward(gout, x, gc, bc, 1, 0.0)) == 2
    _, mean, rstd = B.sft_group_norm(x, gamma, beta, 4, None, None, 1e-5, 1, 0.0)
    assert _launches(mode, lambda: B.sft_group_norm(x, gamma, beta, 4, None, None, 1e-5, 1, 0.0)) == 3
    assert _launches(mode, lambda: B.sft_group_norm_backward(gout, x, gamma, beta, 4, None, None, mean, rstd,
                                                             1e-5, 1, 0.0)) == 3


def test_deform_conv_launch_counts(mode):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(1, 8, 6, 7, generator=g)
    off, m = torch.randn(1, 18, 6, 7, generator=g), torch.rand(1, 9, 6, 7, generator=g)
    wt, b = torch.randn(8, 8, 3, 3, generator=g), torch.randn(8, generator=g)
    args = (x, off, wt, b, 1, 1, 1, 1, 1, 1, m)
    assert _launches(mode, lambda: B.deform_conv2d(*args)) == 1
    # grad input/offset/mask, then grad weight (grad bias is a torch sum)
    assert _launches(mode, lambda: B.deform_conv2d_backward(torch.ones(1, 8, 6, 7), *args)) == 2
