"""Build burstkern: pure Python always; burstkern._C (CUDA C++ ops from csrc/) when it can be built.

Switches (environment):
  BURSTKERN_SKIP_CUDA_BUILD=1   never build _C
  BURSTKERN_FORCE_CUDA=1        build _C or fail loudly (CI uses this)
  TORCH_CUDA_ARCH_LIST          archs to build (default "8.0;8.6;9.0+PTX"; CI uses "9.0")
  MAX_JOBS                      parallel compile jobs (default: capped by cores and free memory)
  NVCC_THREADS                  nvcc --threads (default 2)
  DEBUG=1                       -g -G -O0 device code (for cuda-gdb / compute-sanitizer line info)
Sources are globbed from csrc/ (the same list CMakeLists.txt globs), so adding an op needs no edit here.
No network access happens here.
"""

import glob
import os
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;9.0+PTX"


def say(msg):
    # One line on stderr: pip shows it with -v, and burstkern/_build_info.py keeps it for `burstkern info`.
    print(f"burstkern: {msg}", file=sys.stderr, flush=True)


def env_on(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def write_build_info(info):
    path = os.path.join(ROOT, "burstkern", "_build_info.py")
    with open(path, "w") as f:
        f.write('"""Written by setup.py at build time: what burstkern._C was (or was not) built for."""\n\n')
        f.write(f"BUILD_INFO = {info!r}\n")


def nvcc_version(cuda_home):
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except Exception:
        return None
    lines = [ln for ln in out.splitlines() if "release" in ln]
    return lines[-1].strip() if lines else None


def default_jobs():
    cores = os.cpu_count() or 1
    try:
        free_gb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        free_gb = 8
    return max(1, min(cores, int(free_gb // 3)))  # nvcc on a template-heavy file can take ~3 GB


def cuda_extension():
    """(ext_modules, cmdclass, info): the CUDA extension if it can be built, else nothing and why."""
    info = {"built": False}
    if env_on("BURSTKERN_SKIP_CUDA_BUILD"):
        return [], {}, dict(info, reason="BURSTKERN_SKIP_CUDA_BUILD=1")
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}, dict(info, reason="torch was not importable at build time (build isolation?): install "
                                         "torch first, then `pip install -e . --no-build-isolation`")
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    if torch.version.cuda is None:
        return [], {}, dict(info, reason=f"torch {torch.__version__} is a CPU-only build")
    cuda_home = cpp_extension.CUDA_HOME
    if cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return [], {}, dict(info, reason="nvcc was not found: set CUDA_HOME to the CUDA toolkit root")
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    os.environ.setdefault("MAX_JOBS", str(default_jobs()))
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info.update(cuda_home=cuda_home, nvcc=nvcc_version(cuda_home), archs=archs)

    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True) + glob.glob("csrc/**/*.cu", recursive=True))
    debug = env_on("DEBUG")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
    nvcc += ["--expt-relaxed-constexpr", "--threads", os.environ.get("NVCC_THREADS", "2")]
    ext = cpp_extension.CUDAExtension(
        name="burstkern._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[("BURSTKERN_PYTHON_MODULE", None), ("Py_LIMITED_API", "0x030A0000")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},  # torch sets -std (C++20 since 2.10)
        py_limited_api=True,
    )

    class BuildExt(cpp_extension.BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as exc:  # a failed compile must not block a pure-Python install ...
                if env_on("BURSTKERN_FORCE_CUDA"):  # ... unless the caller insists on the extension
                    raise
                info.update(built=False, reason=f"the CUDA build failed ({type(exc).__name__}: {exc})")
                write_build_info(info)
                say(f"CUDA extension NOT built: {info['reason']}; installing without it")
                return
            info.update(built=True, reason="built")
            write_build_info(info)

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=True)}, info


ext_modules, cmdclass, build_info = cuda_extension()
if not ext_modules:
    if env_on("BURSTKERN_FORCE_CUDA"):
        raise RuntimeError(f"BURSTKERN_FORCE_CUDA=1 but the CUDA extension cannot be built: {build_info['reason']}")
    say(f"CUDA extension not built ({build_info['reason']}); the reference and Triton backends still work")
    write_build_info(build_info)  # when building, BuildExt writes the record once the outcome is known

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
