"""Command line: ``burstkern info | demo | eval | sr`` (also ``python -m burstkern ...``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def info(argv: Optional[List[str]] = None) -> int:
    from . import info as _info

    return _info.main(argv)


def demo(argv: Optional[List[str]] = None) -> int:
    from . import demo as _demo  # models and data load only when asked for

    return _demo.main(argv)


def evaluate(argv: Optional[List[str]] = None) -> int:
    from . import evaluate as _evaluate  # the benchmarks (--data/--format ...); bare: demo.eval_main's table

    return _evaluate.main(argv)


def sr(argv: Optional[List[str]] = None) -> int:
    """``burstkern sr FRAMES... -o OUT.png``: super-resolve a user's own burst (RAW mosaics, packed arrays or RGB)."""
    parser = argparse.ArgumentParser(
        prog="burstkern sr", description="Super-resolve your own burst x4 with E-BSRD (shipped tiny weights by "
        "default). Frames: a folder or files: 16-bit PNG/TIFF Bayer mosaics, .npy/.pt [T, 4, h, w] packed RGGB "
        "arrays, or RGB PNG/JPEG frames (sent through the inverse ISP). Frame 0 is the reference.")
    parser.add_argument("frames", nargs="+", help="a folder of frames, or the frame files (frame 0 first)")
    parser.add_argument("-o", "--out", default="sr.png", help="output PNG")
    parser.add_argument("--black-level", type=float, default=0.0, help="RAW black level (integer data)")
    parser.add_argument("--white-level", type=float, default=None,
                        help="RAW white level (default: the maximum of the file's integer type)")
    parser.add_argument("--bayer", default="RGGB", help="Bayer pattern of the mosaics: RGGB, BGGR, GRBG, GBRG")
    parser.add_argument("--linear", action="store_true", help="write linear RGB (16-bit PNG), not sRGB")
    parser.add_argument("--method", default="one-step", choices=("one-step", "x_init", "teacher", "baseline"))
    parser.add_argument("--teacher-steps", type=int, default=40, help="Heun steps with --method teacher")
    parser.add_argument("--checkpoint", default=None, help="your checkpoint (default: the shipped 'tiny' weights)")
    parser.add_argument("--tile", type=int, default=32, help="tile size in packed RAW pixels (memory bound)")
    parser.add_argument("--overlap", type=int, default=8, help="tile overlap in packed RAW pixels")
    parser.add_argument("--max-frames", type=int, default=16, help="use at most this many frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from .data.io import BurstFileError, load_burst, save_png
    from .data.isp import process
    from .demo import DemoError, load_model
    from .models.tiling import super_resolve

    try:
        b = load_burst(args.frames if len(args.frames) > 1 else args.frames[0], black_level=args.black_level,
                       white_level=args.white_level, bayer=args.bayer, max_frames=args.max_frames)
        model, _, source = load_model(args.checkpoint)
        if args.tile < 4 or not 0 <= args.overlap < args.tile // 2:
            raise DemoError(f"need --tile >= 4 and 0 <= --overlap < tile / 2, got {args.tile} and {args.overlap}")
        burst = b["burst"]
        t, h, w = burst.shape[1], burst.shape[-2], burst.shape[-1]
        print(f"burst: {t} {b['kind'].upper()} frames ({b['files'][0]} ...), packed {h}x{w} -> output "
              f"{model.config.scale * h}x{model.config.scale * w}; {source}; method {args.method}", flush=True)
        rgb = super_resolve(model.eval(), burst, method=args.method, tile=args.tile, overlap=args.overlap,
                            teacher_steps=args.teacher_steps, seed=args.seed,
                            progress=not args.no_progress and sys.stderr.isatty())
        if not args.linear:
            rgb = process(rgb[None].double(), b["isp"])[0].float()
        save_png(args.out, rgb, sixteen_bit=args.linear)
    except (BurstFileError, DemoError) as e:
        print(f"burstkern sr: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"burstkern sr: error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.abspath(args.out)} ({'linear RGB, 16-bit' if args.linear else 'sRGB, 8-bit'})")
    return 0


USAGE = """usage: burstkern {info,demo,eval,sr,export-onnx} [options]

  info   versions, compiled extension, op x backend availability (with the reason when unavailable)
  demo   E-BSRD (shipped tiny weights) on a held-out burst: baseline / x_init / one-step / teacher table + figure
  eval   the whole held-out set table (burstkern.data.heldout_bursts) for the shipped or your checkpoint;
         --data PATH --format synthetic-val|burstsr|synthetic: the papers' benchmarks, per-burst CSV + summary
  sr     super-resolve your own burst (RAW mosaics, packed .npy/.pt, or RGB frames) to a PNG
  export-onnx  the one-step model as ONNX (DeformConv, opset >= 19) for onnxruntime

`burstkern COMMAND --help` for a command's options."""


def export_onnx(argv: Optional[List[str]] = None) -> int:
    from . import export as _export  # onnx export support loads only when asked for

    return _export.main(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"info": info, "demo": demo, "eval": evaluate, "sr": sr, "export-onnx": export_onnx}
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] not in commands:
        print(f"burstkern: error: unknown command {argv[0]!r} (commands: {', '.join(commands)})\n\n{USAGE}",
              file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
