"""Image-quality metrics of the burst-SR protocol (DESIGN.md "Metrics"): PSNR, SSIM, LPIPS.

All metrics take ``pred`` and ``target`` of shape ``[B, C, H, W]`` (or ``[C, H, W]``), linear RGB in [0, 1],
ignore a ``border``-pixel frame on every side (40 px by default, as in the burst-SR evaluation), and return
one value per image: ``[B]`` (a 0-dim tensor for unbatched input). They run batched on any device.

SSIM is Wang et al. (2004) with an 11-tap Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, population
(co)variances and a mean over the valid positions and channels -- the same numbers as
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1, channel_axis=0)`` on the border-cropped images.

LPIPS uses the ``lpips`` package (AlexNet trunk) and never downloads anything unless called with
``download=True``: without the package, its linear-layer weights or the AlexNet weights in the torch hub
cache it raises :class:`MetricUnavailable` with the reason.

Example::

    >>> pred, target = torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128)
    >>> psnr(pred, target).shape, ssim(pred, target).shape
    (torch.Size([2]), torch.Size([2]))
"""

from __future__ import annotations

import importlib.util
import os
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MetricUnavailable", "psnr", "ssim", "hf_energy", "hf_ratio", "lpips", "lpips_status", "crop_border"]

BORDER = 40
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (missing package or weights); the message starts with the metric's
    name and says why, e.g. ``"LPIPS unavailable: the lpips package is not installed (pip install lpips)"``."""


# ----------------------------------------------------------------------------------------------
# argument handling
# ----------------------------------------------------------------------------------------------
def crop_border(x: Tensor, border: int) -> Tensor:
    """``x[..., border:-border, border:-border]`` (``x`` itself for ``border == 0``)."""
    if border == 0:
        return x
    return x[..., border:x.shape[-2] - border, border:x.shape[-1] - border]


def _prepare(fn: str, pred: Tensor, target: Tensor, border: int, min_size: int = 1):
    """Validate, crop the border, batch; returns (pred, target, unbatched, compute dtype)."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{fn}: {name} must be floating point in [0, 1], got dtype {t.dtype}")
        if t.dim() not in (3, 4):
            raise ValueError(f"{fn}: {name} must be [C, H, W] or [B, C, H, W], got shape {tuple(t.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"{fn}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.device != target.device:
        raise ValueError(f"{fn}: pred is on {pred.device} but target on {target.device}")
    if not isinstance(border, int) or isinstance(border, bool) or border < 0:
        raise ValueError(f"{fn}: border must be an int >= 0, got {border!r}")
    h, w = pred.shape[-2:]
    if h - 2 * border < min_size or w - 2 * border < min_size:
        raise ValueError(f"{fn}: images of shape {tuple(pred.shape)} minus a {border}-px border are smaller than "
                         f"the {min_size}x{min_size} minimum")
    unbatched = pred.dim() == 3
    if unbatched:
        pred, target = pred[None], target[None]
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    return crop_border(pred, border).to(dtype), crop_border(target, border).to(dtype), unbatched


def _out(v: Tensor, unbatched: bool) -> Tensor:
    return v[0] if unbatched else v


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM
# ----------------------------------------------------------------------------------------------
def psnr(pred: Tensor, target: Tensor, border: int = BORDER, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(data_range^2 / MSE)``, MSE over C, H, W.

    pred, target: ``[B, C, H, W]`` or ``[C, H, W]``; returns ``[B]`` (or 0-dim); ``inf`` for identical images.
    """
    p, t, unbatched = _prepare("psnr", pred, target, border)
    mse = (p - t).square().mean(dim=(1, 2, 3))
    return _out(10.0 * torch.log10(data_range ** 2 / mse), unbatched)


def _gaussian_taps(size: int, sigma: float, dtype, device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def ssim(pred: Tensor, target: Tensor, border: int = BORDER, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image (Gaussian window 11, sigma 1.5), mean over channels and valid positions.

    pred, target: ``[B, C, H, W]`` or ``[C, H, W]`` with ``H, W >= 2*border + 11``; returns ``[B]`` (or 0-dim).
    The local statistics use only windows fully inside the cropped image (skimage crops the same margin).
    """
    p, t, unbatched = _prepare("ssim", pred, target, border, min_size=SSIM_WINDOW)
    b, c, h, w = p.shape
    g = _gaussian_taps(SSIM_WINDOW, SSIM_SIGMA, p.dtype, p.device)
    # the five local moments of every channel in one separable depthwise convolution
    x = torch.cat((p, t, p * p, t * t, p * t), dim=1)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(5 * c, 1, -1, 1), groups=5 * c)
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(5 * c, 1, 1, -1), groups=5 * c)
    mu_p, mu_t, e_pp, e_tt, e_pt = x.split(c, dim=1)
    var_p, var_t, cov = e_pp - mu_p * mu_p, e_tt - mu_t * mu_t, e_pt - mu_p * mu_t
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2))
    return _out(s.mean(dim=(1, 2, 3)), unbatched)


HF_SIGMA = 2.0   # HR pixels: half the x4 downsampling factor (the band around and above the LR Nyquist)


