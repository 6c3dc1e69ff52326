"""Command line: ``burstkern info`` and ``burstkern demo`` (also ``python -m burstkern ...``)."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional

import torch

from . import __version__, _extension, profiling
from .backend import BACKENDS, availability_table, get_backend


def _versions() -> List[str]:
    try:
        import triton

        triton_v = triton.__version__
    except Exception as exc:  # noqa: BLE001 - report whatever broke the import
        triton_v = f"not available ({type(exc).__name__})"
    lines = [
        f"burstkern {__version__}",
        f"python    {platform.python_version()}",
        f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU-only build'})",
        f"triton    {triton_v}",
    ]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"GPU       {p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2 ** 30:.0f} GiB, "
                     f"{torch.cuda.device_count()} visible)")
    else:
        lines.append("GPU       none visible to torch")
    return lines


def _extension_lines() -> List[str]:
    err = _extension.cuda_extension_error()
    info = _extension.build_info()
    lines = [f"burstkern._C  {'loaded' if err is None else 'not loaded: ' + err}"]
    if info:
        if info.get("built"):
            lines.append(f"  built for    torch {info.get('torch')}, CUDA {info.get('torch_cuda')}, "
                         f"triton {info.get('triton')}, archs {info.get('archs')}, {info.get('nvcc')}")
            if info.get("torch") != torch.__version__:
                lines.append(f"  WARNING      built for torch {info.get('torch')} but running {torch.__version__}: "
                             "rebuild with `pip install -e . --no-build-isolation`")
        else:
            lines.append(f"  last build   not built: {info.get('reason')}")
    else:
        lines.append("  last build   no build record (installed without running setup.py here)")
    return lines


def info(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="burstkern info", description="Versions, extension and backend status.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device type to report availability for (default: cuda if visible, else cpu)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = _versions() + _extension_lines()
    out.append(f"NVTX ranges  {'on' if profiling.enabled() else 'off'} (BURSTKERN_NVTX=1 turns them on)")
    out.append(f"backend      {get_backend()} (set_backend / with backend(...) / BURSTKERN_BACKEND)")
    out.append("")
    table = availability_table(device)
    width = max([len(op) for op in table] + [10])
    out.append(f"ops on {device} tensors:")
    out.append("  " + "op".ljust(width) + "  " + "  ".join(b.ljust(9) for b in BACKENDS))
    reasons = {}
    for op, row in table.items():
        cells = []
        for b in BACKENDS:
            ok, why = row[b]
            if ok:
                cells.append("yes".ljust(9))
            else:
                num = reasons.setdefault(why, len(reasons) + 1)
                cells.append(f"no [{num}]".ljust(9))
        out.append("  " + op.ljust(width) + "  " + "  ".join(cells))
    if reasons:
        out.append("")
        out.extend(f"  [{num}] {why}" for why, num in reasons.items())
    print("\n".join(out))
    return 0


def demo(argv: Optional[List[str]] = None) -> int:
    from . import demo as _demo  # models and data load only when asked for

    return _demo.main(argv)


USAGE = """usage: burstkern {info,demo} [options]

  info   versions, compiled extension, op x backend availability (with the reason when unavailable)
  demo   E-BSRD on the held-out bundled image: PSNR / SSIM / LPIPS and time per stage (--help for options)"""


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"info": info, "demo": demo}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
