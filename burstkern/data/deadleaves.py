"""Dead-leaves images: procedurally generated natural-statistics sRGB images that a seed reproduces exactly.

The dead-leaves model (Matheron; Lee, Mumford and Huang 2001; used to train and evaluate image restoration, e.g.
Achddou et al. 2021 and the camera-evaluation standard IEEE 1858) stacks occluding discs whose radii follow a power
law ``p(r) ∝ r^-α`` (α = 3: scale invariance, the 1/f² power spectrum of natural images). Each disc here is
textured (a 1/f noise field and a sinusoidal grating with per-disc amplitude, frequency and orientation, plus a
linear shading gradient) and coloured from natural colour statistics: colours are drawn from the pixels of the
bundled *training* photographs (never the held-out ones), so hue, saturation and brightness follow real images.
A random Gaussian blur per image imitates depth of field.

Everything is vectorised in torch over images and discs (disc coverage in chunks, so memory stays bounded): the
front-most disc covering a pixel is the first one in drawing order (``argmin`` of the covering indices).
All randomness comes from one ``torch.Generator``: the same seed gives the same image on any machine.

Example::

    >>> g = torch.Generator().manual_seed(7)
    >>> img = dead_leaves(2, 112, generator=g)      # [2, 3, 112, 112] sRGB in [0, 1]
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dead_leaves", "natural_palette", "dead_leaves_image"]

_PALETTE: Optional[Tensor] = None


def natural_palette(num: int = 4096, seed: int = 0) -> Tensor:
    """``[num, 3]`` sRGB colours sampled (seeded) from the pixels of the bundled training photographs.

    Falls back to a simple colour model (random hue, log-normal brightness, beta saturation) when the photographs
    cannot be read. Cached after the first call with the default arguments.
    """
    global _PALETTE
    if _PALETTE is not None and num == 4096 and seed == 0:
        return _PALETTE
    g = torch.Generator().manual_seed(seed)
    try:
        from .dataset import load_bundled_images

        imgs = [im.reshape(3, -1).float() / 255.0 for im in load_bundled_images("train").values()]
        per = -(-num // len(imgs))
        cols = torch.cat([im[:, torch.randint(im.shape[1], (per,), generator=g)].t() for im in imgs])
        cols = cols[torch.randperm(cols.shape[0], generator=g)[:num]]
    except (RuntimeError, ImportError, OSError):
        hue = torch.rand(num, generator=g)
        sat = torch.rand(num, generator=g) ** 2
        val = (torch.randn(num, generator=g) * 0.5 - 0.8).exp().clamp(0, 1)
        k = (torch.arange(3)[None] * 2 / 3 + hue[:, None]) % 1.0
        base = 0.5 + 0.5 * torch.cos(2 * math.pi * k)
        cols = val[:, None] * (1 - sat[:, None] + sat[:, None] * base)
    cols = cols.contiguous()
    if num == 4096 and seed == 0:
        _PALETTE = cols
    return cols


def _pink_noise(batch: int, fields: int, size: int, generator, device) -> Tensor:
    """``[batch, fields, size, size]`` zero-mean, unit-std Gaussian fields with a 1/f amplitude spectrum."""
    z = torch.randn(batch, fields, size, size, generator=generator, device=device)
    f = torch.fft.fftfreq(size, device=device)
    rad = (f[:, None] ** 2 + f[None, :] ** 2).sqrt().clamp_min(1.0 / size)
    spec = torch.fft.fft2(z) / rad
    spec[..., 0, 0] = 0
    out = torch.fft.ifft2(spec).real
    return out / out.flatten(2).std(dim=2)[..., None, None].clamp_min(1e-8)


def _blur(img: Tensor, sigma: Tensor) -> Tensor:
    """Per-image separable Gaussian blur (``sigma [B]`` pixels, 0 = none) of ``[B, C, H, W]``."""
    b, c, h, w = img.shape
    rad = int(math.ceil(3 * float(sigma.max()))) if float(sigma.max()) > 0 else 0
    if rad == 0:
        return img
    x = torch.arange(-rad, rad + 1, dtype=img.dtype, device=img.device)
    s = sigma.to(img.dtype).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)                                   # [B, K]
    k = k.repeat_interleave(c, 0)                                    # [B*C, K]
    y = F.pad(img.reshape(1, b * c, h, w), (rad, rad, rad, rad), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


@torch.no_grad()
def dead_leaves(batch: int, size: int, generator: Optional[torch.Generator] = None, *, alpha: float = 3.0,
                r_min: float = 4.0, r_max: Optional[float] = None, coverage: float = 5.0,
                palette: Optional[Tensor] = None, texture: float = 1.0, max_blur: float = 2.0,
                chunk: int = 256) -> Tensor:
    """A batch of textured dead-leaves images, sRGB ``[batch, 3, size, size]`` float32 in [0, 1].

    Args:
        batch, size: number and side of the images.
        generator: the source of all randomness (CPU generator recommended: same draws everywhere).
        alpha: power-law exponent of the radii on [r_min, r_max] (3 = scale invariant).
        r_min, r_max: radius range in pixels (r_max default ``size / 2``).
        coverage: expected number of discs covering a pixel (sets the disc count; the rest shows the
            textured background).
        palette: ``[M, 3]`` colours to draw from (default :func:`natural_palette`).
        texture: scale of the per-disc texture amplitudes (0 = flat discs).
        max_blur: each image gets a Gaussian blur with σ ~ U(0, max_blur) pixels (depth of field).
        chunk: bounds the memory of one rasterisation block (about ``chunk * 64`` box pixels).
    """
    if not isinstance(batch, int) or batch < 1 or not isinstance(size, int) or size < 4:
        raise ValueError(f"dead_leaves: batch must be an int >= 1 and size an int >= 4, got {batch!r}, {size!r}")
    dev = generator.device if generator is not None else torch.device("cpu")
    r_max = float(size) / 2 if r_max is None else float(r_max)
    if not 0 < r_min < r_max:
        raise ValueError(f"dead_leaves: need 0 < r_min < r_max, got {r_min}, {r_max}")
    pal = (natural_palette() if palette is None else palette).to(dev, torch.float32)
    # expected disc area for p(r) ∝ r^-alpha on [r_min, r_max] -> disc count for the requested coverage
    a1, a3 = 1.0 - alpha, 3.0 - alpha
    if abs(a3) < 1e-9:
        er2 = math.log(r_max / r_min) / ((r_min ** a1 - r_max ** a1) / (alpha - 1.0))
    else:
        er2 = ((r_max ** a3 - r_min ** a3) / a3) / ((r_max ** a1 - r_min ** a1) / a1)
    n = max(16, int(coverage * size * size / (math.pi * er2)))

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=dev)

    u = rand(batch, n)
    radius = (r_min ** a1 + u * (r_max ** a1 - r_min ** a1)) ** (1.0 / a1)        # [B, n]
    cx, cy = rand(batch, n) * size, rand(batch, n) * size
    # per-disc appearance (index n = the background)
    color = pal[torch.randint(pal.shape[0], (batch, n + 1), generator=generator, device=dev)]  # [B, n+1, 3]
    noise_amp = texture * 0.25 * rand(batch, n + 1) ** 2
    grat_amp = texture * 0.2 * rand(batch, n + 1) ** 3
    grat_freq = 2 * math.pi / (2.0 + 30.0 * rand(batch, n + 1))                     # 2..32 px periods
    grat_dir = 2 * math.pi * rand(batch, n + 1)
    grat_phase = 2 * math.pi * rand(batch, n + 1)
    shade = texture * 0.3 * (rand(batch, n + 1, 2) - 0.5)                          # gradient per radius
    field_id = torch.randint(4, (batch, n + 1), generator=generator, device=dev)
    blur = max_blur * rand(batch)
    fields = _pink_noise(batch, 4, size, generator, dev)                            # [B, 4, S, S]

    # front-most covering disc per pixel = the smallest index among the discs that cover it (n: none). Discs are
    # rasterised in bounding boxes, binned by radius (box side 2h + 2 for r in (h/2, h]), and the indices
    # scatter-reduced with amin: work ~ 6 x coverage x pixels, not discs x pixels.
    ys = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    yy, xx = ys[:, None].expand(size, size), ys[None, :].expand(size, size)
    idx = torch.full((batch * size * size,), n, dtype=torch.long, device=dev)
    disc = torch.arange(n, device=dev)[None].expand(batch, n)
    img_of = torch.arange(batch, device=dev)[:, None].expand(batch, n)
    lo, h = 0.0, 1
    while lo < r_max:
        sel = (radius > lo) & (radius <= h)
        if bool(sel.any()):
            r, x0, y0 = radius[sel], cx[sel], cy[sel]
            d, b = disc[sel], img_of[sel]
            k = 2 * h + 2
            off = torch.arange(k, device=dev)
            bx = (x0.floor().long() - h)[:, None] + off[None]                       # [m, k]
            by = (y0.floor().long() - h)[:, None] + off[None]
            for s0 in range(0, r.shape[0], max(1, chunk * 64 // (k * k) + 1)):
                s1 = min(r.shape[0], s0 + max(1, chunk * 64 // (k * k) + 1))
                px, py = bx[s0:s1, None, :], by[s0:s1, :, None]                     # [c, 1, k], [c, k, 1]
                inside = ((px.float() + 0.5 - x0[s0:s1, None, None]) ** 2
                          + (py.float() + 0.5 - y0[s0:s1, None, None]) ** 2 < r[s0:s1, None, None] ** 2)
                inside &= (px >= 0) & (px < size) & (py >= 0) & (py < size)
                flat = b[s0:s1, None, None] * size * size + py.clamp(0, size - 1) * size + px.clamp(0, size - 1)
                val = d[s0:s1, None, None].expand_as(flat)
                idx.scatter_reduce_(0, flat[inside], val[inside], reduce="amin")
        lo, h = float(h), 2 * h
    idx = idx.reshape(batch, size, size)

    def per_pixel(p):  # [B, n+1] or [B, n+1, k] -> gathered at idx: [B, S, S] or [B, S, S, k]
        if p.dim() == 2:
            return torch.gather(p, 1, idx.reshape(batch, -1)).reshape(batch, size, size)
        k = p.shape[-1]
        return torch.gather(p, 1, idx.reshape(batch, -1, 1).expand(-1, -1, k)).reshape(batch, size, size, k)

    ccx = per_pixel(torch.cat([cx, torch.full_like(cx[:, :1], size / 2)], 1))
    ccy = per_pixel(torch.cat([cy, torch.full_like(cy[:, :1], size / 2)], 1))
    rr = per_pixel(torch.cat([radius, torch.full_like(radius[:, :1], size / 2)], 1))
    sh = per_pixel(shade)
    gain = 1.0 + sh[..., 0] * (xx - ccx) / rr + sh[..., 1] * (yy - ccy) / rr
    fid = per_pixel(field_id)
    field = torch.gather(fields, 1, fid[:, None]).squeeze(1)
    gain = gain + per_pixel(noise_amp) * field
    gd = per_pixel(grat_dir)
    arg = per_pixel(grat_freq) * (xx * gd.cos() + yy * gd.sin()) + per_pixel(grat_phase)
    gain = gain + per_pixel(grat_amp) * torch.sin(arg)
    img = per_pixel(color).permute(0, 3, 1, 2) * gain[:, None].clamp_min(0.0)
    img = _blur(img, blur)
    return img.clamp(0.0, 1.0).contiguous()


def dead_leaves_image(seed: int, size: int, **kwargs) -> Tensor:
    """One dead-leaves image ``[3, size, size]`` that ``seed`` (an int in [0, 2**32)) reproduces exactly."""
    if not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"dead_leaves_image: seed must be an int in [0, 2**32), got {seed!r}")
    return dead_leaves(1, size, torch.Generator().manual_seed(seed), **kwargs)[0]
