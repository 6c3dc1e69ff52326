"""``burstkern info``: versions, the compiled library's build, and which backend runs each op here, with one line per
cause where one cannot (each cause says how to fix it)."""

from __future__ import annotations

import argparse
import platform
from typing import List, Optional

import torch

from . import __version__, _extension, profiling, registry


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
    st = _extension.state()
    info = _extension.build_info()
    if not st.loaded:
        lines = [f"burstkern._C  {st.error}"]
    else:
        kinds = ", ".join(k for k, on in (("CPU kernels", st.cpu_kernels), ("CUDA kernels", st.cuda)) if on)
        lines = [f"burstkern._C  loaded: {kinds or 'no kernels'}"
                 + (f"; CPU vector path {st.cpu_path}" if st.cpu_path else "")
                 + (f"; fp32 block GEMMs {st.cpu_gemm}" if st.cpu_gemm else "")
                 + ("; test build (BURSTKERN_TESTING=1: SIMT emulation, poisoning, test ops)" if st.testing
                    else "; release build (no test machinery)")]
    if info.get("built"):
        lines.append(f"  built for    torch {info.get('torch')}, CUDA {info.get('torch_cuda')}, "
                     f"archs {info.get('archs')}, {info.get('nvcc')}")
        if info.get("torch") != torch.__version__:
            lines.append(f"  WARNING      built for torch {info.get('torch')} but running {torch.__version__}: "
                         f"rebuild with `{registry.BUILD_COMMAND}`")
    elif info:
        lines.append(f"  last build   not built: {info.get('reason')}")
    return lines


def lines(device: Optional[str] = None) -> List[str]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = _versions() + _extension_lines()
    out.append(f"NVTX ranges  {'on' if profiling.enabled() else 'off'} (BURSTKERN_NVTX=1 turns them on)")
    out.append(f"backend      {registry.get_backend()} (set_backend / with backend(...) / BURSTKERN_BACKEND)")
    out.append("")
    table = registry.availability_table(device)
    width = max([len(op) for op in table] + [10])
    out.append(f"ops on {device} float32 tensors (auto runs the first available of "
               f"{' -> '.join(registry.AUTO_ORDER)}):")
    out.append("  " + "op".ljust(width) + "  " + "  ".join(b.ljust(9) for b in registry.BACKENDS))
    causes = {}
    for op, row in table.items():
        cells = []
        for b in registry.BACKENDS:
            av = row[b]
            if av.ok:
                cells.append("yes".ljust(9))
            else:
                # one footnote per cause: the same reason of one backend is one line, whatever the op
                key = (b, av.reason, av.detail.replace(op, "<op>"))
                num = causes.setdefault(key, (len(causes) + 1, av))[0]
                cells.append(f"no [{num}]".ljust(9))
        out.append("  " + op.ljust(width) + "  " + "  ".join(cells))
    if causes:
        out.append("")
        for (b, reason, _), (num, av) in causes.items():
            out.append(f"  [{num}] {b}: {reason.value}: {av.message}")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="burstkern info", description="Versions, extension and backend status.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device type to report availability for (default: cuda if visible, else cpu)")
    args = parser.parse_args(argv)
    print("\n".join(lines(args.device)))
    return 0
