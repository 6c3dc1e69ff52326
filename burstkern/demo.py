"""``burstkern demo``: E-BSRD end to end on the held-out bundled image, with a small quality / time table.

Synthesizes a RAW burst from the held-out sample image (scikit-learn's ``flower.jpg``, never used for training),
runs the three stages — initial burst SR (``x_init``), the consistency student in one step, and the EDM Heun
teacher with a few steps — and prints PSNR / SSIM (LPIPS when its weights are available, else the reason) on the
burst-SR protocol (linear RGB in [0, 1], 40 px border ignored) and the wall time of each call. Without a checkpoint
the weights are random and the table says so: the numbers then only show that the pipeline and kernels run.

Timing here is indicative wall time of single calls (after one untimed warm-up call, synchronised on a GPU);
the benchmark suites (``benchmarks/``) are the measurement protocol.

Example::

    >>> from burstkern.demo import run_demo
    >>> rows = run_demo(preset="tiny", device="cpu", teacher_steps=2)     # random weights: says so
    >>> rows = run_demo("tiny.pt", out="demo.png")                          # a checkpoint of python/train_ebsrd.py

Command line: ``burstkern demo --checkpoint tiny.pt --out demo.png`` (also ``python -m burstkern.demo``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Dict, List, Optional

import torch
from torch import Tensor

__all__ = ["run_demo", "evaluate", "held_out_burst", "format_table", "save_png", "main", "DEFAULT_CROP"]

# HR crop of the held-out image per preset: 432 gives the standard 384² ground truth (48² RAW frames); the tiny
# preset uses 176 (128² ground truth, 16² frames) so that a CPU run, teacher included, takes seconds.
DEFAULT_CROP = {"tiny": 176, "paper": 432}
ISP_KEYS = ("rgb2cam", "cam2rgb", "rgb_gain", "red_gain", "blue_gain")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def held_out_burst(burst_size: int, crop: int = 432, seed: int = 0) -> Dict:
    """One synthetic burst of the held-out bundled image (``split="eval"``): the dataset item dict
    (``burst`` ``[T, 4, h, w]``, ``gt`` ``[3, crop − 48, crop − 48]`` linear RGB, ``meta``)."""
    from .data import SyntheticBurstDataset

    return SyntheticBurstDataset(None, crop=crop, burst_size=burst_size, seed=seed, split="eval", length=1)[0]


def _metrics(pred: Tensor, gt: Tensor) -> Dict[str, object]:
    from . import metrics

    row: Dict[str, object] = {"psnr": float(metrics.psnr(pred, gt)), "ssim": float(metrics.ssim(pred, gt))}
    try:
        row["lpips"] = float(metrics.lpips(pred, gt))
    except metrics.MetricUnavailable as e:
        row["lpips"] = None
        row["lpips_why"] = str(e)
    return row


@torch.no_grad()
def evaluate(model, item: Dict, teacher_steps: int = 4, seed: int = 0, device=None, warmup: int = 1
             ) -> List[Dict[str, object]]:
    """Run x_init / one-step / teacher on one dataset item; one row per stage.

    Each row: ``stage``, ``psnr``, ``ssim``, ``lpips`` (None when unavailable, with ``lpips_why``), ``ms`` (wall
    time of the whole call, encoder included), and ``image`` (RGB ``[3, H, W]`` in [0, 1] on the CPU).
    ``teacher_steps = 0`` skips the teacher. ``warmup``: untimed calls of each stage before its timed call.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if not isinstance(teacher_steps, int) or teacher_steps < 0:
        raise ValueError(f"teacher_steps must be an int >= 0, got {teacher_steps!r}")
    model = model.to(device).eval()
    burst = item["burst"][None].to(device)
    gt = item["gt"][None].to(device).clamp(0, 1)

    def gen():
        return torch.Generator(device=device).manual_seed(seed)

    stages = [("initial (x_init)", lambda: model.initial(burst)[0]),
              ("one-step (student)", lambda: model.one_step(burst, generator=gen()))]
    if teacher_steps:
        stages.append((f"teacher ({teacher_steps} Heun steps)",
                       lambda: model.teacher(burst, num_steps=teacher_steps, generator=gen())))
    rows = []
    for name, fn in stages:
        for _ in range(warmup):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        x = fn()
        _sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        rgb = ((x.float() + 1) / 2).clamp(0, 1)
        rows.append({"stage": name, **_metrics(rgb, gt), "ms": ms, "image": rgb[0].cpu()})
    return rows


def format_table(rows: List[Dict[str, object]]) -> str:
    """The rows of :func:`evaluate` as a text table (LPIPS "n/a" plus the reason when unavailable)."""
    head = f"{'stage':<28} {'PSNR dB':>8} {'SSIM':>7} {'LPIPS':>7} {'time ms':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lp = "n/a" if r.get("lpips") is None else f"{r['lpips']:.4f}"
        lines.append(f"{r['stage']:<28} {r['psnr']:>8.2f} {r['ssim']:>7.4f} {lp:>7} {r['ms']:>9.1f}")
    why = next((r["lpips_why"] for r in rows if r.get("lpips_why")), None)
    if why:
        lines.append(f"LPIPS n/a: {why}")
    return "\n".join(lines)


def _to_srgb(rgb: Tensor, meta: Dict) -> Tensor:
    """Linear camera RGB → sRGB with the item's own ISP parameters (for viewing only)."""
    from .data import process

    params = {k: torch.as_tensor(meta[k])[None] for k in ISP_KEYS}
    return process(rgb[None].float(), params)[0].clamp(0, 1)


