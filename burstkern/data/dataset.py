"""``SyntheticBurstDataset``: synthetic RAW bursts from random crops of bundled sample images and dead leaves.

The bundled images are photographs that ship inside the scikit-image and scikit-learn wheels (read from the
installed package folders, so nothing is ever downloaded). They are split three ways, fixed here once:

- ``"eval"`` (held out, never trained on nor used for decisions): :data:`HELDOUT_IMAGES` — flower, chelsea, coffee;
- ``"val"`` (the validation split for training decisions): :data:`VAL_IMAGES` — rocket;
- ``"train"``: the rest.

Dead-leaves images (:mod:`burstkern.data.deadleaves`) come from disjoint seed ranges per split
(:data:`DEADLEAVES_SEEDS`); ``deadleaves=p`` makes a fraction ``p`` of the items dead-leaves images of the split's
range. The one held-out evaluation set is :func:`burstkern.data.heldout_bursts`.

Every item is a pure function of ``(seed, index)``: it owns a ``torch.Generator`` seeded from both, which picks
the image and the crop and then drives :func:`burstkern.data.burst.synthesize_burst`. Items are therefore
reproducible and independent of DataLoader worker order.

Example::

    >>> ds = SyntheticBurstDataset(None, crop=432, burst_size=8, seed=0, split="train", deadleaves=0.5)
    >>> item = ds[3]
    >>> item["burst"].shape, item["gt"].shape, item["meta"]["shot_noise"].shape
    (torch.Size([8, 4, 48, 48]), torch.Size([3, 384, 384]), torch.Size([]))
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .burst import synthesize_burst

__all__ = ["BUNDLED_IMAGES", "EVAL_IMAGE", "HELDOUT_IMAGES", "VAL_IMAGES", "DEADLEAVES_SEEDS", "SPLITS",
           "bundled_image_names", "load_bundled_images", "SyntheticBurstDataset"]

# (name, package, file in that package's data folder): colour photographs present in the installed wheels.
# scikit-image: skimage/data/*; scikit-learn: sklearn/datasets/images/*.
BUNDLED_IMAGES: Tuple[Tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "astronaut.png"),
    ("chelsea", "skimage", "chelsea.png"),
    ("coffee", "skimage", "coffee.png"),
    ("rocket", "skimage", "rocket.jpg"),
    ("motorcycle_left", "skimage", "motorcycle_left.png"),
    ("motorcycle_right", "skimage", "motorcycle_right.png"),
    ("immunohistochemistry", "skimage", "ihc.png"),
    ("hubble_deep_field", "skimage", "hubble_deep_field.jpg"),
    ("retina", "skimage", "retina.jpg"),
    ("china", "sklearn", "china.jpg"),
    ("flower", "sklearn", "flower.jpg"),
)
HELDOUT_IMAGES: Tuple[str, ...] = ("flower", "chelsea", "coffee")   # split "eval": the held-out photographs
VAL_IMAGES: Tuple[str, ...] = ("rocket",)                           # split "val": for training decisions
EVAL_IMAGE = HELDOUT_IMAGES[0]                                      # the demo's default photograph
SPLITS = ("train", "val", "eval")
# Dead-leaves seeds per split, [lo, hi): disjoint, all below 2**32 (the CPU generator uses 32 bits of a seed).
DEADLEAVES_SEEDS = {"train": (0, 2 ** 31), "val": (2 ** 31, 2 ** 31 + 2 ** 20),
                    "eval": (2 ** 31 + 2 ** 20, 2 ** 31 + 2 ** 21)}


def bundled_image_names(split: str = "train") -> List[str]:
    """Names of the bundled images of ``split``: "eval" (:data:`HELDOUT_IMAGES`), "val" (:data:`VAL_IMAGES`) or
    "train" (all others)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "eval":
        return list(HELDOUT_IMAGES)
    if split == "val":
        return list(VAL_IMAGES)
    return [n for n, _, _ in BUNDLED_IMAGES if n not in HELDOUT_IMAGES and n not in VAL_IMAGES]


