"""``burstkern eval``: a model on the published burst-SR benchmarks (or the synthetic held-out set), per burst.

::

    burstkern eval --data /data/synburst_val --format synthetic-val --method one-step --csv syn_onestep.csv
    burstkern eval --data /data/burstsr --format burstsr --split val --method teacher --steps 40
    burstkern eval --format synthetic                       # burstkern's own held-out set, no download at all

- **Data** (``--format``, detected from the folder when omitted): ``synthetic-val`` (SyntheticBurst validation set,
  :class:`burstkern.data.SyntheticBurstVal`), ``burstsr`` (:class:`burstkern.data.BurstSR`, ``--split``),
  ``synthetic`` (no ``--data``: :func:`burstkern.data.heldout_bursts`; ``--data DIR``: synthetic bursts of the
  sRGB images in DIR). ``--burst-size`` keeps the first T frames (default: the model's own burst size; the papers
  use 14).
- **Model**: ``--checkpoint FILE`` (python/train_ebsrd.py) or the shipped weights (``EBSRD.from_pretrained``).
- **Methods** (``--method``, comma-separated): ``baseline`` (aligned single frame), ``initial`` (x_init),
  ``one-step`` (consistency student), ``teacher`` (EDM Heun, ``--steps N``), or ``module:function`` for a method
  of your own: ``function(model, burst, steps, generator)`` -> linear RGB ``[B, 3, H, W]`` in [0, 1].
- **Metrics**, per the protocol of Bhat et al.: the output is clamped and quantised to 2**14 levels, then PSNR /
  SSIM / LPIPS on linear RGB with a 40-px border ignored (:mod:`burstkern.metrics`). LPIPS only when its AlexNet
  weights are on disk (``--allow-download`` lets it fetch them), else "unavailable". BurstSR's metrics are
  computed after spatial and colour alignment to the DSLR ground truth, which needs an optical-flow network
  (PWC-Net in the papers): pass one with ``--flow-net module:factory`` (see :class:`SpatialColorAligner`); without
  one they are reported as unavailable, never as a number.
- **Output**: a progress bar; one CSV row per burst and method (``--csv``, flushed after every batch); a summary
  table (mean and 95 % t-interval per metric, seconds per burst); ``--save-images DIR`` writes each output as a
  16-bit linear PNG (``v * 2**14``, OpenCV channel order, as the toolkit saves predictions) plus an sRGB preview.
- **Restart**: rerunning the same command skips the bursts already in the CSV (a CSV of another configuration is
  refused). Bursts run in fixed blocks of ``--batch-size`` with one noise seed per block, so a resumed run
  computes exactly the rows an uninterrupted one would.
- **Scale**: CPU or GPU (``--device``), ``--batch-size`` bursts per call (memory is bounded by it: outputs go to
  the CPU and to disk after every batch), ``--workers`` DataLoader processes for decoding.

Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["main", "run", "build_parser", "EvalError", "AlignmentUnavailable", "SpatialColorAligner", "warp",
           "masked_psnr", "masked_ssim", "summarize", "format_summary", "mean_ci", "quantize", "METHODS",
           "FORMATS", "CSV_FIELDS"]

METHODS = ("baseline", "initial", "one-step", "teacher")
_ALIASES = {"x_init": "initial", "onestep": "one-step", "student": "one-step"}
FORMATS = ("synthetic-val", "burstsr", "synthetic")
QUANT = 2 ** 14
UNAVAILABLE = "unavailable"
CSV_FIELDS = ("format", "data", "split", "checkpoint", "method", "steps", "burst_size", "seed", "batch_size",
              "index", "burst", "psnr", "ssim", "lpips", "seconds", "device", "backend")
_SIGNATURE = ("format", "data", "split", "checkpoint", "burst_size", "seed", "batch_size")
_METRICS = ("psnr", "ssim", "lpips")


class EvalError(Exception):
    """A user-facing error of ``burstkern eval``: printed as one line, exit status 2."""


class AlignmentUnavailable(RuntimeError):
    """The BurstSR aligned metrics cannot be computed: no optical-flow network was given."""


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
# two-sided 95 % Student-t quantiles t_{0.975, df}
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def _t975(df: int) -> float:
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    if df > keys[-1]:
        return 1.960
    lo = max(k for k in keys if k < df)
    hi = min(k for k in keys if k > df)
    # interpolate linearly in 1/df (exact enough between the tabulated points)
    w = (1 / df - 1 / hi) / (1 / lo - 1 / hi)
    return _T975[hi] + w * (_T975[lo] - _T975[hi])


def mean_ci(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, half-width of the 95 % Student-t confidence interval of the mean, n); the half-width is nan for
    n < 2 and the mean nan for n = 0."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(v) / n
    if n < 2:
        return m, float("nan"), n
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    return m, _t975(n - 1) * sd / math.sqrt(n), n


# ----------------------------------------------------------------------------------------------
# protocol helpers
# ----------------------------------------------------------------------------------------------
def quantize(x: Tensor) -> Tensor:
    """The toolkit's quantisation before scoring: ``int16(clamp(x, 0, 1) * 2**14) / 2**14`` (truncation)."""
    return (x.clamp(0.0, 1.0) * QUANT).to(torch.int16).float() / QUANT


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """``out(y, x) = image(y + flow_y, x + flow_x)`` bilinear, zeros outside; image ``[B, C, H, W]``, flow
    ``[B, 2, H, W]`` in pixels (channel 0 = x, 1 = y)."""
    b, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=flow.dtype),
                            torch.arange(w, device=image.device, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _gauss(sd: float, dtype, device) -> Tuple[Tensor, int]:
    ksz = 4 * int(math.ceil(sd)) + 1   # sd 1.5 -> 9 taps
    x = torch.arange(ksz, dtype=torch.float64, device=device) - (ksz - 1) / 2
    g = torch.exp(-0.5 * (x / sd) ** 2)
    return (g / g.sum()).to(dtype), ksz


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian, valid positions only (no padding)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


class SpatialColorAligner:
    """BurstSR's alignment of a prediction to the DSLR ground truth before scoring (Bhat et al., DBSR §5).

    ``flow_net(pred, gt) -> flow [B, 2, H, W]`` (pixels, x then y) such that :func:`warp` of ``pred`` by it lies
    on ``gt``; both inputs are divided by their maximum first. PWC-Net with the toolkit's weights is what the
    papers use; any network (or a callable) with that contract plugs in. Steps: warp the prediction; warp
    burst frame 0 (R, G, B = packed channels 0, 1, 3) with the flow downsampled by ``2 * sr_factor``; fit a 3 x 3
    colour matrix by least squares between the Gaussian-smoothed (sd 1.5) warped frame and the downsampled
    ground truth; apply it to the warped prediction; mark pixels whose smoothed colour error is below 20/255 as
    valid (upsampled, > 0.9). Returns ``(aligned prediction, valid mask [B, 1, H, W])``.
    """

    def __init__(self, flow_net: Callable[[Tensor, Tensor], Tensor], sr_factor: int = 4, threshold: float = 20.0):
        if flow_net is None:
            raise AlignmentUnavailable("BurstSR aligned metrics unavailable: no optical-flow network")
        self.flow_net, self.sr_factor, self.threshold = flow_net, sr_factor, threshold

    @torch.no_grad()
    def __call__(self, pred: Tensor, gt: Tensor, burst: Tensor) -> Tuple[Tensor, Tensor]:
        flow = self.flow_net(pred / (pred.max() + 1e-6), gt / (gt.max() + 1e-6)).to(pred.dtype)
        if flow.shape != (pred.shape[0], 2) + tuple(pred.shape[-2:]):
            raise ValueError(f"flow network returned shape {tuple(flow.shape)}, expected "
                             f"{(pred.shape[0], 2) + tuple(pred.shape[-2:])}")
        pred_w = warp(pred, flow)
        ds = 1.0 / (2 * self.sr_factor)
        flow_ds = F.interpolate(flow, scale_factor=ds, mode="bilinear", align_corners=False) * ds
        frame0 = warp(burst[:, 0, [0, 1, 3]].to(pred.dtype), flow_ds)
        gt_ds = F.interpolate(gt, scale_factor=ds, mode="bilinear", align_corners=False)
        g, ksz = _gauss(1.5, pred.dtype, pred.device)
        ref, q = _blur(gt_ds, g), _blur(frame0, g)
        b = ref.shape[0]
        a_mat = q.reshape(b, 3, -1).transpose(1, 2)            # [B, P, 3]
        b_mat = ref.reshape(b, 3, -1).transpose(1, 2)
        cmat = torch.linalg.lstsq(a_mat.double(), b_mat.double()).solution.to(pred.dtype)   # [B, 3, 3]
        err = ((torch.bmm(a_mat, cmat) - b_mat) * 255.0).norm(dim=-1).reshape(b, 1, *ref.shape[-2:])
        valid = (err < self.threshold).to(pred.dtype)
        pad = (gt_ds.shape[-1] - valid.shape[-1]) // 2
        valid = F.pad(valid, (pad, pad, pad, pad))
        valid = F.interpolate(valid, size=gt.shape[-2:], mode="bilinear", align_corners=False) > 0.9
        out = torch.bmm(pred_w.reshape(b, 3, -1).transpose(1, 2), cmat).transpose(1, 2).reshape(pred_w.shape)
        return out, valid


def masked_psnr(pred: Tensor, gt: Tensor, valid: Tensor, border: int = 40) -> Tensor:
    """PSNR per image over the valid pixels (mask ``[B, 1, H, W]``) inside the border; nan when none is valid
    (such bursts are left out of the means, as in the toolkit)."""
    from .metrics import crop_border

    p, t, v = (crop_border(x, border) for x in (pred.double(), gt.double(), valid.double()))
    count = v.sum(dim=(1, 2, 3)) * p.shape[1]
    mse = ((p - t) ** 2 * v).sum(dim=(1, 2, 3)) / count.clamp_min(1e-12)
    return torch.where(count > 0, 10 * torch.log10(1.0 / mse), torch.full_like(mse, float("nan")))


def masked_ssim(pred: Tensor, gt: Tensor, valid: Tensor, border: int = 40) -> Tensor:
    """SSIM (window 11, sd 1.5) per image, the SSIM map averaged over the valid pixels inside the border."""
    from .metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, _gaussian_taps, crop_border

    p, t, v = (crop_border(x, border) for x in (pred.double(), gt.double(), valid.double()))
    g = _gaussian_taps(SSIM_WINDOW, SSIM_SIGMA, p.dtype, p.device)
    c = p.shape[1]
    mom = _blur(torch.cat((p, t, p * p, t * t, p * t), 1), g)
    mu_p, mu_t, e_pp, e_tt, e_pt = mom.split(c, dim=1)
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * (e_pt - mu_p * mu_t) + c2)) / (
        (mu_p ** 2 + mu_t ** 2 + c1) * (e_pp - mu_p ** 2 + e_tt - mu_t ** 2 + c2))
    r = SSIM_WINDOW // 2
    vv = v[..., r:v.shape[-2] - r, r:v.shape[-1] - r]
    count = vv.sum(dim=(1, 2, 3)) * c
    out = (s * vv).sum(dim=(1, 2, 3)) / count.clamp_min(1e-12)
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


