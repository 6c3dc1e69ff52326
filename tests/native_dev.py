"""Dev builds of the CPU kernels of one op, before (or apart from) burstkern._C.

``load(op, functions)`` JIT-compiles ``csrc/<op>/<op>_cpu_kernels*.cpp`` with a generated pybind11 binding of
``burstkern::<op>::cpu::<name>`` for each name, into a private extension under ``/tmp`` (one per op and source
hash, cached by torch.utils.cpp_extension), and returns the module: ``mod.<name>(...)`` calls the kernel directly.
Flags are the release build's (``-O3``, no ``-march=native``). Returns None (with the reason in ``load.reason``) when
there is no C++ compiler or the build fails, so tests can skip.

    from tests.native_dev import load
    dcn = load("deform_conv", ["deform_conv2d", "deform_conv2d_backward", "cpu_path"])
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
_cache: dict = {}


def sources(op: str) -> list:
    return sorted(glob.glob(os.path.join(CSRC, op, f"{op}_cpu_kernels*.cpp")))


def load(op: str, functions: Sequence[str], verbose: bool = False) -> Optional[object]:
    key = (op, tuple(functions))
    if key in _cache:
        return _cache[key]
    load.reason = None
    srcs = sources(op)
    if not srcs:
        load.reason = f"no csrc/{op}/{op}_cpu_kernels*.cpp"
        return None
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        load.reason = "no C++ compiler"
        return None
    h = hashlib.sha1()
    for path in srcs + sorted(glob.glob(os.path.join(CSRC, op, f"{op}_cpu_kernels*.h"))):
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(",".join(functions).encode())
    name = f"bk_dev_{op}_{h.hexdigest()[:10]}"
    build = os.path.join("/tmp", "burstkern_native_dev", name)
    os.makedirs(build, exist_ok=True)
    binding = os.path.join(build, "binding.cpp")
    text = (f'#include <torch/extension.h>\n#include "{op}/{op}_cpu_kernels.h"\n'
            "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n"
            + "".join(f'  m.def("{fn}", &burstkern::{op}::cpu::{fn});\n' for fn in functions) + "}\n")
    old = open(binding).read() if os.path.exists(binding) else None
    if old != text:  # rewriting it would make ninja rebuild it on every load
        with open(binding, "w") as f:
            f.write(text)
    from torch.utils import cpp_extension

    try:
        mod = cpp_extension.load(name=name, sources=[binding] + srcs, extra_include_paths=[CSRC],
                                 extra_cflags=["-O3"], build_directory=build, verbose=verbose)
    except Exception as exc:  # noqa: BLE001 - a failed dev build is a skip reason, not an error
        load.reason = f"dev build failed: {type(exc).__name__}: {str(exc)[-2000:]}"
        mod = None
    _cache[key] = mod
    return mod


load.reason = None
