"""Synthetic RAW burst data (DESIGN.md "Synthetic bursts"): inverse/forward ISP, burst synthesis, a dataset.

- :mod:`burstkern.data.isp`: ``unprocess`` (sRGB -> linear camera RGB) and ``process`` (back), random CCM/gains.
- :mod:`burstkern.data.burst`: ``synthesize_burst`` (warps, downsampling, RGGB mosaic, noise), batched in torch.
- :mod:`burstkern.data.dataset`: ``SyntheticBurstDataset`` of random crops of the sample images bundled with
  scikit-image and scikit-learn (imported lazily; nothing is ever downloaded) and of dead-leaves images.
- :mod:`burstkern.data.deadleaves`: seeded, vectorised dead-leaves images (natural-statistics training data).
- :mod:`burstkern.data.heldout`: ``heldout_bursts`` (THE held-out evaluation set) and ``validation_bursts``.

Example::

    >>> from burstkern.data import SyntheticBurstDataset
    >>> ds = SyntheticBurstDataset(None, crop=432, burst_size=8, seed=0)
    >>> item = ds[0]
    >>> item["burst"].shape, item["gt"].shape
    (torch.Size([8, 4, 48, 48]), torch.Size([3, 384, 384]))
"""

from . import burst, isp
from .burst import add_noise, mosaic, random_noise_levels, random_shifts, synthesize_burst
from .dataset import (DEADLEAVES_SEEDS, HELDOUT_IMAGES, VAL_IMAGES, SyntheticBurstDataset, bundled_image_names,
                      load_bundled_images)
from .deadleaves import dead_leaves, dead_leaves_image
from .heldout import HELDOUT_CROP, heldout_bursts, validation_bursts
from .isp import process, random_isp_params, unprocess

__all__ = [
    "isp", "burst", "synthesize_burst", "mosaic", "add_noise", "random_noise_levels", "random_shifts", "unprocess",
    "process", "random_isp_params", "SyntheticBurstDataset", "load_bundled_images", "bundled_image_names",
    "dead_leaves", "dead_leaves_image", "heldout_bursts", "validation_bursts", "HELDOUT_CROP", "HELDOUT_IMAGES",
    "VAL_IMAGES", "DEADLEAVES_SEEDS",
]
from .benchmarks import BenchmarkDataError, BurstSR, SyntheticBurstVal  # noqa: E402  published formats (benchmarks.py)
__all__ += ["SyntheticBurstVal", "BurstSR", "BenchmarkDataError"]
