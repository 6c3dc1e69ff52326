"""The counter-based normal RNG of the denoise ops (burstkern/ops/denoise/rng.py): Philox known answers, the
plain-torch spec vs Triton's tl.randn element by element, reproducibility, fresh streams, and the distribution
(mean, variance, Kolmogorov-Smirnov, neighbour correlation) on 2^20 draws of the reference path.
"""

from __future__ import annotations

import pytest
import torch

import burstkern
from burstkern import ops
from burstkern.registry import backend_available
from burstkern.ops.denoise import rng

from utils import assert_rel_close, requires_cuda

scipy_stats = pytest.importorskip("scipy.stats")

triton_ok, triton_why = backend_available("triton", "cpu", "add_noise")
needs_triton = pytest.mark.skipif(not triton_ok, reason=triton_why)

# Random123 known-answer vectors for Philox4x32-10: (counter, key) -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _seed(lo: int, hi: int) -> torch.Tensor:
    v = lo | (hi << 32)
    return torch.tensor([v - (1 << 64) if v >= 1 << 63 else v], dtype=torch.int64)


@pytest.mark.parametrize("counter,key,want", KAT)
def test_philox_known_answers(counter, key, want):
    got = rng.philox(_seed(*key), *[torch.tensor([c], dtype=torch.int64) for c in counter])
    assert [int(g) for g in got] == list(want)


def test_draw_seed():
    g = torch.Generator().manual_seed(5)
    a, b = rng.draw_seed(torch.device("cpu"), g), rng.draw_seed(torch.device("cpu"), g)
    assert a.shape == (1,) and a.dtype == torch.int64 and 0 <= a.item() < rng.SEED_HIGH
    assert a.item() != b.item(), "the generator must advance between draws"
    c = rng.draw_seed(torch.device("cpu"), torch.Generator().manual_seed(5))
    assert c.item() == a.item(), "same generator seed, same stream"


def _tri():
    from burstkern.ops.denoise import triton as tri

    return tri


@needs_triton
@pytest.mark.parametrize("seed", [0, 1, 123456789, (1 << 62) - 1, 1 << 40])
def test_reference_matches_triton_elementwise(seed):
    s = torch.tensor([seed], dtype=torch.int64)
    n = 3000  # 3 blocks, the last partial
    tri = _tri()
    got = tri.randn(s, (n,), "cpu")
    want = rng.randn(s, (n,))
    # same Philox words; only float32 log/cos/sqrt rounding may differ
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() < 1e-5
    assert_rel_close(got, want, torch.float32, "tl.randn vs rng.randn")


@needs_triton
def test_reference_matches_triton_large_offsets():
    import triton
    import triton.language as tl

    @triton.jit
    def _at_offsets(seed_ptr, off_ptr, out_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        m = i < n
        tl.store(out_ptr + i, tl.randn(tl.load(seed_ptr), tl.load(off_ptr + i, mask=m, other=0)), mask=m)

    offs = torch.tensor([0, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 5, 2 ** 40 + 3, 2 ** 62 + 11])
    s = torch.tensor([987654321], dtype=torch.int64)
    out = torch.empty(len(offs))
    _at_offsets[(1,)](s, offs, out, len(offs), BLOCK=8)
    assert (out - rng.randn_flat(s, offs)).abs().max().item() < 1e-5


def test_reproducible_and_fresh():
    x = torch.zeros(4, 3, 5, 5)
    s = torch.tensor(1.0)
    with burstkern.backend("reference"):
        a = ops.add_noise(x, s, generator=torch.Generator().manual_seed(3))
        b = ops.add_noise(x, s, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
        g = torch.Generator().manual_seed(3)
        c, d = ops.add_noise(x, s, generator=g), ops.add_noise(x, s, generator=g)
        assert torch.equal(c, a) and not torch.equal(c, d)
        assert (c - d).abs().mean() > 0.5  # not just a shifted copy: independent draws
        # the default generator follows torch.manual_seed
        torch.manual_seed(9)
        e = ops.add_noise(x, s)
        torch.manual_seed(9)
        assert torch.equal(e, ops.add_noise(x, s))


@needs_triton
def test_triton_reproducible_and_matches_reference_through_ops():
    x = torch.zeros(2, 3, 17, 9)
    s = torch.tensor([1.0, 2.0])
    with burstkern.backend("triton"):
        a = ops.add_noise(x, s, generator=torch.Generator().manual_seed(4))
        b = ops.add_noise(x, s, generator=torch.Generator().manual_seed(4))
    with burstkern.backend("reference"):
        r = ops.add_noise(x, s, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert_rel_close(a, r, torch.float32, "add_noise triton vs reference")


def test_distribution():
    n = 1 << 20
    z = rng.randn(rng.draw_seed(torch.device("cpu"), torch.Generator().manual_seed(1)), (n,)).double()
    assert torch.isfinite(z).all()
    # sampling errors: mean ~ 1/sqrt(n) = 7e-4, variance ~ sqrt(2/n) = 1e-3 (5 standard errors)
    assert abs(z.mean().item()) < 5 / n ** 0.5
    assert abs(z.var().item() - 1) < 5 * (2 / n) ** 0.5
    ks = scipy_stats.kstest(z.numpy(), "norm")
    assert ks.pvalue > 1e-4, f"KS statistic {ks.statistic:.2e}, p = {ks.pvalue:.1e}"
    # neighbouring counters are independent
    corr = (z[1:] * z[:-1]).mean().item()
    assert abs(corr) < 5 / n ** 0.5
    # two seeds give independent streams
    m = n >> 2
    w = rng.randn(rng.draw_seed(torch.device("cpu"), torch.Generator().manual_seed(2)), (m,)).double()
    assert abs((z[:m] * w).mean().item()) < 5 / m ** 0.5


def test_distribution_detects_a_bad_stream():
    """The statistics above can fail: a stream of uniforms, or a scaled normal stream, is rejected."""
    n = 1 << 16
    z = rng.randn(rng.draw_seed(torch.device("cpu"), torch.Generator().manual_seed(1)), (n,)).double()
    assert scipy_stats.kstest((z * 1.05).numpy(), "norm").pvalue < 1e-4
    assert scipy_stats.kstest(torch.rand(n, dtype=torch.float64).numpy(), "norm").pvalue < 1e-4


@requires_cuda
def test_cuda_graph_replay_is_fresh():
    x = torch.zeros(2, 3, 64, 64, device="cuda")
    s = torch.tensor(1.0, device="cuda")
    with burstkern.backend("triton"):
        ops.add_noise(x, s)  # compile before capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = ops.add_noise(x, s)
        graph.replay()
        a = out.clone()
        graph.replay()
        b = out.clone()
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    assert abs(a.std().item() - 1) < 0.05