def _package_dir(package: str) -> str:
    if package == "skimage":
        import skimage.data
        return os.path.dirname(skimage.data.__file__)
    if package == "sklearn":
        import sklearn.datasets
        return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    raise ValueError(f"unknown package {package!r}")


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image  # a dependency of scikit-image (and of torchvision)

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_bundled_images(split: str = "train") -> Dict[str, Tensor]:
    """The bundled images of ``split`` as ``{name: uint8 tensor [3, H, W]}``, read from the installed packages.

    Raises RuntimeError (naming the missing files and how to install them) when none can be read.
    """
    images, missing = {}, []
    where = {n: (pkg, f) for n, pkg, f in BUNDLED_IMAGES}
    for name in bundled_image_names(split):
        package, fname = where[name]
        try:
            path = os.path.join(_package_dir(package), fname)
        except ImportError as e:
            missing.append(f"{name} ({package} not installed: {e})")
            continue
        if not os.path.isfile(path):
            missing.append(f"{name} ({path} not in the installed {package})")
            continue
        images[name] = torch.from_numpy(_read_rgb(path).copy()).permute(2, 0, 1).contiguous()
    if not images:
        raise RuntimeError(f"no bundled sample image of split {split!r} could be read: {'; '.join(missing)}. "
                           f"Install them with `pip install scikit-image scikit-learn`.")
    return images


def _to_float_chw(img, index: int) -> Tensor:
    """An sRGB image (uint8 HWC/CHW array or tensor, or float in [0, 1]) as float32 ``[3, H, W]``."""
    t = torch.as_tensor(np.asarray(img)) if not isinstance(img, Tensor) else img
    if t.dim() != 3:
        raise ValueError(f"images[{index}]: expected an RGB image [H, W, 3] or [3, H, W], got shape {tuple(t.shape)}")
    if t.shape[0] != 3 and t.shape[-1] == 3:
        t = t.permute(2, 0, 1)
    if t.shape[0] != 3:
        raise ValueError(f"images[{index}]: expected an RGB image [H, W, 3] or [3, H, W], got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
    else:
        raise TypeError(f"images[{index}]: expected uint8 or floating point in [0, 1], got dtype {t.dtype}")
    return t.contiguous()


def _fit(img: Tensor, crop: int) -> Tensor:
    """Upscale (bilinear) so the shorter side is at least ``crop``; larger images are left alone."""
    h, w = img.shape[-2:]
    if min(h, w) >= crop:
        return img
    s = crop / min(h, w)
    size = (max(crop, round(h * s)), max(crop, round(w * s)))
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)


def _mix_seed(seed: int, index: int) -> int:
    """A 32-bit seed from ``(seed, index)`` (splitmix64 finaliser). The CPU generator only uses the low 32 bits
    of its seed, so simply packing ``seed << 32 | index`` would make every ``seed`` give the same items."""
    z = ((seed << 32) | index) + 0x9E3779B97F4A7C15
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0xFFFFFFFF


