"""The one held-out evaluation set (DESIGN.md "Output quality protocol") and the validation set for decisions.

:func:`heldout_bursts` is THE held-out set: the demo, the training script's final evaluation, ``burstkern eval``
and the tests all call it. It holds bursts of the held-out bundled photographs (:data:`HELDOUT_IMAGES`: flower,
chelsea, coffee; never trained on) plus dead-leaves images from the held-out seed range
(:data:`DEADLEAVES_SEEDS` ``["eval"]``, disjoint from training's): by default 3 x 4 photo crops + 12 dead leaves =
24 bursts. :func:`validation_bursts` is the same construction on the validation split (photo: rocket; its own
dead-leaves seed range): training decisions are made on it, never on the held-out set.

Example::

    >>> ev = heldout_bursts(burst_size=4, crop=176)
    >>> ev["burst"].shape, ev["gt"].shape, ev["names"][:2]
    (torch.Size([24, 4, 4, 16, 16]), torch.Size([24, 3, 128, 128]), ['flower#0', 'flower#1'])
"""

from __future__ import annotations

from typing import Dict

import torch

from .burst import synthesize_burst
from .dataset import DEADLEAVES_SEEDS, SyntheticBurstDataset, _mix_seed, load_bundled_images
from .deadleaves import dead_leaves_image

__all__ = ["heldout_bursts", "validation_bursts", "HELDOUT_CROP"]

HELDOUT_CROP = 176   # 128² ground truth, 16² RAW frames (the tiny preset's evaluation size)


def _bursts(split: str, burst_size: int, crop: int, per_photo: int, deadleaves: int, seed: int) -> Dict:
    if not isinstance(burst_size, int) or burst_size < 1:
        raise ValueError(f"burst_size must be an int >= 1, got {burst_size!r}")
    for name, v in (("per_photo", per_photo), ("deadleaves", deadleaves), ("seed", seed)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    items, names = [], []
    photos = load_bundled_images(split) if per_photo else {}
    for k, (name, img) in enumerate(photos.items()):
        ds = SyntheticBurstDataset([img], crop=crop, burst_size=burst_size, seed=(seed * 64 + k) % 2 ** 31,
                                   length=per_photo)
        for i in range(per_photo):
            item = ds[i]
            item["meta"]["image_index"] = torch.tensor(k)
            items.append(item)
            names.append(f"{name}#{i}")
    lo, hi = DEADLEAVES_SEEDS[split]
    for i in range(deadleaves):
        s = lo + (seed * 4096 + i) % (hi - lo)
        g = torch.Generator().manual_seed(_mix_seed(s % 2 ** 31, 1))
        item = synthesize_burst(dead_leaves_image(s, crop), burst_size, generator=g)
        item["meta"].update(image_index=torch.tensor(-1), crop_origin=torch.tensor([0, 0]),
                            deadleaves_seed=torch.tensor(s))
        items.append(item)
        names.append(f"deadleaves#{s}")
    if not items:
        raise ValueError("the evaluation set would be empty (per_photo = deadleaves = 0)")
    for it in items:
        it["meta"].setdefault("deadleaves_seed", torch.tensor(-1))
    batch = torch.utils.data.default_collate(items)
    return {"burst": batch["burst"], "gt": batch["gt"], "meta": batch["meta"], "names": names, "split": split}


def heldout_bursts(burst_size: int = 4, crop: int = HELDOUT_CROP, *, per_photo: int = 4, deadleaves: int = 12,
                   seed: int = 0) -> Dict:
    """The held-out evaluation set: ``per_photo`` bursts of each held-out photograph + ``deadleaves`` bursts of
    held-out dead-leaves images (defaults: 3 x 4 + 12 = 24 bursts).

    Returns a dict: ``burst`` ``[N, T, 4, h, w]``, ``gt`` ``[N, 3, crop − 48, crop − 48]`` (linear RGB), ``meta``
    (batched ISP / noise / warp parameters), ``names`` (``"flower#0"``, ..., ``"deadleaves#<seed>"``), ``split``.
    Pure function of its arguments.
    """
    return _bursts("eval", burst_size, crop, per_photo, deadleaves, seed)


def validation_bursts(burst_size: int = 4, crop: int = HELDOUT_CROP, *, per_photo: int = 8, deadleaves: int = 16,
                      seed: int = 0) -> Dict:
    """The validation set for training decisions (the validation photograph + validation dead-leaves seeds;
    defaults 1 x 8 + 16 = 24 bursts); same layout as :func:`heldout_bursts`."""
    return _bursts("val", burst_size, crop, per_photo, deadleaves, seed)