def hf_energy(x: Tensor, border: int = BORDER, sigma: float = HF_SIGMA) -> Tensor:
    """High-frequency energy per image: mean square of ``x − GaussianBlur_σ(x)`` (σ = 2 px, reflect padding,
    computed on the whole image, then the border cropped). ``[B, C, H, W]`` or ``[C, H, W]`` -> ``[B]`` (or 0-d)."""
    p, _, unbatched = _prepare("hf_energy", x, x, 0, min_size=2 * border + 1)
    c = p.shape[1]
    rad = int(3 * sigma + 0.5)
    g = _gaussian_taps(2 * rad + 1, sigma, p.dtype, p.device)
    blur = F.pad(p, (rad, rad, rad, rad), mode="reflect")
    blur = F.conv2d(blur, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    blur = F.conv2d(blur, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    hp = crop_border(p - blur, border)
    return _out(hp.square().mean(dim=(1, 2, 3)), unbatched)


def hf_ratio(pred: Tensor, target: Tensor, border: int = BORDER, sigma: float = HF_SIGMA) -> Tensor:
    """High-frequency energy ratio per image, :func:`hf_energy` of ``pred`` / of ``target``: > 1 means added noise
    or ringing, < 1 blur. Over a set, report ``hf_energy(pred).sum() / hf_energy(target).sum()``."""
    _prepare("hf_ratio", pred, target, border)
    return hf_energy(pred, border, sigma) / hf_energy(target, border, sigma).clamp_min(1e-20)


# ----------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------
# LPIPS trunk -> the torchvision weights it loads (resolved lazily to the file name in the hub cache).
_TRUNK_WEIGHTS = {"alex": ("AlexNet_Weights", "alexnet-owt-7be5be79.pth"),
                  "vgg": ("VGG16_Weights", "vgg16-397923af.pth"),
                  "squeeze": ("SqueezeNet1_1_Weights", "squeezenet1_1-b8a52dc0.pth")}
_LPIPS_MODELS: Dict[Tuple[str, str], torch.nn.Module] = {}


def _trunk_checkpoint(net: str) -> str:
    enum_name, fallback = _TRUNK_WEIGHTS[net]
    try:
        import torchvision.models as tvm
        fname = getattr(tvm, enum_name).IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    except Exception:  # an older/newer torchvision without the enum: the file name has never changed
        fname = fallback
    return os.path.join(torch.hub.get_dir(), "checkpoints", fname)


def lpips_status(net: str = "alex", download: bool = False) -> Tuple[bool, str]:
    """Whether LPIPS with trunk ``net`` can be built here without the network: ``(ok, why)``.

    Checks that the ``lpips`` package is importable, that its linear-layer weights ship with it, and (unless
    ``download``) that the trunk's torchvision weights are in the torch hub cache.
    """
    if net not in _TRUNK_WEIGHTS:
        raise ValueError(f"lpips: net must be one of {sorted(_TRUNK_WEIGHTS)}, got {net!r}")
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError) as e:
        spec, err = None, e
    else:
        err = None
    if spec is None or spec.origin is None:
        return False, f"the lpips package is not installed (pip install lpips){'' if err is None else f': {err}'}"
    lin = os.path.join(os.path.dirname(spec.origin), "weights", "v0.1", f"{net}.pth")
    if not os.path.isfile(lin):
        return False, f"the lpips package has no linear-layer weights at {lin}"
    ckpt = _trunk_checkpoint(net)
    if not download and not os.path.isfile(ckpt):
        return False, (f"the {net} trunk weights are not in the torch hub cache ({ckpt}); pass download=True "
                       f"to fetch them")
    return True, "ok"


def _lpips_model(net: str, device: torch.device, download: bool) -> torch.nn.Module:
    key = (net, str(device))
    if key in _LPIPS_MODELS:
        return _LPIPS_MODELS[key]
    ok, why = lpips_status(net, download)
    if not ok:
        raise MetricUnavailable(f"LPIPS unavailable: {why}")
    import torch.hub as hub

    real_download = hub.download_url_to_file

    def refuse(url, *args, **kwargs):
        raise MetricUnavailable(f"LPIPS unavailable: would download {url}; pass download=True to allow it")

    try:
        import lpips as lpips_pkg

        if not download:  # belt and braces: the cache check above should make this unreachable
            hub.download_url_to_file = refuse
        try:
            model = lpips_pkg.LPIPS(net=net, verbose=False)
        finally:
            hub.download_url_to_file = real_download
    except MetricUnavailable:
        raise
    except Exception as e:  # a broken install or an incompatible torchvision: say so, do not crash callers
        raise MetricUnavailable(f"LPIPS unavailable: building lpips.LPIPS(net={net!r}) failed: "
                                f"{type(e).__name__}: {e}") from e
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    _LPIPS_MODELS[key] = model
    return model


def lpips(pred: Tensor, target: Tensor, border: int = BORDER, net: str = "alex", download: bool = False) -> Tensor:
    """LPIPS distance per image (lower is better), inputs in [0, 1] mapped to [-1, 1] as the package expects.

    pred, target: ``[B, 3, H, W]`` or ``[3, H, W]``; returns ``[B]`` (or 0-dim). Raises
    :class:`MetricUnavailable` ("LPIPS unavailable: <why>") when the package or weights are missing; nothing
    is downloaded unless ``download=True``.
    """
    p, t, unbatched = _prepare("lpips", pred, target, border, min_size=16)
    if p.shape[1] != 3:
        raise ValueError(f"lpips: expected 3-channel RGB images, got shape {tuple(pred.shape)}")
    model = _lpips_model(net, p.device, download)
    with torch.no_grad():
        d = model(p.float(), t.float(), normalize=True)
    return _out(d.reshape(d.shape[0]).to(p.dtype), unbatched)