class SyntheticBurstDataset(torch.utils.data.Dataset):
    """Random ``crop`` x ``crop`` sRGB crops turned into synthetic RAW bursts (Bhat et al. pipeline).

    Args:
        images: ``None`` for the bundled sample images of ``split``, or a sequence of sRGB images (uint8
            ``[H, W, 3]`` arrays/tensors or float ``[3, H, W]`` in [0, 1]). Images smaller than ``crop`` are
            upscaled bilinearly so their shorter side is ``crop``.
        crop: HR crop size. The ground truth is ``crop - 2*border``; the default 432 gives the standard
            384 x 384 ground truth and 48 x 48 RAW frames (x4 downsampling, 24-px border).
        burst_size: frames per burst (8 default; 14 as in the NTIRE synthetic track works too).
        seed: base seed; item ``i`` is a pure function of ``(seed, i)``.
        split: "train" or "eval" for the bundled images (default "train"); must be left ``None`` when
            ``images`` is given.
        length: number of items (default 1000 for "train" and custom images, 100 for "eval" and "val").
        deadleaves: fraction of the items that are dead-leaves images (seeds from the split's range of
            :data:`DEADLEAVES_SEEDS`; "train" for custom images) instead of photograph crops; 1.0 = only dead leaves.
        downsample_factor, border, max_translation, max_rotation, noise: passed to ``synthesize_burst``.

    Each item is a dict: ``burst`` ``[T, 4, h, w]`` float32, ``gt`` ``[3, crop - 2*border, crop - 2*border]``
    float32 (linear camera RGB), ``meta`` (ISP, noise and warp parameters, plus ``deadleaves_seed`` (-1 for a
    photograph), ``image_index`` (-1 for dead leaves) and
    ``crop_origin`` (y, x)). The default collate stacks them into batches.
    """

    def __init__(self, images: Optional[Sequence] = None, crop: int = 432, burst_size: int = 8, seed: int = 0,
                 split: Optional[str] = None, length: Optional[int] = None, *, downsample_factor: int = 4,
                 border: int = 24, max_translation: float = 24.0, max_rotation: float = 1.0, noise: bool = True,
                 deadleaves: float = 0.0):
        if not isinstance(deadleaves, (int, float)) or not 0.0 <= deadleaves <= 1.0:
            raise ValueError(f"deadleaves must be a fraction in [0, 1], got {deadleaves!r}")
        self.deadleaves = float(deadleaves)
        if images is None and self.deadleaves == 1.0:
            split = "train" if split is None else split
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            self.names, images = [], []
        elif images is None:
            split = "train" if split is None else split
            bundled = load_bundled_images(split)
            self.names = list(bundled)
            images = list(bundled.values())
        else:
            if split is not None:
                raise ValueError(f"split={split!r} selects bundled images; leave it None when passing images")
            if len(images) == 0:
                raise ValueError("images: expected at least one image, got an empty sequence")
            self.names = [f"image{i}" for i in range(len(images))]
        step = 2 * downsample_factor
        if not isinstance(crop, int) or crop - 2 * border <= 0 or (crop - 2 * border) % step:
            raise ValueError(f"crop must be an int with crop - 2*border a positive multiple of "
                             f"2*downsample_factor = {step}, got crop={crop!r}, border={border}")
        if not isinstance(seed, int) or not 0 <= seed < 2 ** 31:
            raise ValueError(f"seed must be an int in [0, 2**31), got {seed!r}")
        self.split = split
        self.dl_seeds = DEADLEAVES_SEEDS[split if split is not None else "train"]
        self.crop, self.burst_size, self.seed = crop, burst_size, seed
        self.length = length if length is not None else (100 if split in ("eval", "val") else 1000)
        self.kwargs = dict(downsample_factor=downsample_factor, border=border, max_translation=max_translation,
                           max_rotation=max_rotation, noise=noise)
        self.images = [_fit(_to_float_chw(img, i), crop) for i, img in enumerate(images)]

    def __len__(self) -> int:
        return self.length

    def generator(self, index: int) -> torch.Generator:
        """The generator that drives item ``index``: seeded by a hash of ``(seed, index)``."""
        return torch.Generator().manual_seed(_mix_seed(self.seed, index))

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        g = self.generator(index)
        if self.deadleaves > 0 and (not self.images or float(torch.rand((), generator=g)) < self.deadleaves):
            from .deadleaves import dead_leaves_image

            lo, hi = self.dl_seeds
            dl_seed = lo + int(torch.randint(hi - lo, (1,), generator=g))
            out = synthesize_burst(dead_leaves_image(dl_seed, self.crop), self.burst_size, generator=g,
                                   **self.kwargs)
            out["meta"]["image_index"] = torch.tensor(-1)
            out["meta"]["crop_origin"] = torch.tensor([0, 0])
            out["meta"]["deadleaves_seed"] = torch.tensor(dl_seed)
            return out
        k = int(torch.randint(len(self.images), (1,), generator=g))
        img = self.images[k]
        h, w = img.shape[-2:]
        y0 = int(torch.randint(h - self.crop + 1, (1,), generator=g))
        x0 = int(torch.randint(w - self.crop + 1, (1,), generator=g))
        patch = img[:, y0:y0 + self.crop, x0:x0 + self.crop]
        out = synthesize_burst(patch, self.burst_size, generator=g, **self.kwargs)
        out["meta"]["image_index"] = torch.tensor(k)
        out["meta"]["crop_origin"] = torch.tensor([y0, x0])
        out["meta"]["deadleaves_seed"] = torch.tensor(-1)
        return out
