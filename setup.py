"""Build burstkern: pure Python always; burstkern._C (the native ops from csrc/) when a C++ compiler is at hand.

_C holds the CPU kernels, and the CUDA kernels too when torch has CUDA and nvcc is found (CUDA_HOME); without
them it is a CPU-only build (torch's CppExtension). If _C cannot be built the install goes on without it and
says so in one line (shown by `pip install -v`; `burstkern info` repeats it, from burstkern/_build_info.py).

Switches (environment):
  BURSTKERN_SKIP_BUILD=1        never build _C (pure Python: the reference and Triton backends)
  BURSTKERN_NO_CUDA=1           build _C with the CPU kernels only, even where nvcc is found
                                (BURSTKERN_SKIP_CUDA_BUILD=1 is the same, its older name)
  BURSTKERN_FORCE_CUDA=1        build _C with the CUDA kernels or fail loudly (CI uses this)
  BURSTKERN_TESTING=1           also build the test machinery of csrc/testing/ (SIMT emulation, output poisoning,
                                test-only ops); CI and the test suite use it, a default install carries none of it
  TORCH_CUDA_ARCH_LIST          archs to build (default "8.0;8.6;9.0+PTX"; CI uses "9.0")
  MAX_JOBS                      parallel compile jobs (default: capped by cores and free memory)
  NVCC_THREADS                  nvcc --threads (default 2)
  DEBUG=1                       -O0 -g host code, -G device code (for cuda-gdb / compute-sanitizer line info)
Sources are globbed from csrc/ (the same list CMakeLists.txt globs), so adding an op needs no edit here. Objects
are kept in build/temp-<flavour>/, so a rebuild recompiles only what changed. No network access happens here.
No -march=native: the binary runs on any CPU of its architecture.
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


def sources(testing, cuda):
    """csrc/**/*.cpp (+ *.cu with CUDA); csrc/testing/ only in a testing build."""
    pats = ["csrc/**/*.cpp"] + (["csrc/**/*.cu"] if cuda else [])
    found = sorted(p for pat in pats for p in glob.glob(pat, recursive=True))
    return [p for p in found if testing or not p.startswith(os.path.join("csrc", "testing") + os.sep)]


def why_no_cuda(torch, cpp_extension):
    """None when the CUDA kernels can be built, else why not."""
    if env_on("BURSTKERN_NO_CUDA") or env_on("BURSTKERN_SKIP_CUDA_BUILD"):
        return "BURSTKERN_NO_CUDA=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    cuda_home = cpp_extension.CUDA_HOME
    if cuda_home is None or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return "nvcc was not found (set CUDA_HOME to the CUDA toolkit root)"
    return None


def openmp_flags():
    """-fopenmp where torch's intra-op threads are OpenMP's (Linux wheels): at::parallel_for is inline
    (ATen/ParallelOpenMP.h) and without _OPENMP it runs the whole range on the calling thread, so every CPU kernel
    would be single-threaded. The extension then needs libgomp.so.1, which the loader resolves to the copy torch
    has already loaded (one OpenMP runtime, one thread pool)."""
    import torch

    if sys.platform != "linux" or "OpenMP" not in torch.__config__.parallel_info():
        return []
    return ["-fopenmp"]


def make_extension(cpp_extension, testing, cuda):
    debug = env_on("DEBUG")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    omp = openmp_flags()
    cxx += omp
    macros = [("BURSTKERN_PYTHON_MODULE", None), ("Py_LIMITED_API", "0x030A0000")]
    macros += [("BURSTKERN_TESTING", None)] if testing else []
    kw = dict(name="burstkern._C", sources=sources(testing, cuda), include_dirs=[os.path.join(ROOT, "csrc")],
              py_limited_api=True, extra_link_args=omp)
    if not cuda:
        return cpp_extension.CppExtension(define_macros=macros, extra_compile_args={"cxx": cxx}, **kw)
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]
    nvcc += ["--expt-relaxed-constexpr", "--threads", os.environ.get("NVCC_THREADS", "2")]
    return cpp_extension.CUDAExtension(define_macros=macros + [("BURSTKERN_WITH_CUDA", None)],
                                       extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kw)  # torch sets -std


def native_extension():
    """(ext_modules, cmdclass, info): the extension to build (CUDA + CPU kernels, or CPU only), or nothing and why."""
    testing = env_on("BURSTKERN_TESTING")
    info = {"built": False, "testing": testing, "cuda": False}
    if env_on("BURSTKERN_SKIP_BUILD"):
        return [], {}, dict(info, reason="BURSTKERN_SKIP_BUILD=1")
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}, dict(info, reason="torch was not importable at build time (build isolation?): install "
                                         "torch first, then `pip install -e . --no-build-isolation`")
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    no_cuda = why_no_cuda(torch, cpp_extension)
    if no_cuda is not None and env_on("BURSTKERN_FORCE_CUDA"):
        raise RuntimeError(f"BURSTKERN_FORCE_CUDA=1 but the CUDA kernels cannot be built: {no_cuda}")
    os.environ.setdefault("MAX_JOBS", str(default_jobs()))
    if no_cuda is None:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        cuda_home = cpp_extension.CUDA_HOME
        info.update(cuda_home=cuda_home, nvcc=nvcc_version(cuda_home), archs=archs)
    else:
        info.update(no_cuda=no_cuda)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    ext = make_extension(cpp_extension, testing, cuda=no_cuda is None)
    flavour = ("cuda" if no_cuda is None else "cpu") + ("-testing" if testing else "")

    class BuildExt(cpp_extension.BuildExtension):
        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", f"temp-{flavour}")  # kept: ninja rebuilds what changed

        def run(self):
            try:
                super().run()
                info.update(built=True, cuda=no_cuda is None, reason="built")
            except Exception as exc:  # a failed compile must not block a pure-Python install ...
                if env_on("BURSTKERN_FORCE_CUDA"):  # ... unless the caller insists on the extension
                    raise
                info.update(built=False, reason=f"the build failed ({type(exc).__name__}: {exc})")
            write_build_info(info)
            if info["built"]:
                say(f"built burstkern._C ({'CUDA and CPU' if info['cuda'] else 'CPU'} kernels"
                    f"{', with the test machinery' if testing else ''})")
            else:
                say(f"burstkern._C NOT built: {info['reason']}; the reference and Triton backends still work")

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=True)}, info


ext_modules, cmdclass, build_info = native_extension()
if not ext_modules:
    say(f"burstkern._C not built ({build_info['reason']}); the reference and Triton backends still work")
    write_build_info(build_info)  # when building, BuildExt writes the record once the outcome is known

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