def load_flow_net(spec: str, device) -> Callable:
    """``module:factory`` -> ``factory()`` (a flow network or callable), moved to ``device`` when it is a module."""
    if ":" not in spec:
        raise EvalError(f"--flow-net {spec!r}: expected module:factory (e.g. mypkg.pwc:load_pwcnet)")
    mod, name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise EvalError(f"--flow-net {spec!r}: cannot import it ({type(e).__name__}: {e})") from None
    try:
        net = factory()
    except Exception as e:  # noqa: BLE001 - user code: one line
        raise EvalError(f"--flow-net {spec!r}: the factory failed ({type(e).__name__}: {e})") from None
    if isinstance(net, torch.nn.Module):
        net = net.to(device).eval()
    return net


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
class _HeldOut(torch.utils.data.Dataset):
    """:func:`burstkern.data.heldout_bursts` as a per-burst dataset."""

    format = "synthetic"

    def __init__(self, burst_size: int, seed: int):
        from .data import HELDOUT_CROP, heldout_bursts

        self.set = heldout_bursts(burst_size=burst_size, crop=HELDOUT_CROP, seed=seed)
        self.burst_names = list(self.set["names"])

    def __len__(self):
        return len(self.burst_names)

    def __getitem__(self, i):
        meta = {k: v[i] for k, v in self.set["meta"].items()}
        meta["burst_name"] = self.burst_names[i]
        return {"burst": self.set["burst"][i], "gt": self.set["gt"][i], "meta": meta}

    @staticmethod
    def to_srgb(image, meta):
        from .data.benchmarks import SyntheticBurstVal

        return SyntheticBurstVal.to_srgb(image, meta)


