"""Tiled super-resolution of large bursts with bounded memory (``burstkern sr``).

The packed RAW burst ``[1, T, 4, h, w]`` is cut into overlapping tiles of ``tile`` x ``tile`` packed pixels
(``overlap`` shared on each side); each tile goes through the model alone and its output is blended into the
``[3, 8h, 8w]`` canvas with a linear ramp across the overlaps (weights normalised), so seams vanish and memory
grows with the tile, not the image. Bursts smaller than a tile (or not divisible by the encoder's pyramid) are
reflect-padded and cropped back.

Example::

    >>> sr = super_resolve(EBSRD.from_pretrained("tiny"), burst, method="one-step", tile=32, overlap=8)
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["super_resolve", "tile_starts"]

METHODS = ("one-step", "x_init", "teacher", "baseline")


def tile_starts(n: int, tile: int, overlap: int) -> list:
    """Start offsets covering ``[0, n)`` with tiles of ``tile`` overlapping by ``overlap`` (last one flush)."""
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _ramp(n: int, left: int, right: int, device) -> Tensor:
    w = torch.ones(n, device=device)
    if left:
        w[:left] = torch.linspace(1.0 / (left + 1), left / (left + 1), left, device=device)
    if right:
        w[n - right:] = torch.linspace(right / (right + 1), 1.0 / (right + 1), right, device=device)
    return w


def _tiles(h: int, w: int, tile: int, overlap: int) -> Iterator[Tuple[int, int]]:
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            yield y, x


@torch.no_grad()
def super_resolve(model, burst: Tensor, *, method: str = "one-step", tile: int = 32, overlap: int = 8,
                  teacher_steps: Optional[int] = None, seed: int = 0, progress: bool = False) -> Tensor:
    """Super-resolve ``burst`` ``[1, T, 4, h, w]`` (packed RGGB in [0, 1]) tile by tile: RGB ``[3, s·h, s·w]``
    in [0, 1] (linear camera RGB), ``s`` = the model's scale (8 packed px -> 8 output px per packed px).

    ``method``: ``"one-step"`` (default), ``"x_init"``, ``"teacher"`` or ``"baseline"``. ``tile``/``overlap``
    in packed pixels; ``tile`` is rounded up to the encoder's pyramid multiple."""
    from .baseline import aligned_baseline

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if burst.dim() != 5 or burst.shape[0] != 1 or burst.shape[2] != 4:
        raise ValueError(f"burst must be [1, T, 4, h, w], got {tuple(burst.shape)}")
    if not isinstance(tile, int) or tile < 4 or not isinstance(overlap, int) or not 0 <= overlap < tile // 2:
        raise ValueError(f"need tile >= 4 and 0 <= overlap < tile / 2, got tile={tile!r}, overlap={overlap!r}")
    cfg = model.config
    div = 2 ** (cfg.levels - 1)  # the encoder's pyramid (the U-Net runs at s x that: divisible as well)
    tile = -(-tile // div) * div
    s = cfg.scale
    _, t, _, h, w = burst.shape
    # pad to at least one tile and to the pyramid multiple (reflect where possible, else replicate)
    ph, pw = max(tile, -(-h // div) * div) - h, max(tile, -(-w // div) * div) - w
    x = burst[0]
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    H, W = x.shape[-2:]
    dev = burst.device
    out = torch.zeros(3, s * H, s * W, device=dev)
    norm = torch.zeros(1, s * H, s * W, device=dev)
    coords = list(_tiles(H, W, tile, overlap))
    it = coords
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(coords, desc=f"sr ({method})", unit="tile")
    ys, xs = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    for k, (y0, x0) in enumerate(it):
        b = x[None, :, :, y0:y0 + tile, x0:x0 + tile]
        g = torch.Generator(device=dev).manual_seed(seed + k)
        if method == "baseline":
            img = aligned_baseline(b, s // 2)
        elif method == "x_init":
            img = (model.initial(b)[0] + 1) / 2
        elif method == "teacher":
            img = (model.teacher(b, num_steps=teacher_steps, generator=g) + 1) / 2
        else:
            img = (model.one_step(b, generator=g) + 1) / 2
        img = img[0].float().clamp(0, 1)
        lo_y, hi_y = (overlap if y0 != ys[0] else 0), (overlap if y0 != ys[-1] else 0)
        lo_x, hi_x = (overlap if x0 != xs[0] else 0), (overlap if x0 != xs[-1] else 0)
        wy = _ramp(s * tile, s * lo_y, s * hi_y, dev)
        wx = _ramp(s * tile, s * lo_x, s * hi_x, dev)
        wgt = wy[:, None] * wx[None, :]
        out[:, s * y0:s * (y0 + tile), s * x0:s * (x0 + tile)] += img * wgt
        norm[:, s * y0:s * (y0 + tile), s * x0:s * (x0 + tile)] += wgt
    out = out / norm.clamp_min(1e-12)
    return out[:, :s * h, :s * w].contiguous()
