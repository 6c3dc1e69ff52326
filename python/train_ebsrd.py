#!/usr/bin/env python
"""Train E-BSRD on synthetic bursts of the bundled sample images: initial SR → EDM teacher → one-step student.

Runs the three stages of :mod:`burstkern.train` in order on :class:`burstkern.data.SyntheticBurstDataset`
(random crops of the scikit-image / scikit-learn sample photographs; nothing is downloaded), saves one checkpoint
(state dict + config + loss curves + the arguments) and prints PSNR / SSIM of x_init, the teacher and the
one-step student on the held-out image (the same evaluation as ``burstkern demo``).

The ``tiny`` preset on 112-px crops (64² ground truth, 8² RAW frames) runs a few hundred steps per stage on a CPU
in minutes::

    python python/train_ebsrd.py --preset tiny --steps-initial 300 --steps-denoiser 300 --steps-student 200 \\
        --out tiny.pt
    burstkern demo --checkpoint tiny.pt --out demo.png

On a GPU, ``--preset paper --crop 432 --amp`` trains at the papers' scale (bf16 autocast for the U-Net).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# runnable from a checkout without installing: the repository root holds the burstkern package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

# Training crops per preset: 112 → 64² ground truth (8² frames) for tiny, 432 → 384² (48² frames) for paper.
DEFAULT_TRAIN_CROP = {"tiny": 112, "paper": 432}
DEFAULT_BATCH = {"tiny": 4, "paper": 2}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_ebsrd.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"), help="model size")
    p.add_argument("--steps-initial", type=int, default=300, help="steps of stage 1 (encoder + initial SR head, L1)")
    p.add_argument("--steps-denoiser", type=int, default=300, help="steps of stage 2 (EDM teacher)")
    p.add_argument("--steps-student", type=int, default=200, help="steps of stage 3 (consistency distillation)")
    p.add_argument("--out", default="ebsrd.pt", help="checkpoint path")
    p.add_argument("--crop", type=int, default=None, help="HR training crop (default: 112 tiny, 432 paper)")
    p.add_argument("--batch-size", type=int, default=None, help="bursts per step (default: 4 tiny, 2 paper)")
    p.add_argument("--lr-initial", type=float, default=1e-3)
    p.add_argument("--lr-denoiser", type=float, default=2e-4)
    p.add_argument("--lr-student", type=float, default=1e-4)
    p.add_argument("--p-mean", type=float, default=-1.2, help="EDM log-normal σ of the teacher: mean of ln σ")
    p.add_argument("--p-std", type=float, default=1.2, help="EDM log-normal σ of the teacher: std of ln σ")
    p.add_argument("--num-scales", type=int, default=5, help="Karras levels of the distillation schedule (E-BSRD: 5)")
    p.add_argument("--ema", type=float, default=0.95, help="EMA rate of the distillation target (E-BSRD: 0.95)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--backend", default=None, choices=("auto", "cuda", "triton", "reference"),
                   help="burstkern backend (default: the active one)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast of the U-Net (GPU only)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-crop", type=int, default=None, help="HR crop of the held-out evaluation image "
                                                               "(default: 176 tiny, 432 paper)")
    p.add_argument("--eval-teacher-steps", type=int, default=4, help="Heun steps of the teacher in the evaluation")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import contextlib

    import burstkern

    with burstkern.backend(args.backend) if args.backend is not None else contextlib.nullcontext():
        return train(args)


def train(args) -> int:
    import burstkern
    from burstkern.data import SyntheticBurstDataset
    from burstkern.demo import DEFAULT_CROP, evaluate, format_table, held_out_burst
    from burstkern.models import EBSRD
    from burstkern.train import distill_student, save_checkpoint, train_denoiser, train_initial

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    crop = args.crop or DEFAULT_TRAIN_CROP[args.preset]
    batch = args.batch_size or DEFAULT_BATCH[args.preset]
    torch.manual_seed(args.seed)
    model = EBSRD(args.preset).to(device)
    cfg = model.config
    steps = {"initial": args.steps_initial, "denoiser": args.steps_denoiser, "student": args.steps_student}
    # enough distinct items for every step of the longest stage, each a pure function of (seed, index)
    ds = SyntheticBurstDataset(None, crop=crop, burst_size=cfg.burst_size, seed=args.seed,
                               length=max(batch * max(steps.values()), batch))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(args.seed))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"E-BSRD {args.preset}: {n_params / 1e6:.2f} M parameters; bursts {cfg.burst_size}x4x{(crop - 48) // 8}² "
          f"-> {crop - 48}², batch {batch}; device {device}, backend {burstkern.get_backend()}"
          f"{', bf16 autocast' if args.amp else ''}")
    common = dict(seed=args.seed, device=device, progress=not args.no_progress)
    losses, times = {}, {}
    for name, fn, kw in (
            ("initial", train_initial, dict(lr=args.lr_initial)),
            ("denoiser", train_denoiser, dict(lr=args.lr_denoiser, amp=args.amp, p_mean=args.p_mean,
                                              p_std=args.p_std)),
            ("student", distill_student, dict(lr=args.lr_student, amp=args.amp, num_scales=args.num_scales,
                                              ema=args.ema))):
        t0 = time.perf_counter()
        losses[name] = fn(model, loader, steps[name], **kw, **common)
        times[name] = time.perf_counter() - t0
        h = losses[name]
        if h:
            k = max(1, len(h) // 10)
            print(f"  {name:<9} {len(h):>5} steps in {times[name]:7.1f} s; loss first {k}: "
                  f"{sum(h[:k]) / k:.4g}, last {k}: {sum(h[-k:]) / k:.4g}")
        else:
            print(f"  {name:<9} skipped (0 steps)")
    save_checkpoint(args.out, model, losses=losses, preset=args.preset, args=vars(args), train_seconds=times)
    print(f"saved {args.out}")

    eval_crop = args.eval_crop or DEFAULT_CROP[args.preset]
    item = held_out_burst(cfg.burst_size, eval_crop, args.seed)
    rows = evaluate(model, item, teacher_steps=args.eval_teacher_steps, seed=args.seed, device=device)
    print(f"held-out image 'flower' (crop {eval_crop} -> {eval_crop - 48}²):")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