class _ImageFolder(_HeldOut):
    """Synthetic bursts of the sRGB images in a folder (fixed seed, one burst per image and repeat)."""

    def __init__(self, folder: str, burst_size: int, seed: int, length: Optional[int]):
        import numpy as np
        from PIL import Image

        from .data import HELDOUT_CROP, SyntheticBurstDataset

        files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".png", ".jpg", ".jpeg", ".tif",
                                                                             ".tiff", ".bmp")))
        if not files:
            raise EvalError(f"{folder}: no images (.png/.jpg/...) to synthesise bursts from")
        images = []
        for f in files:
            try:
                with Image.open(os.path.join(folder, f)) as im:
                    images.append(np.asarray(im.convert("RGB")).copy())
            except OSError as e:
                raise EvalError(f"{os.path.join(folder, f)}: cannot be read as an image ({e})") from None
        self.ds = SyntheticBurstDataset(images, crop=HELDOUT_CROP, burst_size=burst_size, seed=seed,
                                        length=length or len(images))
        self.burst_names = [f"{os.path.splitext(files[i % len(files)])[0]}#{i}" for i in range(len(self.ds))]

    def __getitem__(self, i):
        item = self.ds[i]
        item["meta"] = dict(item["meta"], burst_name=self.burst_names[i])
        return item


