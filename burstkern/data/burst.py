"""Synthetic RAW bursts from single sRGB images (Bhat et al., "Deep Burst Super-Resolution", CVPR 2021).

Pipeline (DESIGN.md "Synthetic bursts"), batched over images and frames, CPU or GPU::

    sRGB [B, 3, H, W] --inverse ISP (isp.unprocess)--> linear camera RGB            (ground truth: border cropped)
      --per frame: affine warp (translation U(-24, 24) px, rotation U(-1, 1) deg; frame 0 only the fixed
        (d/2 - 0.5)-px shift that centres the downsampling grid), bilinear, zeros outside
      --crop the border--> --bilinear downsample x d--> --RGGB mosaic packed to 4 channels-->
      --shot + read noise (variance shot * x + read), clamp [0, 1]--> burst [B, T, 4, h, w]

With the defaults (d = 4, border 24) a 432 x 432 input gives the ground truth [3, 384, 384] and the burst
[T, 4, 48, 48].

Geometry. The warp follows OpenCV's ``warpAffine`` convention used by the original code: the forward map is
``p' = R (p + t - c) + c`` (``R`` a counter-clockwise rotation by ``theta`` in image coordinates, ``c`` the
pixel-grid centre) and the warped frame is ``warped(p') = image(p)``. The bilinear x d downsampling reads
position ``d*i + (d - 1)/2`` of the cropped frame (``cv2.resize`` INTER_LINEAR / ``F.interpolate``
bilinear without antialiasing). For frame 0 the two cancel: LR pixel ``i`` of frame 0 sits exactly on
ground-truth pixel ``d*i`` (for d = 4 it is the [1, 2, 1] / 4 average around it, separably), so frame 0 is
the aligned reference frame.

Reproducibility. All randomness comes from one optional ``torch.Generator``: parameters (ISP, shifts, noise
levels) are drawn first, the noise tensor last, all on the generator's device, then moved to the image's
device. The same seed therefore gives the same burst, with or without noise (``noise=False`` leaves
everything else unchanged), and a CPU generator gives the same draws for CPU and GPU images.

Example::

    >>> g = torch.Generator().manual_seed(0)
    >>> out = synthesize_burst(torch.rand(3, 432, 432), burst_size=8, generator=g)
    >>> out["burst"].shape, out["gt"].shape
    (torch.Size([8, 4, 48, 48]), torch.Size([3, 384, 384]))
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import isp
from .isp import _gen_device, _normal, _uniform

__all__ = [
    "SHOT_NOISE_RANGE", "random_noise_levels", "add_noise", "random_shifts", "warp_grid", "warp_frames",
    "downsample", "mosaic", "synthesize_burst",
]

SHOT_NOISE_RANGE = (1e-4, 0.012)
# log(read) = READ_NOISE_SLOPE * log(shot) + READ_NOISE_INTERCEPT + N(0, READ_NOISE_STD) (Brooks et al.)
READ_NOISE_SLOPE = 2.18
READ_NOISE_INTERCEPT = 1.20
READ_NOISE_STD = 0.26


# ----------------------------------------------------------------------------------------------
# noise
# ----------------------------------------------------------------------------------------------
def random_noise_levels(batch: int, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """(shot, read) noise levels, each ``[batch]`` fp64 on the generator's device.

    ``shot`` is log-uniform in [1e-4, 0.012]; ``read = exp(2.18 * ln(shot) + 1.20 + N(0, 0.26))``.
    """
    log_shot = _uniform((batch,), math.log(SHOT_NOISE_RANGE[0]), math.log(SHOT_NOISE_RANGE[1]), generator)
    log_read = READ_NOISE_SLOPE * log_shot + READ_NOISE_INTERCEPT + _normal((batch,), 0.0, READ_NOISE_STD, generator)
    return log_shot.exp(), log_read.exp()


def add_noise(raw: Tensor, shot: Tensor, read: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Heteroscedastic Gaussian noise, then clamp: ``clamp(x + sqrt(shot * x + read) * N(0, 1), 0, 1)``.

    raw: ``[B, ...]`` (values >= 0); shot, read: ``[B]`` tensors or Python floats. The normal draws are made on
    the generator's device in fp32 (fp64 for fp64 ``raw``) and moved to ``raw``'s device.
    """
    def per_batch(v):
        v = torch.as_tensor(v, dtype=raw.dtype, device=raw.device)
        return v.reshape(v.shape + (1,) * (raw.dim() - v.dim()))

    variance = per_batch(shot) * raw + per_batch(read)
    ndt = torch.float64 if raw.dtype == torch.float64 else torch.float32
    z = torch.randn(raw.shape, generator=generator, device=_gen_device(generator), dtype=ndt)
    z = z.to(device=raw.device, dtype=raw.dtype)
    return (raw + variance.clamp_min(0.0).sqrt() * z).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------
