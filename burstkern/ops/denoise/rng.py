"""The counter-based normal RNG of the denoise ops: its spec, in plain PyTorch.

Ops that draw noise in-kernel (``add_noise``, ``cm_update``) use, for the element with logical (row-major)
index ``i`` of a call, the normal value that Triton's ``tl.randn(seed, i)`` gives for an int64 offset ``i``:

1. Philox 4x32-10 with counter ``(i & 0xffffffff, i >> 32, 0, 0)`` and key ``(seed & 0xffffffff,
   (seed >> 32) & 0xffffffff)``; round constants ``0xD2511F53``/``0xCD9E8D57``, key increments
   ``0x9E3779B9``/``0xBB67AE85``; each round ``c0' = hi(B*c2) ^ c1 ^ k0``, ``c2' = hi(A*c0) ^ c3 ^ k1``,
   ``c1' = lo(B*c2)``, ``c3' = lo(A*c0)``, then the key is raised.
2. The first two outputs ``r0, r1`` become uniforms: as int32 ``v``, ``v < 0 -> ~v``, then
   ``float32(v) * float32(4.6566127342e-10)``.
3. Box-Muller: ``u1 = max(1e-7, u1)``, ``n = sqrt(-2 log u1) * cos(2*pi * u2)`` in float32.

(Read from ``triton/language/random.py`` of Triton 3.8, the installed one; the Triton 3.x sources with
``math.umulhi``/``offset_hi`` — the 3.6 line included — have the same constants, counter layout and
uint->float mapping. Older 2.x releases used another uniform scale and no 64-bit counter.)

``seed`` is one int64 per call, drawn with :func:`draw_seed` from the torch generator of the tensors'
device into a device tensor, so drawing never syncs with the host, advances the generator (no two calls
share a stream) and is fresh on every CUDA-graph replay. Kernels load it from that tensor.

:func:`randn` below implements the same function with int64 torch arithmetic (32-bit masks, 32x32->64
products split into 16-bit halves so nothing overflows), so the reference backend draws the very values the
Triton kernels draw, up to float32 rounding of log/cos/sqrt.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

_M32 = 0xFFFFFFFF
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
N_ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10  # rounded to float32 before use, as Triton does
SEED_HIGH = 1 << 62  # seeds are drawn uniformly in [0, 2^62): both key words get random bits


def draw_seed(device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One int64 seed ``[1]`` on ``device`` from ``generator`` (default: the device's default generator).

    A tiny ``torch.randint`` on the device: no host sync, graph-capturable, advances the generator.
    """
    return torch.randint(0, SEED_HIGH, (1,), device=device, dtype=torch.int64, generator=generator)


def _mulhilo(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit words of the 64-bit product of the constant ``a`` and uint32 values ``b`` (int64)."""
    ah, al = a >> 16, a & 0xFFFF
    bh, bl = b >> 16, b & 0xFFFF
    ll = al * bl
    lh = al * bh
    hl = ah * bl
    hh = ah * bh
    mid = (ll >> 16) + (lh & 0xFFFF) + (hl & 0xFFFF)
    lo = ((mid & 0xFFFF) << 16) | (ll & 0xFFFF)
    hi = (hh + (lh >> 16) + (hl >> 16) + (mid >> 16)) & _M32
    return hi, lo


def philox(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, c2: Optional[torch.Tensor] = None,
           c3: Optional[torch.Tensor] = None):
    """Philox 4x32-10 on counters ``(c0, c1, c2, c3)`` (int64 tensors holding uint32; c2, c3 default 0) with
    the key ``(seed & 0xffffffff, seed >> 32)`` of an int64 seed tensor. Returns the four output words."""
    s = seed.reshape(()).to(torch.int64)
    k0 = s & _M32
    k1 = (s >> 32) & _M32
    c2 = torch.zeros_like(c0) if c2 is None else c2
    c3 = torch.zeros_like(c0) if c3 is None else c3
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mulhilo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _M32
        k1 = (k1 + PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def _uniform(r: torch.Tensor) -> torch.Tensor:
    # bitcast to int32; negative v -> ~v, i.e. r >= 2^31 -> 2^32 - 1 - r
    v = torch.where(r >= (1 << 31), _M32 - r, r)
    return v.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=r.device)


def randn_flat(seed: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """float32 normals for int64 ``offsets`` (element indices) under ``seed`` (an int64 tensor of 1 element)."""
    offsets = offsets.to(torch.int64)
    r0, r1, _, _ = philox(seed, offsets & _M32, (offsets >> 32) & _M32)
    u1 = torch.clamp_min(_uniform(r0), 1.0e-7)
    th = torch.tensor(6.283185307179586, dtype=torch.float32, device=offsets.device) * _uniform(r1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(th)


def randn(seed: torch.Tensor, shape: Sequence[int], device=None) -> torch.Tensor:
    """Contiguous float32 ``shape`` tensor whose row-major element ``i`` is the normal of counter ``i``.

    Example::

        >>> seed = draw_seed(torch.device("cpu"))
        >>> eps = randn(seed, (2, 3, 8, 8))
    """
    device = seed.device if device is None else device
    n = 1
    for s in shape:
        n *= int(s)
    offsets = torch.arange(n, dtype=torch.int64, device=device)
    return randn_flat(seed.to(device), offsets).reshape(tuple(shape))
