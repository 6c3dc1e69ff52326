#!/usr/bin/env python
"""Train E-BSRD on synthetic bursts: initial burst SR → EDM teacher → one-step student; evaluate on the held-out set.

The defaults are the recipe of the shipped ``tiny`` weights (burstkern/weights/README.md records the exact
command, seed, time and machine). Data: :class:`burstkern.data.SyntheticBurstDataset` on the bundled training
photographs plus seeded dead-leaves images (training seed range; nothing is downloaded). The three stages of
:mod:`burstkern.train`:

1. encoder + initial head: x_init = registered shift-and-add of the frames + learned residual, L1 to the ground
   truth;
2. teacher: EDM training with σ log-uniform on [cm_sigma_min, σ_τ] (where early-step sampling uses it);
3. student: distilled at σ_τ onto the teacher's Heun solution from the same x_τ = x_init + σ_τ·ε;

then (default on, ``--no-select-sigma`` skips it) the inference start noise is selected: the one-step student on
the validation split (:func:`burstkern.data.validation_bursts`, seed 0, no teacher) at every σ of ``--sigma-grid``,
and the σ of the highest mean PSNR is stored as the config's ``inference_sigma_tau`` (what ``one_step`` / ``teacher``
/ ``forward`` use by default; training σ_τ unchanged). The grid's PSNR / SSIM are recorded in the checkpoint
(``sigma_selection``) and the JSON log. ``--resume`` of a finished checkpoint runs just this step and the final
evaluation again, so an existing checkpoint is updated exactly as a fresh run would write it (weights unchanged).

Every stage uses AdamW with warm-up + cosine decay. The checkpoint (``--out``) is written after every stage and
every ``--checkpoint-every`` steps, with what ``--resume`` needs to continue exactly where it stopped. At the end it
scores the validation set (for decisions) and the held-out set (:func:`burstkern.data.heldout_bursts`, recorded in
the checkpoint and shown by ``burstkern demo``), and writes the loss curves (``--curves``, PNG) and a JSON log
(``--log``). tqdm bars appear only on a terminal.

    OMP_NUM_THREADS=1 python python/train_ebsrd.py --out tiny.pt          # the shipped recipe (~40 min, 1 core)
    python python/train_ebsrd.py --resume tiny.pt                         # continue an interrupted run
    python python/train_ebsrd.py --resume tiny.pt --out new.pt            # finished run: select σ_τ + evaluate
    burstkern demo --checkpoint tiny.pt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

# runnable from a checkout without installing: the repository root holds the burstkern package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

STAGES = ("initial", "denoiser", "student")
# checkpoint keys this script writes (the rest of a resumed checkpoint is carried over as it is)
_WRITTEN = ("format", "config", "state_dict", "losses", "preset", "args", "train_seconds", "train_cpu_seconds",
            "train_state", "heldout", "sigma_selection")
SIGMA_GRID = (0.002, 0.003, 0.005, 0.01, 0.02, 0.03)  # 0.002 = the tiny student's cm_sigma_min: skipped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_ebsrd.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"), help="model size")
    p.add_argument("--steps-initial", type=int, default=1200, help="steps of stage 1 (encoder + initial SR head)")
    p.add_argument("--steps-denoiser", type=int, default=400, help="steps of stage 2 (EDM teacher)")
    p.add_argument("--steps-student", type=int, default=80, help="steps of stage 3 (one-step student)")
    p.add_argument("--out", default="ebsrd.pt", help="checkpoint path")
    p.add_argument("--resume", default=None, help="continue the run saved in this checkpoint (its arguments win)")
    p.add_argument("--checkpoint-every", type=int, default=250, help="steps between resumable checkpoints")
    p.add_argument("--log", default=None, help="JSON log (default: OUT with .json)")
    p.add_argument("--curves", default=None, help="loss-curve PNG (default: OUT with _curves.png)")
    p.add_argument("--crop", type=int, default=112, help="HR training crop (112: 64² ground truth, 8² RAW frames)")
    p.add_argument("--batch-size", type=int, default=4, help="bursts per step")
    p.add_argument("--deadleaves", type=float, default=0.5, help="fraction of training bursts from dead leaves")
    p.add_argument("--lr-initial", type=float, default=2e-3)
    p.add_argument("--lr-denoiser", type=float, default=5e-4)
    p.add_argument("--lr-student", type=float, default=2e-4)
    p.add_argument("--lr-schedule", default="cosine", choices=("cosine", "constant"))
    p.add_argument("--init-base", default="merge", choices=("merge", "reference", "none"),
                   help="x_init = BASE + learned residual: merge (registered shift-and-add of the frames), reference "
                        "(the interpolated reference frame), none (the head alone, as before)")
    p.add_argument("--sigma-dist", default="loguniform", choices=("loguniform", "lognormal"),
                   help="teacher's training σ: log-uniform on [cm_sigma_min, σ_τ], or EDM's log-normal")
    p.add_argument("--p-mean", type=float, default=-1.2, help="log-normal σ: mean of ln σ")
    p.add_argument("--p-std", type=float, default=1.2, help="log-normal σ: std of ln σ")
    p.add_argument("--student-target", default="teacher", choices=("teacher", "cd"),
                   help="teacher: distil at σ_τ onto the teacher's solution; cd: E-BSRD's consistency distillation")
    p.add_argument("--target-steps", type=int, default=4, help="Heun steps of the teacher's distillation targets")
    p.add_argument("--num-scales", type=int, default=5, help="cd: Karras levels of the schedule (E-BSRD: 5)")
    p.add_argument("--ema", type=float, default=0.95, help="cd: EMA rate of the target network (E-BSRD: 0.95)")
    p.add_argument("--half", type=int, default=1, choices=(0, 1), help="store the final weights as fp16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--backend", default="reference", help="burstkern backend (training runs the reference ops "
                                                          "on the CPU)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast of the U-Net (GPU only)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-teacher-steps", type=int, default=40, help="Heun steps of the teacher in the evaluation")
    p.add_argument("--no-select-sigma", action="store_true", help="skip the validation selection of the inference "
                                                                  "start noise σ_τ (inference then uses σ_τ)")
    p.add_argument("--sigma-grid", type=float, nargs="+", default=list(SIGMA_GRID),
                   help="inference start noise levels the selection tries on the validation split")
    p.add_argument("--no-eval", action="store_true", help="skip the final validation / held-out evaluation")
    p.add_argument("--skip-validation", action="store_true", help="final evaluation on the held-out set only")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars even on a terminal")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume:
        args = _resume_args(args)
    import burstkern

    torch.set_num_threads(max(1, args.threads))
    try:
        with burstkern.backend(args.backend):
            return train(args)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: python python/train_ebsrd.py --resume {args.out}", file=sys.stderr)
        return 130
    finally:
        from burstkern import distributed as bd

        bd.shutdown()  # leave torchrun's process group (no-op in one process)


def _resume_args(args):
    from burstkern.models import CheckpointError
    from burstkern.train import load_checkpoint

    try:
        _, ckpt = load_checkpoint(args.resume)
    except (CheckpointError, FileNotFoundError) as e:
        sys.exit(f"train_ebsrd.py: error: --resume: {e}")
    saved = ckpt.get("args")
    if not isinstance(saved, dict) or "train_state" not in ckpt:
        sys.exit(f"train_ebsrd.py: error: --resume: {args.resume} has no training state (not written by this script)")
    ns = argparse.Namespace(**{**vars(args), **saved})
    ns.resume, ns.out = args.resume, args.resume if args.out == "ebsrd.pt" else args.out
    return ns


def _paths(args):
    stem = os.path.splitext(args.out)[0]
    return args.log or stem + ".json", args.curves or stem + "_curves.png"


def select_sigma(model, bursts, grid=SIGMA_GRID, seed: int = 0, device=None, score=None):
    """The inference start noise: the σ of ``grid`` whose one-step student has the highest mean PSNR on ``bursts``
    (the validation split; ties: the first; levels <= the student's ``cm_sigma_min`` skipped). Returns
    ``(sigma, rows)``, rows ``{"sigma", "psnr", "ssim", "hf_ratio"}`` in grid order. ``score(model, bursts, sigma) -> {"psnr", "ssim", ...}`` replaces the measurement
    (tests); the default is :func:`burstkern.demo.evaluate_set`'s one-step row at that σ (seed ``seed``)."""
    # the consistency student is defined above its σ_min only (at σ_min it is the identity): such levels are skipped
    low = model.config.cm_sigma_min
    skipped = [float(g) for g in grid if not float(g) > low]
    grid = [float(g) for g in grid if float(g) > low]
    if not grid:
        raise ValueError(f"select_sigma: no grid level above the student's cm_sigma_min ({low:g})")
    if skipped:
        print(f"select_sigma: skipping σ_τ {', '.join(f'{g:g}' for g in skipped)} (not above the student's "
              f"cm_sigma_min = {low:g}, where the consistency sampler is undefined)")
    if score is None:
        from burstkern.demo import evaluate_set

        def score(m, b, sigma):
            old = m.config.inference_sigma_tau
            m.config.inference_sigma_tau = float(sigma)
            try:
                rows = evaluate_set(m, b, teacher_steps=0, seed=seed, device=device)
            finally:
                m.config.inference_sigma_tau = old
            return next(r for r in rows if r["method"] == "one-step")

    rows = []
    for sigma in grid:
        r = score(model, bursts, float(sigma))
        rows.append({"sigma": float(sigma), "psnr": float(r["psnr"]), "ssim": float(r["ssim"]),
                     **({"hf_ratio": float(r["hf_ratio"])} if "hf_ratio" in r else {})})
    best = max(range(len(rows)), key=lambda i: (rows[i]["psnr"], -i))
    return rows[best]["sigma"], rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def train(args) -> int:
    import burstkern
    from burstkern.data import SyntheticBurstDataset
    from burstkern.models import EBSRD
    from burstkern.train import distill_student, load_checkpoint, save_checkpoint, train_denoiser, train_initial

    from burstkern import distributed as bd  # torchrun: data-parallel (docs/reproducing.md); else no-ops
    device = bd.init(args.device).device
    if not bd.is_main():  # one log: rank 0's (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")
    log_path, curves_path = _paths(args)
    torch.manual_seed(args.seed)
    model = EBSRD(args.preset, init_base=args.init_base).to(device)
    cfg = model.config
    steps = {"initial": args.steps_initial, "denoiser": args.steps_denoiser, "student": args.steps_student}
    losses = {k: [] for k in STAGES}
    times = {k: 0.0 for k in STAGES}
    cpu = {k: 0.0 for k in STAGES}   # process CPU seconds: the one-core cost, whatever else the machine runs
    state = {"done": [], "stage": None, "resume": None}
    carried = {}
    if args.resume:
        model, ckpt = load_checkpoint(args.resume)
        model = model.to(device)
        state = ckpt["train_state"]
        # other records of the resumed checkpoint (e.g. notes) carry over; what this run measures is written anew
        carried = {k: v for k, v in ckpt.items() if k not in _WRITTEN}
        losses.update(ckpt.get("losses", {}))
        times.update(ckpt.get("train_seconds", {}))
        cpu.update(ckpt.get("train_cpu_seconds", {}))
        print(f"resuming {args.resume}: done {state['done'] or 'nothing'}"
              + (f", {state['stage']} at step {state['resume']['step']}" if state.get("resume") else ""))

    def save(path=args.out, half=False, **extra):
        if not bd.is_main():  # rank 0 alone writes checkpoints
            return
        tmp = path + ".tmp"
        save_checkpoint(tmp, model, losses=losses, half=half, preset=args.preset, args=vars(args),
                        train_seconds=times, train_cpu_seconds=cpu, train_state=state, **{**carried, **extra})
        os.replace(tmp, path)

    bd.broadcast_module(model)  # every rank starts from rank 0's weights
    n_params = sum(p.numel() for p in model.parameters())
    print(f"E-BSRD {args.preset}: {n_params / 1e6:.2f} M parameters; bursts {cfg.burst_size}x4x{(args.crop - 48) // 8}² "
          f"-> {args.crop - 48}², batch {args.batch_size}, dead leaves {args.deadleaves:.0%}; device {device}, "
          f"backend {burstkern.get_backend()}, {torch.get_num_threads()} thread(s)", flush=True)
    common = dict(device=device, progress=not args.no_progress and bd.is_main(), lr_schedule=args.lr_schedule)
    kw = {"initial": dict(lr=args.lr_initial),
          "denoiser": dict(lr=args.lr_denoiser, amp=args.amp, sigma_dist=args.sigma_dist, p_mean=args.p_mean,
                           p_std=args.p_std),
          "student": dict(lr=args.lr_student, amp=args.amp, target=args.student_target,
                          target_steps=args.target_steps, num_scales=args.num_scales, ema=args.ema)}
    fns = {"initial": train_initial, "denoiser": train_denoiser, "student": distill_student}
    for k, name in enumerate(STAGES):
        if name in state["done"]:
            continue
        # each stage its own item stream (a pure function of seed and step: resumable exactly)
        ds = SyntheticBurstDataset(None, crop=args.crop, burst_size=cfg.burst_size, seed=(args.seed * 8 + k),
                                   length=2 ** 31 - 1, deadleaves=args.deadleaves)
        resume = state["resume"] if state.get("stage") == name else None
        t0, c0 = time.perf_counter(), time.process_time()
        t_before, c_before = times[name], cpu[name]

        def ckpt_fn(st, name=name, t0=t0, t_before=t_before, c0=c0, c_before=c_before):
            times[name] = t_before + time.perf_counter() - t0
            cpu[name] = c_before + time.process_time() - c0
            losses[name] = st["history"]
            state.update(stage=name, resume=st)
            save()

        # torchrun: each rank its slice of every global batch of --batch-size
        h = fns[name](model, bd.step_batches(ds, args.batch_size), steps[name], seed=args.seed * 8 + k, resume=resume,
                      checkpoint=ckpt_fn, checkpoint_every=args.checkpoint_every, **kw[name], **common)
        losses[name] = h
        times[name] = t_before + time.perf_counter() - t0
        cpu[name] = c_before + time.process_time() - c0
        state.update(done=state["done"] + [name], stage=None, resume=None)
        save()
        if h:
            q = max(1, len(h) // 10)
            print(f"  {name:<9} {len(h):>5} steps, {times[name]:7.1f} s wall, {cpu[name]:7.1f} s CPU; loss first {q}: "
                  f"{sum(h[:q]) / q:.4g}, "
                  f"last {q}: {sum(h[-q:]) / q:.4g}", flush=True)
    # a stage time may be None (not recorded by an older run, e.g. the shipped weights' stage 1 CPU time)
    total = sum(v for v in times.values() if v is not None)
    total_cpu = sum(v for v in cpu.values() if v is not None)
    print(f"trained in {total / 60:.1f} min wall, {total_cpu / 60:.1f} min CPU "
          f"({', '.join(f'{k} ' + ('?' if v is None else f'{v:.0f}') + ' s' for k, v in cpu.items())} CPU) on "
          f"{machine()}")

    extra = {}
    if not getattr(args, "no_select_sigma", False) and bd.is_main():
        from burstkern.data import HELDOUT_CROP, validation_bursts
        from burstkern.demo import evaluate_set  # noqa: F401 - import errors here, not mid-selection

        t0 = time.perf_counter()
        sel_model = _as_stored(model, args, device)
        bursts = validation_bursts(burst_size=cfg.burst_size, crop=HELDOUT_CROP)
        grid = tuple(getattr(args, "sigma_grid", None) or SIGMA_GRID)
        sigma, sel_rows = select_sigma(sel_model, bursts, grid, seed=0, device=device)
        model.config.inference_sigma_tau = sigma
        extra["sigma_selection"] = {"split": "validation", "bursts": len(bursts["names"]), "seed": 0,
                                    "method": "one-step", "grid": [float(g) for g in grid], "rows": sel_rows,
                                    "skipped": [float(g) for g in grid if not float(g) > cfg.cm_sigma_min],
                                    "selected": sigma, "train_sigma_tau": cfg.sigma_tau,
                                    "seconds": time.perf_counter() - t0}
        print(f"inference σ_τ selected on the validation set ({len(bursts['names'])} bursts, one-step, seed 0, "
              f"{time.perf_counter() - t0:.0f} s): {sigma:g} (training σ_τ {cfg.sigma_tau:g})\n"
              + "\n".join(f"  σ_τ {r['sigma']:<6g} PSNR {r['psnr']:6.2f} dB  SSIM {r['ssim']:.4f}"
                          + ("  <- selected" if r["sigma"] == sigma else "") for r in sel_rows), flush=True)
    elif getattr(args, "no_select_sigma", False):
        model.config.inference_sigma_tau = None

    log = {"args": vars(args), "train_seconds": times, "train_cpu_seconds": cpu, "total_seconds": total,
           "total_cpu_seconds": total_cpu, "machine": machine(), "losses": losses}
    if "sigma_selection" in extra:
        log["sigma_selection"] = extra["sigma_selection"]
    if not args.no_eval and bd.is_main():
        from burstkern.data import HELDOUT_CROP, heldout_bursts, validation_bursts
        from burstkern.demo import evaluate_set, format_table

        eval_model = _as_stored(model, args, device)
        for split, fn in (("validation", validation_bursts), ("heldout", heldout_bursts)):
            if split == "validation" and args.skip_validation:
                continue
            t0 = time.perf_counter()
            bursts = fn(burst_size=cfg.burst_size, crop=HELDOUT_CROP)
            rows = evaluate_set(eval_model, bursts, teacher_steps=args.eval_teacher_steps, seed=args.seed,
                                device=device)
            print(f"{split} set ({len(bursts['names'])} bursts, {HELDOUT_CROP - 48}² output, "
                  f"{time.perf_counter() - t0:.0f} s):\n{format_table(rows)}", flush=True)
            log[split] = rows
            if split == "heldout":
                extra["heldout"] = {"rows": [{k: v for k, v in r.items() if not k.endswith("_each")} for r in rows],
                                    "bursts": len(bursts["names"]), "names": bursts["names"], "machine": machine(),
                                    "teacher_steps": args.eval_teacher_steps}
    save(half=bool(args.half), **extra)
    bd.barrier()
    if not bd.is_main():
        return 0
    print(f"saved {args.out} ({os.path.getsize(args.out) / 2 ** 20:.2f} MiB{', fp16 weights' if args.half else ''})")
    with open(log_path, "w") as f:
        json.dump(log, f, indent=1)
    print(f"log {log_path}")
    try:
        plot_curves(losses, curves_path)
        print(f"loss curves {curves_path}")
    except ImportError as e:
        print(f"no loss curves ({e})")
    return 0


def _as_stored(model, args, device):
    """The model as the checkpoint will hold it: fp16-rounded weights (fp32 compute) with ``--half 1``."""
    if not args.half:
        return model
    from burstkern.models import EBSRD

    m = EBSRD(model.config).to(device)  # a copy of the config as it is now (a selected σ_τ included)
    m.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    return m


def plot_curves(losses, path: str) -> str:
    """The per-stage training losses (raw and a moving average), log scale, one panel per stage."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [k for k in STAGES if losses.get(k)]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.2), dpi=100)
    axes = [axes] if len(names) <= 1 else list(axes)
    titles = {"initial": "1. x_init (L1)", "denoiser": "2. teacher (EDM loss)", "student": "3. student (distill)"}
    for ax, name in zip(axes, names):
        h = torch.tensor(losses[name], dtype=torch.float64)
        ax.plot(h.numpy(), lw=0.5, alpha=0.35, color="C0")
        w = max(1, len(h) // 40)
        if len(h) >= w:
            ma = torch.nn.functional.avg_pool1d(h[None, None], w, stride=1)[0, 0]
            ax.plot(torch.arange(len(ma)).numpy() + w // 2, ma.numpy(), color="C1", lw=1.5, label=f"mean of {w}")
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_title(titles.get(name, name), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