def _open_dataset(args, burst_size: int):
    from .data.benchmarks import BenchmarkDataError, BurstSR, SyntheticBurstVal, detect_format

    fmt = args.format
    if fmt is None:
        if args.data is None:
            fmt = "synthetic"
        else:
            if not os.path.isdir(args.data):
                raise EvalError(f"{args.data}: no such directory (--data)")
            fmt = detect_format(args.data)
            if fmt is None:
                raise EvalError(f"{args.data}: neither a SyntheticBurst validation folder (bursts/, gt/) nor a "
                                f"BurstSR folder (train/ or val/ with <burst>/canon/); pass --format")
    try:
        if fmt == "synthetic-val":
            if args.data is None:
                raise EvalError("--format synthetic-val needs --data PATH (the unpacked SyntheticBurst validation "
                                "set; docs/reproducing.md says where to get it)")
            return fmt, SyntheticBurstVal(args.data, burst_size=burst_size)
        if fmt == "burstsr":
            if args.data is None:
                raise EvalError("--format burstsr needs --data PATH (the unpacked BurstSR dataset)")
            return fmt, BurstSR(args.data, args.split, burst_size=burst_size)
        if args.data is None:
            return fmt, _HeldOut(burst_size, args.seed)
        if not os.path.isdir(args.data):
            raise EvalError(f"{args.data}: no such directory (--data)")
        return fmt, _ImageFolder(args.data, burst_size, args.seed, args.limit)
    except (BenchmarkDataError, ValueError) as e:
        if isinstance(e, EvalError):
            raise
        raise EvalError(str(e)) from None


def _max_burst_size(fmt: str) -> int:
    return {"synthetic-val": 14, "burstsr": 14}.get(fmt, 64)


# ----------------------------------------------------------------------------------------------
# model and methods
# ----------------------------------------------------------------------------------------------
def _load_model(args):
    from .models import EBSRD
    from .models.ebsrd import CheckpointError

    if args.random_weights:
        torch.manual_seed(args.seed)
        return EBSRD("tiny"), "RANDOM-WEIGHTS(tiny)"
    if args.checkpoint is not None:
        try:
            return EBSRD.from_checkpoint(args.checkpoint), os.path.abspath(args.checkpoint)
        except (CheckpointError, FileNotFoundError, PermissionError) as e:
            raise EvalError(str(e)) from None
        except Exception as e:  # noqa: BLE001
            raise EvalError(f"{args.checkpoint}: cannot be loaded ({type(e).__name__}: {e})"[:300]) from None
    if not hasattr(EBSRD, "from_pretrained"):
        raise EvalError("this burstkern has no shipped weights (EBSRD.from_pretrained); pass --checkpoint FILE")
    try:
        return EBSRD.from_pretrained("tiny"), "shipped:tiny"
    except (ValueError, FileNotFoundError) as e:
        raise EvalError(f"the shipped weights 'tiny' are not available ({str(e).splitlines()[0]}); pass "
                        f"--checkpoint FILE (e.g. from python/train_ebsrd.py)") from None