def save_png(path: str, images: Dict[str, Tensor], meta: Optional[Dict] = None) -> str:
    """Save the images (RGB ``[3, H, W]`` in [0, 1], linear camera RGB when ``meta`` is given) side by side as one
    PNG strip, in the dict's order, through PIL. Returns ``path``."""
    from PIL import Image, ImageDraw

    tiles = [(_to_srgb(img, meta) if meta is not None else img.clamp(0, 1)) for img in images.values()]
    h = max(t.shape[-2] for t in tiles)
    pad, label_h = 4, 14
    w = sum(t.shape[-1] for t in tiles) + pad * (len(tiles) - 1)
    canvas = Image.new("RGB", (w, h + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, t in zip(images, tiles):
        arr = (t.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype("uint8")
        canvas.paste(Image.fromarray(arr), (x, label_h))
        draw.text((x + 2, 1), name, fill="black")
        x += t.shape[-1] + pad
    canvas.save(path)
    return path


def run_demo(checkpoint: Optional[str] = None, preset: str = "tiny", device=None, backend: Optional[str] = None,
             out: Optional[str] = None, teacher_steps: int = 4, crop: Optional[int] = None, seed: int = 0,
             file=None) -> List[Dict[str, object]]:
    """Synthesize a burst from the held-out bundled image, run initial / one-step / teacher, print the table.

    Args:
        checkpoint: a file from ``python/train_ebsrd.py`` (:func:`burstkern.train.save_checkpoint`); None runs
            the ``preset`` with random weights (and says so).
        preset: ``"tiny"`` or ``"paper"`` (ignored with a checkpoint: its config decides).
        device: default ``cuda`` when available, else ``cpu``.
        backend: a burstkern backend (``auto``/``cuda``/``triton``/``reference``) for this run; None keeps the
            active one.
        out: optional PNG path: ground truth | x_init | one-step (| teacher), sRGB through the burst's own ISP.
        teacher_steps: Heun steps of the teacher (0 skips it).
        crop: HR crop of the held-out image (default :data:`DEFAULT_CROP` of the preset; the ground truth is
            ``crop − 48`` and must exceed the 2 × 40 px metric border plus the 11-px SSIM window).
        seed: burst synthesis and sampling noise.

    Returns:
        the rows of :func:`evaluate` (stage, psnr, ssim, lpips, ms, image).
    """
    import burstkern
    from .models import EBSRD, PRESETS
    from .train import load_checkpoint

    file = sys.stdout if file is None else file
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if checkpoint is not None:
        model, ckpt = load_checkpoint(checkpoint, map_location="cpu")
        preset_name = ckpt.get("preset", "custom")
        source = f"checkpoint {checkpoint} (preset {preset_name})"
    else:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        torch.manual_seed(seed)
        model, preset_name = EBSRD(preset), preset
        source = (f"preset {preset}, RANDOM WEIGHTS (no --checkpoint given): the numbers below only show that the "
                  f"pipeline runs; train a model with python/train_ebsrd.py")
    crop = DEFAULT_CROP.get(preset_name, 432) if crop is None else crop
    if not isinstance(crop, int) or crop - 48 < 2 * 40 + 11:
        raise ValueError(f"crop must be an int with crop - 48 >= 91 (the ground truth minus the 40-px metric border "
                         f"must hold the 11-px SSIM window), got {crop!r}")
    item = held_out_burst(model.config.burst_size, crop, seed)
    ctx = burstkern.backend(backend) if backend is not None else contextlib.nullcontext()
    with ctx:
        active = burstkern.get_backend()
        rows = evaluate(model, item, teacher_steps=teacher_steps, seed=seed, device=device)
    print(f"E-BSRD demo: {source}", file=file)
    b = item["burst"]
    print(f"held-out image 'flower' (crop {crop}): burst {tuple(b.shape)} -> output {tuple(item['gt'].shape)}; "
          f"device {device}, backend {active}", file=file)
    print(format_table(rows), file=file)
    if out is not None:
        images = {"ground truth": item["gt"]}
        images.update({r["stage"].split(" ")[0]: r["image"] for r in rows if not r["stage"].startswith("teacher")})
        images.update({"teacher": r["image"] for r in rows if r["stage"].startswith("teacher")})
        save_png(out, images, item["meta"])
        print(f"wrote {out}", file=file)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """``burstkern demo [--checkpoint FILE] [--preset tiny|paper] [--device D] [--backend B] [--out PNG]
    [--teacher-steps N] [--crop N] [--seed N]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="burstkern demo",
                                     description="E-BSRD on the held-out bundled image: PSNR / SSIM / LPIPS and time "
                                                 "of the initial, one-step and teacher stages.")
    parser.add_argument("--checkpoint", default=None, help="checkpoint from python/train_ebsrd.py (default: random "
                                                           "weights, clearly flagged)")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "paper"), help="model size without a checkpoint")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--backend", default=None, choices=("auto", "cuda", "triton", "reference"),
                        help="burstkern backend for this run (default: the active one)")
    parser.add_argument("--out", default=None, help="write ground truth | x_init | one-step | teacher as a PNG")
    parser.add_argument("--teacher-steps", type=int, default=4, help="Heun steps of the teacher (0 skips it)")
    parser.add_argument("--crop", type=int, default=None, help="HR crop of the held-out image (default: 176 for tiny, "
                                                               "432 for paper)")
    parser.add_argument("--seed", type=int, default=0, help="burst synthesis and sampling seed")
    args = parser.parse_args(argv)
    try:
        run_demo(args.checkpoint, args.preset, args.device, args.backend, args.out, args.teacher_steps, args.crop,
                 args.seed)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"burstkern demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