def random_shifts(batch: int, burst_size: int, downsample: int = 4, max_translation: float = 24.0,
                  max_rotation: float = 1.0, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Per-frame warps: translation ``[batch, T, 2]`` (x, y in HR pixels) and rotation ``[batch, T]`` (degrees).

    Frames 1.. get ``U(-max_translation, max_translation)`` and ``U(-max_rotation, max_rotation)``; frame 0 gets
    only the shift ``(d/2 - 0.5, d/2 - 0.5)`` that centres the x d downsampling grid on HR pixel ``d*i``.
    """
    shift = downsample / 2.0 - 0.5
    trans = _uniform((batch, burst_size, 2), -max_translation, max_translation, generator)
    rot = _uniform((batch, burst_size), -max_rotation, max_rotation, generator)
    trans[:, 0] = shift
    rot[:, 0] = 0.0
    return trans, rot


def warp_grid(translation: Tensor, rotation: Tensor, height: int, width: int,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """Sampling grid for ``F.grid_sample(..., align_corners=False)`` of the warps; ``[N, H, W, 2]``.

    translation ``[N, 2]`` (x, y pixels), rotation ``[N]`` (degrees, counter-clockwise). Output pixel ``p'``
    reads input position ``p = R^-1 (p' - c) + c - t`` with ``c = ((W - 1)/2, (H - 1)/2)``.
    """
    dev = translation.device
    theta = torch.deg2rad(rotation.to(torch.float64))
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    tx = translation[:, 0].to(torch.float64)[:, None, None]
    ty = translation[:, 1].to(torch.float64)[:, None, None]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    dy = (torch.arange(height, device=dev, dtype=torch.float64) - cy)[None, :, None]
    dx = (torch.arange(width, device=dev, dtype=torch.float64) - cx)[None, None, :]
    x = cos * dx - sin * dy + cx - tx
    y = sin * dx + cos * dy + cy - ty
    # pixel index -> grid_sample's [-1, 1] with align_corners=False (pixel centres at (2i + 1)/n - 1)
    grid = torch.stack(((2.0 * x + 1.0) / width - 1.0, (2.0 * y + 1.0) / height - 1.0), dim=-1)
    return grid.to(dtype)


def warp_frames(image: Tensor, translation: Tensor, rotation: Tensor) -> Tensor:
    """Bilinear warps of each image into T frames, zeros outside: ``[B, C, H, W]`` -> ``[B, T, C, H, W]``.

    translation ``[B, T, 2]``, rotation ``[B, T]`` as from :func:`random_shifts`; one batched grid_sample.
    """
    b, c, h, w = image.shape
    t = translation.shape[1]
    grid = warp_grid(translation.reshape(b * t, 2).to(image.device), rotation.reshape(b * t).to(image.device),
                     h, w, dtype=image.dtype)
    frames = image[:, None].expand(b, t, c, h, w).reshape(b * t, c, h, w)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(b, t, c, h, w)


def downsample(image: Tensor, factor: int) -> Tensor:
    """Bilinear x ``factor`` downsampling without antialiasing (``cv2.resize`` INTER_LINEAR semantics).

    ``[..., C, H, W]`` -> ``[..., C, H / factor, W / factor]``; output pixel ``i`` reads position
    ``factor * i + (factor - 1) / 2``.
    """
    if factor == 1:
        return image
    *lead, c, h, w = image.shape
    x = image.reshape(-1, c, h, w)
    x = F.interpolate(x, size=(h // factor, w // factor), mode="bilinear", align_corners=False, antialias=False)
    return x.reshape(*lead, c, h // factor, w // factor)


def mosaic(image: Tensor) -> Tensor:
    """RGGB Bayer sampling packed to 4 channels: ``[..., 3, H, W]`` -> ``[..., 4, H/2, W/2]``.

    Channels: R at (even row, even col), G at (even, odd), G at (odd, even), B at (odd, odd).
    """
    if image.shape[-3] != 3 or image.shape[-2] % 2 or image.shape[-1] % 2:
        raise ValueError(f"mosaic: image must be [..., 3, H, W] with even H and W, got shape {tuple(image.shape)}")
    return torch.stack((image[..., 0, 0::2, 0::2], image[..., 1, 0::2, 1::2],
                        image[..., 1, 1::2, 0::2], image[..., 2, 1::2, 1::2]), dim=-3)


# ----------------------------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------------------------
def synthesize_burst(image: Tensor, burst_size: int = 8, *, downsample_factor: int = 4, border: int = 24,
                     max_translation: float = 24.0, max_rotation: float = 1.0, noise: bool = True,
                     generator: Optional[torch.Generator] = None) -> Dict:
    """A synthetic RAW burst, its linear-RGB ground truth and the sampled parameters.

    Args:
        image: sRGB in [0, 1], ``[3, H, W]`` or ``[B, 3, H, W]``, floating point; ``H - 2*border`` and
            ``W - 2*border`` must be multiples of ``2 * downsample_factor``.
        burst_size: frames T (>= 1); frame 0 is the aligned reference.
        downsample_factor, border, max_translation, max_rotation: see the module docstring.
        noise: add shot/read noise (``False``: same seed gives the same burst without noise).
        generator: source of all randomness (``None``: the global CPU RNG).

    Returns:
        dict with ``burst`` ``[B, T, 4, h, w]`` (``h = (H - 2*border) / (2*downsample_factor)``), ``gt``
        ``[B, 3, H - 2*border, W - 2*border]`` (linear camera RGB, same dtype/device as ``image``) and
        ``meta``: ``rgb2cam``/``cam2rgb`` ``[B, 3, 3]``, ``rgb_gain``/``red_gain``/``blue_gain`` ``[B]``,
        ``shot_noise``/``read_noise`` ``[B]`` (0 when ``noise=False``), ``translation`` ``[B, T, 2]``,
        ``rotation`` ``[B, T]`` (fp64, on ``image``'s device). Unbatched input gives unbatched outputs.

    Example::

        >>> g = torch.Generator().manual_seed(1)
        >>> out = synthesize_burst(torch.rand(2, 3, 432, 432), burst_size=14, generator=g)
        >>> out["burst"].shape
        torch.Size([2, 14, 4, 48, 48])
        >>> rgb = isp.process(out["gt"], out["meta"])    # back to sRGB
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"synthesize_burst: image must be a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"synthesize_burst: image must be floating point in [0, 1], got dtype {image.dtype}")
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"synthesize_burst: image must be [3, H, W] or [B, 3, H, W], got shape {tuple(image.shape)}")
    for name, v, lo in (("burst_size", burst_size, 1), ("downsample_factor", downsample_factor, 1),
                        ("border", border, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"synthesize_burst: {name} must be an int >= {lo}, got {v!r}")
    unbatched, shape = image.dim() == 3, tuple(image.shape)
    if unbatched:
        image = image[None]
    b, _, h, w = image.shape
    step = 2 * downsample_factor
    hc, wc = h - 2 * border, w - 2 * border
    if hc <= 0 or wc <= 0 or hc % step or wc % step:
        raise ValueError(f"synthesize_burst: image of shape {shape} minus a {border}-px border is "
                         f"{hc}x{wc}; expected a positive multiple of 2*downsample_factor = {step} in each dim")

    dev = image.device
    # all parameters first, the noise tensor last: noise=False then changes nothing else
    params = isp.random_isp_params(b, generator, device=dev)
    trans, rot = random_shifts(b, burst_size, downsample_factor, max_translation, max_rotation, generator)
    shot, read = random_noise_levels(b, generator)
    trans, rot, shot, read = trans.to(dev), rot.to(dev), shot.to(dev), read.to(dev)

    linear = isp.unprocess(image, params)
    frames = warp_frames(linear, trans, rot)
    frames = frames[..., border:h - border, border:w - border]
    burst = mosaic(downsample(frames, downsample_factor))
    if noise:
        burst = add_noise(burst, shot, read, generator)
    else:
        shot, read = torch.zeros_like(shot), torch.zeros_like(read)
    gt = linear[..., border:h - border, border:w - border]

    meta = dict(params, shot_noise=shot, read_noise=read, translation=trans, rotation=rot)
    out = {"burst": burst.contiguous(), "gt": gt.contiguous(), "meta": meta}
    if unbatched:
        out = {"burst": out["burst"][0], "gt": out["gt"][0], "meta": {k: v[0] for k, v in meta.items()}}
    return out
