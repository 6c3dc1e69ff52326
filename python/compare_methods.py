#!/usr/bin/env python
"""Side-by-side comparison of E-BSRD, TAD-SR and DP-IR at ``tiny`` scale on a CPU (docs/methods.md).

Every differing stage starts from the same E-BSRD checkpoint (default: the shipped ``tiny`` weights: encoder,
initial head, teacher, consistency student) and trains on the same cached training batches (same images, same
noise), with the same step budget. Subcommands, run in this order (each writes into ``--dir``)::

    python python/compare_methods.py denoiser   # DP-IR's unconditional denoiser, clean images only (no checkpoint)
    python python/compare_methods.py prepare    # cache the training batches + the teacher's 4-step targets
    python python/compare_methods.py student --variant cm        # E-BSRD teacher-target student, same budget
    python python/compare_methods.py student --variant tad       # TAD-SR (HFSD + time-aware D, hinge)
    python python/compare_methods.py student --variant tad-sds   # ablation: plain SDS
    python python/compare_methods.py student --variant tad-notime   # ablation: no time injection in D
    python python/compare_methods.py fusion     # DP-IR fusion network only (IR + denoiser frozen)
    python python/compare_methods.py eval       # the table on burstkern.data.heldout_bursts + the figure

Training decisions use ``burstkern.data.validation_bursts`` (``eval --split val``), never the held-out set.
One torch thread per process (``--threads``); logs and checkpoints under ``--dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

VARIANTS = {  # name -> train_tad keyword arguments
    "cm": dict(w_sd=0.0, w_adv=0.0),
    "tad": dict(score="hfsd", time_aware=True),
    "tad-sds": dict(score="sds", time_aware=True),
    "tad-notime": dict(score="hfsd", time_aware=False),
    "tad-noadv": dict(score="hfsd", w_adv=0.0),
}


def _p(args, name):
    return os.path.join(args.dir, name)


def _log(args, name, record):
    with open(_p(args, name), "w") as f:
        json.dump(record, f, indent=1)


def _train_batches(args):
    from burstkern.data import SyntheticBurstDataset

    ds = SyntheticBurstDataset(None, crop=args.crop, burst_size=args.burst_size, seed=args.data_seed,
                               split="train", length=args.batches * args.batch_size, deadleaves=args.deadleaves)
    coll = torch.utils.data.default_collate
    for b in range(args.batches):
        items = [ds[b * args.batch_size + i] for i in range(args.batch_size)]
        batch = coll(items)
        yield {"burst": batch["burst"], "gt": batch["gt"]}


def _load_ebsrd(args):
    from burstkern.models import EBSRD

    if args.checkpoint in (None, "", "tiny"):
        return EBSRD.from_pretrained("tiny").eval()
    model = EBSRD.from_checkpoint(args.checkpoint).eval()
    if args.fp16_roundtrip:  # the values an fp16-stored (shipped) copy of this checkpoint holds
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
    return model


def cmd_denoiser(args):
    from burstkern.methods import train_dpir_denoiser
    from burstkern.models.dpir import DPIR

    dpir = DPIR("tiny")
    batches = list(_train_batches(args))
    t0 = time.time()
    hist = train_dpir_denoiser(dpir, batches, args.steps, lr=args.lr or 5e-4, seed=args.seed, progress=False)
    wall = time.time() - t0
    torch.save({k: v for k, v in dpir.denoiser.state_dict().items()}, _p(args, "dpir_denoiser.pt"))
    _log(args, "dpir_denoiser.json", {"steps": args.steps, "batch": args.batch_size, "wall_s": wall, "loss": hist,
                                      "params": dpir.parameter_counts()["denoiser"], "argv": sys.argv})
    print(f"denoiser: {args.steps} steps in {wall:.0f} s, last loss {sum(hist[-20:]) / max(1, len(hist[-20:])):.4f}")


def cmd_prepare(args):
    from burstkern.methods import tad_prepare

    model = _load_ebsrd(args)
    prepared = []
    t0 = time.time()
    for i, b in enumerate(_train_batches(args)):
        g = torch.Generator().manual_seed(10_000 + args.seed * 7919 + i)
        y = b["gt"] * 2 - 1
        p = tad_prepare(model, b["burst"], y, torch.randn(y.shape, generator=g), args.target_steps)
        p["burst"] = b["burst"]
        prepared.append(p)
    torch.save(prepared, _p(args, "prepared.pt"))
    print(f"prepared {len(prepared)} batches of {args.batch_size} in {time.time() - t0:.0f} s")


def cmd_student(args):
    from burstkern.methods import train_tad

    model = _load_ebsrd(args)
    prepared = torch.load(_p(args, "prepared.pt"), weights_only=True)
    for p in prepared:
        p.pop("burst", None)
    kw = dict(VARIANTS[args.variant])
    if args.w_adv is not None and "w_adv" not in kw:
        kw["w_adv"] = args.w_adv
    if args.w_sd is not None and "w_sd" not in kw:
        kw["w_sd"] = args.w_sd
    t0 = time.time()
    hist = train_tad(model, None, args.steps, lr=args.lr or 1e-4, seed=args.seed, prepared=prepared,
                     progress=False, **kw)
    wall = time.time() - t0
    torch.save(model.student.state_dict(), _p(args, f"student_{args.variant}.pt"))
    _log(args, f"student_{args.variant}.json", {"variant": args.variant, "kwargs": kw, "steps": args.steps,
                                                "batch": args.batch_size, "wall_s": wall, "hist": hist,
                                                "argv": sys.argv})
    print(f"{args.variant}: {args.steps} steps in {wall:.0f} s; mse {hist['mse'][0]:.4f} -> "
          f"{sum(hist['mse'][-10:]) / 10:.4f}")


def _dpir(args, model=None):
    from burstkern.models.dpir import DPIR

    model = model if model is not None else _load_ebsrd(args)
    dpir = DPIR.from_ebsrd(model, sigma_tau=args.dpir_sigma_tau)
    dpir.denoiser.load_state_dict(torch.load(_p(args, "dpir_denoiser.pt"), weights_only=True))
    return dpir


def cmd_fusion(args):
    from burstkern.methods import train_dpir_fusion

    dpir = _dpir(args)
    batches = list(_train_batches(args))   # the same batches as `prepare` caches (same seed and order)
    t0 = time.time()
    hist = train_dpir_fusion(dpir, batches, args.steps, lr=args.lr or 1e-3, seed=args.seed, progress=False)
    wall = time.time() - t0
    torch.save(dpir.fusion.state_dict(), _p(args, "dpir_fusion.pt"))
    counts = dpir.parameter_counts()
    _log(args, "dpir_fusion.json", {"steps": args.steps, "batch": args.batch_size, "wall_s": wall, "loss": hist,
                                    "params": counts, "argv": sys.argv})
    print(f"fusion: {counts['fusion']} trainable parameters, {args.steps} steps in {wall:.0f} s")


def _methods(args, model):
    """name -> (label, fn(burst, generator) -> [B, 3, H, W] in [0, 1], trainable params of the differing stage)."""
    import copy

    from burstkern.models import aligned_baseline

    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    out = {"baseline": ("aligned single-frame baseline", lambda b, g: aligned_baseline(b), 0)}
    out["teacher"] = (f"E-BSRD teacher ({args.teacher_steps} Heun steps)",
                      lambda b, g: (model.teacher(b, num_steps=args.teacher_steps, generator=g).clamp(-1, 1) + 1) / 2,
                      n(model.denoiser))
    out["shipped"] = ("E-BSRD student, shipped (1 step)", lambda b, g: model(b, generator=g), n(model.student))
    for v in VARIANTS:
        path = _p(args, f"student_{v}.pt")
        if os.path.isfile(path):
            m = copy.deepcopy(model)
            m.student.load_state_dict(torch.load(path, weights_only=True))
            label = {"cm": "E-BSRD student, same budget (1 step)", "tad": "TAD-SR student (1 step)",
                     "tad-sds": "TAD-SR, plain SDS (1 step)", "tad-notime": "TAD-SR, D without time (1 step)",
                     "tad-noadv": "TAD-SR, no adversarial (1 step)"}[v]
            out[v] = (label, (lambda mm: lambda b, g: mm(b, generator=g))(m), n(m.student))
    if os.path.isfile(_p(args, "dpir_fusion.pt")) and os.path.isfile(_p(args, "dpir_denoiser.pt")):
        dpir = _dpir(args, model).eval()
        dpir.fusion.load_state_dict(torch.load(_p(args, "dpir_fusion.pt"), weights_only=True))
        nf = n(dpir.fusion)
        for nfe in (1, 4):
            out[f"dpir{nfe}"] = (f"DP-IR ({nfe} NFE, closed-form start)",
                                 (lambda k: lambda b, g: (dpir.sample(b, nfe=k, generator=g) + 1) / 2)(nfe), nf)
        out["dpir4-noise"] = ("DP-IR (4 NFE, from noise)",
                              lambda b, g: (dpir.sample(b, nfe=4, start="noise", generator=g) + 1) / 2, nf)
        for tau in (float(t) for t in args.dpir_taus.split(",")) if args.dpir_taus else ():
            for nfe in (1, 4):
                out[f"dpir{nfe}@{tau:g}"] = (
                    f"DP-IR ({nfe} NFE, sigma_tau {tau:g})",
                    (lambda k, t: lambda b, g: (dpir.sample(b, nfe=k, sigma_tau=t, generator=g) + 1) / 2)(nfe, tau),
                    nf)
        out["dpir-ir"] = ("DP-IR IR network alone (x_init)", lambda b, g: (dpir.ir(b).clamp(-1, 1) + 1) / 2, 0)
    return out


def cmd_eval(args):
    from burstkern import metrics
    from burstkern.data import heldout_bursts, validation_bursts

    model = _load_ebsrd(args)
    ev = (heldout_bursts if args.split == "eval" else validation_bursts)(burst_size=model.config.burst_size)
    methods = _methods(args, model)
    if args.only:
        methods = {k: v for k, v in methods.items() if k in args.only.split(",")}
    rows, crops = [], {}
    N = ev["burst"].shape[0]
    fig_i = args.figure_index
    for name, (label, fn, params) in methods.items():
        acc = {"psnr": [], "ssim": [], "hf": [], "hf_gt": [], "s": 0.0}
        for c0 in range(0, N, args.chunk):
            b, gt = ev["burst"][c0:c0 + args.chunk], ev["gt"][c0:c0 + args.chunk]
            g = torch.Generator().manual_seed(args.seed * 1000 + c0)
            t0 = time.perf_counter()
            with torch.no_grad():
                pred = fn(b, g).clamp(0, 1)
            acc["s"] += time.perf_counter() - t0
            acc["psnr"] += metrics.psnr(pred, gt).tolist()
            acc["ssim"] += metrics.ssim(pred, gt).tolist()
            acc["hf"] += metrics.hf_energy(pred).tolist()
            acc["hf_gt"] += metrics.hf_energy(gt).tolist()
            if c0 <= fig_i < c0 + args.chunk:
                crops[label] = pred[fig_i - c0]
                crops.setdefault("ground truth", gt[fig_i - c0])
        rows.append({"method": name, "label": label, "psnr": sum(acc["psnr"]) / N, "ssim": sum(acc["ssim"]) / N,
                     "hf_ratio": sum(acc["hf"]) / max(sum(acc["hf_gt"]), 1e-20), "ms": 1e3 * acc["s"] / N,
                     "params": params, "psnr_each": acc["psnr"]})
        r = rows[-1]
        print(f"{label:<40} {r['psnr']:7.2f} {r['ssim']:.4f} {r['hf_ratio']:6.3f} {r['ms']:8.1f} ms {params:>8}",
              flush=True)
    base = next((r for r in rows if r["method"] == "baseline"), None)
    for r in rows:
        r["wins"] = sum(a > b_ for a, b_ in zip(r["psnr_each"], base["psnr_each"])) if base else None
    _log(args, f"table_{args.split}{args.tag}.json", {"split": args.split, "n": N, "names": ev["names"], "rows": rows,
                                            "argv": sys.argv, "threads": torch.get_num_threads()})
    wins = lambda r: "" if r["wins"] is None else f"{r['wins']}/{N}"  # noqa: E731
    md = ["| method | PSNR dB | Δ baseline | SSIM | HF ratio | ms / burst | trained params | wins vs baseline |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = f"{r['psnr'] - base['psnr']:+.2f}" if base else ""
        md.append(f"| {r['label']} | {r['psnr']:.2f} | {d} | {r['ssim']:.4f} | {r['hf_ratio']:.3f} | {r['ms']:.1f} | "
                  f"{r['params']:,} | {wins(r)} |")
    with open(_p(args, f"table_{args.split}{args.tag}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    if args.figure:
        _figure(args.figure, crops, ev["names"][fig_i], {r["label"]: r["psnr_each"][fig_i] for r in rows})


def _figure(path, crops, name, psnrs, box=(40, 40, 48, 48)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y0, x0, h, w = box
    labels = list(crops)
    cols = 4
    rows = (len(labels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, lab in zip(axes.flat, labels):
        img = crops[lab][:, y0:y0 + h, x0:x0 + w].clamp(0, 1) ** (1 / 2.2)   # display gamma only
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{lab}\n" + (f"{psnrs[lab]:.2f} dB" if lab in psnrs else "(reference)"), fontsize=8)
    fig.suptitle(f"held-out burst {name}: the same {h}x{w} crop from each method (linear RGB, gamma 2.2 shown)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=("denoiser", "prepare", "student", "fusion", "eval"))
    p.add_argument("--dir", default="compare_runs", help="folder for checkpoints, caches, logs, tables")
    p.add_argument("--checkpoint", default="tiny", help="E-BSRD checkpoint (default: the shipped tiny weights)")
    p.add_argument("--fp16-roundtrip", action="store_true",
                   help="round the checkpoint's weights through fp16 (= the shipped fp16 copy of the same run)")
    p.add_argument("--variant", default="tad", choices=tuple(VARIANTS))
    p.add_argument("--steps", type=int, default=100, help="training steps of the stage")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--w-sd", type=float, default=None, help="TAD-SR weight of the score distillation (default 1)")
    p.add_argument("--w-adv", type=float, default=None, help="TAD-SR weight of the adversarial loss (default 0.1)")
    p.add_argument("--batches", type=int, default=100, help="cached training batches")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--burst-size", type=int, default=4)
    p.add_argument("--deadleaves", type=float, default=0.5)
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--target-steps", type=int, default=4)
    p.add_argument("--teacher-steps", type=int, default=40)
    p.add_argument("--split", default="eval", choices=("eval", "val"))
    p.add_argument("--only", default=None, help="comma-separated methods to evaluate")
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--tag", default="", help="eval: suffix of the table file names")
    p.add_argument("--figure", default=None, help="PNG of the same crop from each method")
    p.add_argument("--figure-index", type=int, default=0)
    p.add_argument("--dpir-sigma-tau", type=float, default=None,
                   help="DP-IR closed-form start level (default: the E-BSRD config's sigma_tau)")
    p.add_argument("--dpir-taus", default=None, help="eval: extra DP-IR rows at these start levels (validation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.dir, exist_ok=True)
    import warnings

    warnings.filterwarnings("ignore", message="burstkern: cpu ops use the reference backend")
    {"denoiser": cmd_denoiser, "prepare": cmd_prepare, "student": cmd_student, "fusion": cmd_fusion,
     "eval": cmd_eval}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