def _methods(spec: str) -> List[str]:
    out = []
    for m in (s.strip() for s in spec.split(",") if s.strip()):
        m = _ALIASES.get(m, m)
        if ":" in m:   # a method of your own: module:function(model, burst, steps, generator) -> RGB [B, 3, H, W]
            _plugin(m)
        elif m not in METHODS:
            raise EvalError(f"--method {m!r}: choose from {', '.join(METHODS)}, or module:function")
        if m not in out:
            out.append(m)
    if not out:
        raise EvalError("--method: no method given")
    return out


_PLUGINS: Dict[str, Callable] = {}


def _plugin(spec: str) -> Callable:
    if spec not in _PLUGINS:
        mod, name = spec.split(":", 1)
        try:
            _PLUGINS[spec] = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise EvalError(f"--method {spec!r}: cannot import it ({type(e).__name__}: {e})") from None
    return _PLUGINS[spec]


def _run_method(model, method: str, burst: Tensor, steps: int, generator) -> Tensor:
    """Linear RGB in [0, 1], ``[B, 3, H, W]``. ``method`` ``"module:function"``: ``function(model, burst, steps,
    generator)`` returning linear RGB in [0, 1] (methods beyond E-BSRD's plug in this way)."""
    if ":" in method:
        return _plugin(method)(model, burst, steps, generator).float().clamp(0, 1)
    if method == "baseline":
        from .models.baseline import aligned_baseline

        return aligned_baseline(burst, model.config.scale // 2)
    if method == "initial":
        x = model.initial(burst)[0]
    elif method == "one-step":
        x = model.one_step(burst, generator=generator)
    else:
        x = model.teacher(burst, num_steps=steps, generator=generator)
    return ((x.float() + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------
def _read_csv(path: str, signature: Dict[str, str]) -> Dict[Tuple[str, str, str], dict]:
    if not os.path.exists(path):
        return {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return {}
            if tuple(reader.fieldnames) != CSV_FIELDS:
                raise EvalError(f"{path}: not a CSV of burstkern eval (columns {reader.fieldnames}); pass another "
                                f"--csv or --overwrite")
            rows = list(reader)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: cannot be read to resume ({e}); pass another --csv or --overwrite") from None
    done = {}
    for r in rows:
        for k in _SIGNATURE:
            if r[k] != signature[k]:
                raise EvalError(f"{path}: holds rows of another run ({k} = {r[k]!r}, this run: {signature[k]!r}); "
                                f"pass another --csv or --overwrite")
        done[(r["index"], r["method"], r["steps"])] = r
    return done


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.6g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------
def summarize(rows: Sequence[dict]) -> List[dict]:
    """Per (method, steps): n, and for psnr / ssim / lpips / seconds the (mean, ci95) or ``"unavailable"``."""
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], str(r["steps"])), []).append(r)
    out = []
    for (method, steps), rs in groups.items():
        s = {"method": method, "steps": steps, "n": len(rs)}
        for k in _METRICS + ("seconds",):
            vals = [r[k] for r in rs]
            nums = [float(v) for v in vals if v not in ("", UNAVAILABLE, None)]
            s[k] = mean_ci(nums) if nums else UNAVAILABLE
        out.append(s)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(out, key=lambda s: (order.get(s["method"], 99), s["steps"]))


def format_summary(summary: Sequence[dict]) -> str:
    def cell(v, digits):
        if v == UNAVAILABLE:
            return UNAVAILABLE
        m, ci, n = v
        return f"{m:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{m:.{digits}f}"

    head = (f"{'method':<20} {'n':>5} {'PSNR dB':>16} {'SSIM':>18} {'LPIPS':>18} {'s / burst':>16}")
    lines = [head, "-" * len(head)]
    for s in summary:
        label = s["method"] + (f" ({s['steps']} steps)" if s["method"] == "teacher" else "")
        lines.append(f"{label:<20} {s['n']:>5} {cell(s['psnr'], 2):>16} {cell(s['ssim'], 4):>18} "
                     f"{cell(s['lpips'], 4):>18} {cell(s['seconds'], 3):>16}")
    lines.append("(mean ± half-width of the 95 % t-interval over bursts)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _save_images(folder: str, name: str, method: str, steps: int, img: Tensor, meta: Dict, to_srgb) -> None:
    import numpy as np
    from PIL import Image

    from .data.benchmarks import write_png_bgr

    tag = method if method != "teacher" else f"teacher{steps}"
    base = os.path.join(folder, f"{name}_{tag}")
    lin = (img.clamp(0, 1) * QUANT).to(torch.int32).numpy().astype(np.uint16)        # [3, H, W]
    write_png_bgr(base + ".png", lin.transpose(1, 2, 0))
    try:
        srgb = to_srgb(img, meta)
    except Exception:  # noqa: BLE001 - a preview is a convenience; the linear PNG is the result
        return
    Image.fromarray((srgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()).save(
        base + "_srgb.png")


def _worker_message(e: Exception) -> str:
    """The one-line message of a loading error, also when it was re-raised from a DataLoader worker (whose
    message is a traceback: its last line is the original ``module.Error: message``)."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
        head, sep, tail = last.partition(": ")
        return tail if sep and "Error" in head else last
    return msg.splitlines()[0] if msg else type(e).__name__


def _collate(items):
    return {"burst": torch.stack([i["burst"] for i in items]), "gt": torch.stack([i["gt"] for i in items]),
            "meta": [i["meta"] for i in items]}


def run(args, file=None) -> List[dict]:
    """Evaluate as ``burstkern eval`` does (``args`` from :func:`build_parser`); returns all CSV rows (old and new).

    Raises :class:`EvalError` for any user error."""
    import burstkern

    from . import metrics

    file = sys.stdout if file is None else file
    methods = _methods(args.method)
    if not isinstance(args.steps, int) or args.steps < 1:
        raise EvalError(f"--steps must be an int >= 1, got {args.steps!r}")
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise EvalError(f"--workers must be >= 0, got {args.workers}")
    if args.border < 0:
        raise EvalError(f"--border must be >= 0, got {args.border}")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise EvalError(f"--device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {args.device}: CUDA is not available on this machine")
    if args.format is not None and args.format not in FORMATS:
        raise EvalError(f"--format {args.format!r}: choose from {', '.join(FORMATS)}")

    model, ckpt_id = _load_model(args)
    model = model.to(device).eval()
    burst_size = args.burst_size or model.config.burst_size
    fmt, ds = _open_dataset(args, burst_size)
    if burst_size > _max_burst_size(fmt):
        raise EvalError(f"--burst-size {burst_size}: the {fmt} bursts have {_max_burst_size(fmt)} frames")
    n_total = len(ds) if args.limit is None else min(len(ds), args.limit)

    # metrics available here
    notes = []
    lpips_ok, why = metrics.lpips_status("alex", download=args.allow_download)
    if not args.lpips:
        lpips_ok, why = False, "disabled by --no-lpips"
    if not lpips_ok:
        notes.append(f"LPIPS unavailable: {why}")
    aligner = None
    if fmt == "burstsr":
        if args.flow_net:
            aligner = SpatialColorAligner(load_flow_net(args.flow_net, device), sr_factor=4)
        else:
            notes.append("BurstSR aligned PSNR / SSIM / LPIPS unavailable: they need an optical-flow network to "
                         "align each output to the DSLR ground truth (PWC-Net in the papers), whose weights are "
                         "not shipped; pass --flow-net module:factory (docs/reproducing.md)")

    sig = {"format": fmt, "data": os.path.abspath(args.data) if args.data else "heldout", "split":
           args.split if fmt == "burstsr" else "", "checkpoint": ckpt_id, "burst_size": str(burst_size),
           "seed": str(args.seed), "batch_size": str(args.batch_size)}
    csv_path = args.csv or f"burstkern_eval_{fmt}.csv"
    if args.overwrite and os.path.exists(csv_path):
        os.remove(csv_path)
    done = _read_csv(csv_path, sig)
    steps_of = {m: (str(args.steps) if m == "teacher" else "") for m in methods}
    todo = [i for i in range(n_total) if any((str(i), m, steps_of[m]) not in done for m in methods)]
    if args.save_images:
        try:
            os.makedirs(args.save_images, exist_ok=True)
        except OSError as e:
            raise EvalError(f"--save-images {args.save_images}: cannot create it ({e.strerror or e})") from None

    new_file = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
    try:
        fh = open(csv_path, "a", newline="")
    except OSError as e:
        raise EvalError(f"{csv_path}: cannot be written ({e.strerror or e})") from None
    writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
    if new_file:
        writer.writeheader()
        fh.flush()
    b = args.batch_size
    blocks = sorted({i // b for i in todo})
    todo_set = set(todo)
    print(f"burstkern eval: {fmt} {sig['data']}{' (' + args.split + ')' if fmt == 'burstsr' else ''}, "
          f"{n_total} bursts x {burst_size} frames; model {ckpt_id}; methods {', '.join(methods)}"
          f"{f' (teacher {args.steps} steps)' if 'teacher' in methods else ''}; device {device}; "
          f"{n_total - len(todo)} done in {csv_path}, {len(todo)} to run", file=file)
    ctx = burstkern.backend(args.backend) if args.backend else contextlib.nullcontext()
    bar = None
    if not args.no_progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="eval", unit="burst", dynamic_ncols=True)
    new_rows = []
    try:
        with ctx, torch.no_grad():
            backend_name = burstkern.get_backend()
            warmed = set()
            index_lists = [list(range(blk * b, min((blk + 1) * b, n_total))) for blk in blocks]
            loader = torch.utils.data.DataLoader(ds, batch_sampler=index_lists, collate_fn=_collate,
                                                 num_workers=args.workers)
            batches = iter(loader)
            for blk, idx in zip(blocks, index_lists):
                try:
                    batch = next(batches)
                except (ValueError, RuntimeError) as e:   # BenchmarkDataError: a missing / corrupt file, naming it
                    raise EvalError(_worker_message(e)) from None
                burst = batch["burst"].to(device)
                gt = batch["gt"].to(device)
                for m in methods:
                    need = [j for j, i in enumerate(idx) if (str(i), m, steps_of[m]) not in done]
                    if not need:
                        continue
                    gen = torch.Generator(device=device).manual_seed((args.seed * 1_000_003 + blk) % 2 ** 63)
                    if m not in warmed and m != "teacher":
                        _run_method(model, m, burst[:1], args.steps, torch.Generator(device=device))
                        warmed.add(m)
                    _sync(device)
                    t0 = time.perf_counter()
                    out = _run_method(model, m, burst, args.steps, gen)
                    _sync(device)
                    per = (time.perf_counter() - t0) / len(idx)
                    if out.shape != gt.shape:
                        raise EvalError(f"the model's output {tuple(out.shape[1:])} does not match the ground truth "
                                        f"{tuple(gt.shape[1:])} of {fmt} (scale {model.config.scale} of "
                                        f"{tuple(burst.shape[-2:])} frames)")
                    q = quantize(out)
                    scores = _score(q, gt, burst, fmt, aligner, lpips_ok, args)
                    for j in need:
                        i = idx[j]
                        row = dict(sig, method=m, steps=steps_of[m], index=str(i),
                                   burst=batch["meta"][j].get("burst_name", str(i)),
                                   psnr=_fmt(scores["psnr"][j]), ssim=_fmt(scores["ssim"][j]),
                                   lpips=_fmt(scores["lpips"][j]), seconds=_fmt(per), device=str(device),
                                   backend=backend_name)
                        writer.writerow(row)
                        new_rows.append(row)
                        done[(str(i), m, steps_of[m])] = row
                        if args.save_images:
                            _save_images(args.save_images, row["burst"], m, args.steps, q[j].cpu(),
                                         batch["meta"][j], ds.to_srgb)
                fh.flush()
                if bar is not None:
                    bar.update(sum(1 for i in idx if i in todo_set))
    finally:
        if bar is not None:
            bar.close()
        fh.close()
    rows = [done[k] for k in sorted(done, key=lambda k: (int(k[0]), k[1], k[2]))
            if int(k[0]) < n_total and k[1] in methods and k[2] == steps_of[k[1]]]
    print(format_summary(summarize(rows)), file=file)
    for n in notes:
        print(n, file=file)
    print(f"per-burst rows: {os.path.abspath(csv_path)}", file=file)
    return rows


def _score(q: Tensor, gt: Tensor, burst: Tensor, fmt: str, aligner, lpips_ok: bool, args) -> Dict[str, list]:
    from . import metrics

    n = q.shape[0]
    na = [UNAVAILABLE] * n
    if fmt == "burstsr":
        if aligner is None:
            return {"psnr": na, "ssim": na, "lpips": na}
        aligned, valid = aligner(q, gt, burst)
        out = {"psnr": masked_psnr(aligned, gt, valid, args.border).tolist(),
               "ssim": masked_ssim(aligned, gt, valid, args.border).tolist()}
        pred_l, gt_l = aligned.clamp(0, 1), gt.clamp(0, 1)
    else:
        out = {"psnr": metrics.psnr(q, gt, border=args.border).tolist(),
               "ssim": metrics.ssim(q, gt, border=args.border).tolist()}
        pred_l, gt_l = q, gt
    if lpips_ok:
        try:
            out["lpips"] = metrics.lpips(pred_l, gt_l, border=args.border, download=args.allow_download).tolist()
        except metrics.MetricUnavailable:
            out["lpips"] = na
    else:
        out["lpips"] = na
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="burstkern eval", description="A model on the burst-SR benchmarks "
                                "(SyntheticBurst validation, BurstSR) or the synthetic held-out set: per-burst CSV, "
                                "summary with 95%% confidence intervals, resumable.",
                                epilog="Without any of the options above except --checkpoint/--seed/--device/--split, "
                                "`burstkern eval` prints the held-out set table of the model card (burstkern.demo; "
                                "its own options: --teacher-steps N, --split eval|val, --json FILE). "
                                "docs/reproducing.md has the papers' commands.")
    p.add_argument("--data", default=None, help="dataset folder (none: the synthetic held-out set)")
    p.add_argument("--format", default=None, help=f"one of {', '.join(FORMATS)} (default: detected)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="BurstSR split")
    p.add_argument("--checkpoint", default=None, help="checkpoint of python/train_ebsrd.py (default: shipped 'tiny')")
    p.add_argument("--random-weights", action="store_true", help="random tiny weights (pipeline check only)")
    p.add_argument("--method", default="one-step", help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=40, help="Heun steps of the teacher")
    p.add_argument("--burst-size", type=int, default=None, help="first T frames (default: the model's burst size)")
    p.add_argument("--batch-size", type=int, default=4, help="bursts per model call (bounds memory)")
    p.add_argument("--limit", type=int, default=None, help="only the first N bursts")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding the next bursts")
    p.add_argument("--backend", default=None, help="burstkern backend (default: the active one)")
    p.add_argument("--seed", type=int, default=0, help="sampling-noise seed")
    p.add_argument("--csv", default=None, help="per-burst rows (default: burstkern_eval_<format>.csv); resumed")
    p.add_argument("--overwrite", action="store_true", help="start the CSV afresh instead of resuming")
    p.add_argument("--save-images", default=None, metavar="DIR", help="write outputs (16-bit linear + sRGB PNG)")
    p.add_argument("--border", type=int, default=40, help="pixels ignored at each side by the metrics")
    p.add_argument("--allow-download", action="store_true", help="let LPIPS fetch its AlexNet weights")
    p.add_argument("--no-lpips", dest="lpips", action="store_false", help="skip LPIPS")
    p.add_argument("--flow-net", default=None, metavar="MODULE:FACTORY",
                   help="optical-flow network for the BurstSR aligned metrics (SpatialColorAligner contract)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise EvalError(message)


# options only this runner has: with none of them, ``burstkern eval`` is the held-out table of burstkern.demo
_OWN_OPTIONS = {"--data", "--format", "--method", "--steps", "--burst-size", "--batch-size", "--limit", "--backend",
                "--csv", "--overwrite", "--save-images", "--border", "--allow-download", "--no-lpips", "--flow-net",
                "--no-progress", "--workers", "--random-weights", "-h", "--help"}


def _is_heldout_table(argv: Sequence[str]) -> bool:
    """True for the model-card form ``burstkern eval [--checkpoint F] [--teacher-steps N] [--split eval|val]
    [--json F] [--seed S] [--device D]`` (:func:`burstkern.demo.eval_main`): none of this runner's own options."""
    return not any(a.split("=", 1)[0] in _OWN_OPTIONS for a in argv)


def main(argv: Optional[List[str]] = None) -> int:
    """``burstkern eval``; returns the exit status (2 with one line on stderr for any user error).

    Without any of this runner's own options (``--data``, ``--format``, ``--method``, ...) the command is the
    held-out set table of :func:`burstkern.demo.eval_main` (the model card's numbers), unchanged."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _is_heldout_table(argv):
        demo = importlib.import_module("burstkern.demo")
        if hasattr(demo, "eval_main"):
            return demo.eval_main(argv)
    p = build_parser()
    p.__class__ = _Parser
    try:
        args = p.parse_args(argv)
        run(args)
    except EvalError as e:
        print(f"burstkern eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("burstkern eval: interrupted; rerun the same command to resume from the CSV", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:   # e.g. an unknown backend, out of memory
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"burstkern eval: error: {type(e).__name__}: {msg}"[:400], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
