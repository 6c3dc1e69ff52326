"""Inverse and forward camera ISP of the synthetic-burst pipeline (DESIGN.md "Synthetic bursts").

The inverse ISP ("unprocessing", Brooks et al., CVPR 2019, as used by Bhat et al.'s Deep Burst SR) maps an sRGB
image to linear camera RGB::

    sRGB --invert smoothstep--> --gamma expand x^2.2--> --rgb2cam CCM--> --inverse gains (highlight-safe)--> clamp

and the forward ISP undoes it::

    linear camera RGB (or packed RGGB) --gains, clamp--> --cam2rgb CCM, clamp--> --gamma x^(1/2.2)--> --smoothstep

Every function is batched: images are ``[..., C, H, W]`` and per-image parameters have the leading shape
``[...]`` (or are Python scalars). Random parameters are drawn from an optional ``torch.Generator`` on the
generator's device and then moved to the image's device, so a CPU generator gives the same draws whether the
images live on the CPU or a GPU.

Example::

    >>> g = torch.Generator().manual_seed(0)
    >>> srgb = torch.rand(2, 3, 64, 64)
    >>> params = random_isp_params(2, generator=g)
    >>> linear = unprocess(srgb, params)          # [2, 3, 64, 64], linear camera RGB in [0, 1]
    >>> back = process(linear, params)            # ~= srgb away from clipped highlights
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "XYZ2CAMS", "RGB2XYZ", "smoothstep", "invert_smoothstep", "gamma_expand", "gamma_compress", "random_ccm",
    "random_gains", "random_isp_params", "apply_ccm", "gain_vector", "apply_gains", "safe_invert_gains",
    "packed_raw_to_rgb", "unprocess", "process",
]

# XYZ -> camera colour matrices of four real cameras: the standard ``xyz2cams`` list of Brooks et al.,
# "Unprocessing Images for Learned Raw Denoising" (CVPR 2019, github.com/timothybrooks/unprocessing,
# unprocess.py: random_ccm), reused unchanged by Bhat et al., "Deep Burst Super-Resolution" (CVPR 2021,
# github.com/goutamgmb/deep-burst-sr, data/camera_pipeline.py).
XYZ2CAMS = (
    ((1.0234, -0.2969, -0.2266), (-0.5625, 1.6328, -0.0469), (-0.0703, 0.2188, 0.6406)),
    ((0.4913, -0.0541, -0.0202), (-0.6130, 1.3513, 0.2906), (-0.1564, 0.2151, 0.7183)),
    ((0.8380, -0.2630, -0.0639), (-0.2887, 1.0725, 0.2496), (-0.0627, 0.1427, 0.5438)),
    ((0.6596, -0.2079, -0.0562), (-0.4782, 1.3016, 0.1933), (-0.0970, 0.1581, 0.5181)),
)

# Linear sRGB (D65) -> CIE XYZ.
RGB2XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)

# Floor before the power laws: keeps x^2.2 / x^(1/2.2) and their gradients finite at 0.
GAMMA_EPS = 1e-8
# Gray level above which the inverse gains fade out so saturated highlights are not dimmed (Brooks et al.).
HIGHLIGHT_INFLECTION = 0.9

Scalar = Union[float, Tensor]
_ISP_KEYS = ("rgb2cam", "cam2rgb", "rgb_gain", "red_gain", "blue_gain")


# ----------------------------------------------------------------------------------------------
# tone and gamma curves
# ----------------------------------------------------------------------------------------------
def smoothstep(x: Tensor) -> Tensor:
    """Global tone curve ``3x^2 - 2x^3`` (the forward ISP's last step); any shape."""
    return x * x * (3.0 - 2.0 * x)


def invert_smoothstep(x: Tensor) -> Tensor:
    """Exact inverse of :func:`smoothstep` on [0, 1]: ``0.5 - sin(asin(1 - 2x) / 3)``; input clamped to [0, 1]."""
    x = x.clamp(0.0, 1.0)
    return 0.5 - torch.sin(torch.asin(1.0 - 2.0 * x) / 3.0)


def gamma_expand(x: Tensor, eps: float = GAMMA_EPS) -> Tensor:
    """sRGB-like gamma -> linear: ``max(x, eps)^2.2``."""
    return x.clamp_min(eps) ** 2.2


def gamma_compress(x: Tensor, eps: float = GAMMA_EPS) -> Tensor:
    """Linear -> gamma: ``max(x, eps)^(1/2.2)``."""
    return x.clamp_min(eps) ** (1.0 / 2.2)


# ----------------------------------------------------------------------------------------------
# random parameters
# ----------------------------------------------------------------------------------------------
def _gen_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(shape, low: float, high: float, generator, dtype=torch.float64) -> Tensor:
    u = torch.rand(shape, generator=generator, device=_gen_device(generator), dtype=dtype)
    return low + (high - low) * u


def _normal(shape, mean: float, std: float, generator, dtype=torch.float64) -> Tensor:
    return mean + std * torch.randn(shape, generator=generator, device=_gen_device(generator), dtype=dtype)


def random_ccm(batch: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random linear-sRGB -> camera colour matrices, ``[batch, 3, 3]`` fp64 on the generator's device.

    A random convex combination (weights ``U(0, 1)``, normalised) of :data:`XYZ2CAMS`, times sRGB -> XYZ,
    with every row normalised to sum 1 (so gray stays gray).
    """
    dev = _gen_device(generator)
    xyz2cams = torch.tensor(XYZ2CAMS, dtype=torch.float64, device=dev)
    w = _uniform((batch, len(XYZ2CAMS)), 0.0, 1.0, generator)
    w = w / w.sum(dim=1, keepdim=True)
    xyz2cam = torch.einsum("bk,kij->bij", w, xyz2cams)
    rgb2cam = xyz2cam @ torch.tensor(RGB2XYZ, dtype=torch.float64, device=dev)
    return rgb2cam / rgb2cam.sum(dim=-1, keepdim=True)


def random_gains(batch: int, generator: Optional[torch.Generator] = None):
    """Random (rgb_gain, red_gain, blue_gain), each ``[batch]`` fp64 on the generator's device.

    Brightening ``rgb_gain = 1 / N(0.8, 0.1)``; white balance ``red ~ U(1.9, 2.4)``, ``blue ~ U(1.5, 1.9)``.
    These are the *forward* gains; the inverse ISP divides by them.
    """
    rgb = 1.0 / _normal((batch,), 0.8, 0.1, generator)
    red = _uniform((batch,), 1.9, 2.4, generator)
    blue = _uniform((batch,), 1.5, 1.9, generator)
    return rgb, red, blue


def random_isp_params(batch: int, generator: Optional[torch.Generator] = None,
                      device: Optional[torch.device] = None) -> Dict[str, Tensor]:
    """Draw one set of ISP parameters per image.

    Returns a dict of fp64 tensors on ``device`` (default: the generator's device): ``rgb2cam``/``cam2rgb``
    ``[batch, 3, 3]``, ``rgb_gain``/``red_gain``/``blue_gain`` ``[batch]``.
    """
    rgb2cam = random_ccm(batch, generator)
    rgb, red, blue = random_gains(batch, generator)
    params = {"rgb2cam": rgb2cam, "cam2rgb": torch.linalg.inv(rgb2cam), "rgb_gain": rgb, "red_gain": red,
              "blue_gain": blue}
    if device is not None:
        params = {k: v.to(device) for k, v in params.items()}
    return params


# ----------------------------------------------------------------------------------------------
# colour and gains
# ----------------------------------------------------------------------------------------------
def _per_image(v: Scalar, image: Tensor, ndim_tail: int) -> Tensor:
    """A scalar or ``[...]`` tensor as a tensor broadcastable against ``image`` (``ndim_tail`` trailing dims)."""
    t = torch.as_tensor(v, dtype=image.dtype, device=image.device)
    return t.reshape(t.shape + (1,) * ndim_tail)


def apply_ccm(image: Tensor, ccm: Tensor) -> Tensor:
    """``out[..., i, h, w] = sum_j ccm[..., i, j] * image[..., j, h, w]``.

    image: ``[..., 3, H, W]``; ccm: ``[3, 3]`` or ``[..., 3, 3]`` (one matrix per image).
    """
    if image.shape[-3] != 3:
        raise ValueError(f"apply_ccm: image must have 3 channels at dim -3, got shape {tuple(image.shape)}")
    if ccm.shape[-2:] != (3, 3):
        raise ValueError(f"apply_ccm: ccm must be [..., 3, 3], got shape {tuple(ccm.shape)}")
    ccm = ccm.to(device=image.device, dtype=image.dtype)
    return torch.einsum("...ij,...jhw->...ihw", ccm, image)


def gain_vector(image: Tensor, rgb_gain: Scalar, red_gain: Scalar, blue_gain: Scalar) -> Tensor:
    """Per-channel forward gains broadcastable against ``image`` ``[..., C, H, W]`` with C = 3 (RGB) or 4 (RGGB)."""
    c = image.shape[-3]
    if c not in (3, 4):
        raise ValueError(f"gains: image must have 3 (RGB) or 4 (packed RGGB) channels at dim -3, "
                         f"got shape {tuple(image.shape)}")
    red = _per_image(red_gain, image, 0)
    blue = _per_image(blue_gain, image, 0)
    one = torch.ones_like(red)
    chans = [red, one, blue] if c == 3 else [red, one, one, blue]
    g = torch.stack(chans, dim=-1) * _per_image(rgb_gain, image, 1)
    return g[..., None, None]


def apply_gains(image: Tensor, rgb_gain: Scalar, red_gain: Scalar, blue_gain: Scalar) -> Tensor:
    """Forward white balance and brightening, clamped to [0, 1]; image ``[..., 3|4, H, W]``."""
    return (image * gain_vector(image, rgb_gain, red_gain, blue_gain)).clamp(0.0, 1.0)


def safe_invert_gains(image: Tensor, rgb_gain: Scalar, red_gain: Scalar, blue_gain: Scalar) -> Tensor:
    """Divide by the gains, fading the division out for near-white pixels so highlights stay saturated.

    image: ``[..., 3, H, W]``. With gray = channel mean and ``m = (max(gray - 0.9, 0) / 0.1)^2``, the applied
    factor is ``max(m + (1 - m) / g, 1 / g)`` per channel (Brooks et al.).
    """
    inv = 1.0 / gain_vector(image, rgb_gain, red_gain, blue_gain)
    gray = image.mean(dim=-3, keepdim=True)
    mask = ((gray - HIGHLIGHT_INFLECTION).clamp_min(0.0) / (1.0 - HIGHLIGHT_INFLECTION)) ** 2
    return image * torch.maximum(mask + (1.0 - mask) * inv, inv)


def packed_raw_to_rgb(raw: Tensor) -> Tensor:
    """Demosaic-free RGB from packed RGGB: ``[..., 4, h, w]`` -> ``[..., 3, h, w]`` = (R, (Gr + Gb) / 2, B).

    Each output pixel stands for one 2x2 Bayer cell (half the mosaic's resolution).
    """
    if raw.shape[-3] != 4:
        raise ValueError(f"packed_raw_to_rgb: raw must be packed RGGB [..., 4, h, w], got shape {tuple(raw.shape)}")
    r, gr, gb, b = raw.unbind(dim=-3)
    return torch.stack((r, 0.5 * (gr + gb), b), dim=-3)


# ----------------------------------------------------------------------------------------------
# whole pipelines
# ----------------------------------------------------------------------------------------------
def _check_image(image: Tensor, name: str, channels=(3,)):
    if not isinstance(image, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {image.dtype}")
    if image.dim() < 3 or image.shape[-3] not in channels:
        raise ValueError(f"{name}: expected shape [..., C, H, W] with C in {channels}, got {tuple(image.shape)}")


def _align(params: Dict[str, Tensor], image: Tensor) -> Dict[str, Tensor]:
    """Params with batch shape ``[B]`` applied to images ``[B, T, ..., C, H, W]``: batch dims align on the left."""
    lead = image.dim() - 3
    out = {}
    for k in _ISP_KEYS:
        if k not in params:
            raise ValueError(f"ISP params: missing {k!r} (have {sorted(params)})")
        v = params[k]
        if not isinstance(v, Tensor):
            out[k] = v
            continue
        mat = k in ("rgb2cam", "cam2rgb")
        batch_ndim = v.dim() - (2 if mat else 0)
        if batch_ndim > lead:
            raise ValueError(f"ISP params: {k} has batch shape {tuple(v.shape[:batch_ndim])}, more dims than the "
                             f"image's leading shape {tuple(image.shape[:lead])}")
        if batch_ndim > 0 and batch_ndim < lead:
            v = v.reshape(v.shape[:batch_ndim] + (1,) * (lead - batch_ndim) + v.shape[batch_ndim:])
        out[k] = v
    return out


def unprocess(image: Tensor, params: Dict[str, Tensor]) -> Tensor:
    """Inverse ISP: sRGB ``[..., 3, H, W]`` in [0, 1] -> linear camera RGB in [0, 1] (same shape and dtype).

    ``params`` as returned by :func:`random_isp_params`: batch shape ``[B]`` for images ``[B, ..., 3, H, W]``
    (batch dims align on the left), or unbatched (``[3, 3]`` matrices, scalar gains) for any image.
    """
    _check_image(image, "unprocess: image")
    params = _align(params, image)
    x = gamma_expand(invert_smoothstep(image))
    x = apply_ccm(x, params["rgb2cam"])
    x = safe_invert_gains(x, params["rgb_gain"], params["red_gain"], params["blue_gain"])
    return x.clamp(0.0, 1.0)


def process(raw: Tensor, params: Dict[str, Tensor]) -> Tensor:
    """Forward ISP: linear camera RGB ``[..., 3, H, W]`` or packed RGGB ``[..., 4, h, w]`` -> sRGB ``[..., 3, ., .]``.

    Gains (clamped to [0, 1]); packed input is then turned into RGB without demosaicking
    (:func:`packed_raw_to_rgb`, half resolution); cam2rgb CCM (clamped); gamma compression; smoothstep.
    ``process(unprocess(x, p), p) == x`` wherever no clamp or highlight protection was active. ``params`` as
    in :func:`unprocess`, so one parameter set per burst ``[B]`` applies to all frames of ``[B, T, 4, h, w]``.
    """
    _check_image(raw, "process: raw", channels=(3, 4))
    params = _align(params, raw)
    x = apply_gains(raw, params["rgb_gain"], params["red_gain"], params["blue_gain"])
    if x.shape[-3] == 4:
        x = packed_raw_to_rgb(x)
    x = apply_ccm(x, params["cam2rgb"]).clamp(0.0, 1.0)
    return smoothstep(gamma_compress(x))
