"""The CPU timing protocol, written once (DESIGN.md "Performance protocol", CPU).

* Every provider of a group is set up first (compile time recorded apart as ``setup_s``) and its numerics are
  checked against the group's baseline (torchvision for deform_conv2d, the fp64 eager composition for SFT and the
  denoise ops, the reference backend end to end). A provider whose error exceeds the tolerance is not timed.
* The providers are then timed **interleaved, round by round** (the order rotates every round), so load on a
  shared machine hits all of them alike. Each provider's slot in a round runs ``reps`` calls (calibrated so one
  slot lasts about ``SLOT_S``), and the result of a round is the slot's mean time per call.
* Reported: the median time, and the **median of the paired ratios** ``t_provider / t_baseline`` of each round,
  with their range; ``cpu_over_wall`` (process CPU time / wall time of the slots: about 1 per thread when the
  provider had the cores to itself, less when the machine was loaded).
* Thread counts: :func:`threads` sets torch's intra-op threads and inductor's thread count (inductor bakes the
  count into the code it generates); onnxruntime and OpenVINO providers take the count when they are built.
* Peak extra memory of one call: :func:`peak_extra_rss` runs the call in a fresh subprocess and reads the peak RSS
  (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the RSS before the inputs were made.

Used by the pytest-benchmark CPU cases (``bench_*.py``, one provider per test) and by ``cpu_suite.py`` (the
interleaved protocol, JSON and markdown).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

SLOT_S = 0.12     # target length of one provider's slot in a round
MAX_REPS = 200


class Skip(Exception):
    """A provider cannot run here; the message says why (recorded as a note, or a pytest skip)."""


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_counts() -> List[int]:
    return sorted({1, all_cores()})


def cpu_cases_enabled() -> bool:
    """CPU cases run by default on a machine without a GPU; BURSTKERN_BENCH_CPU=1/0 forces them on/off (a GPU
    session has a few minutes: its ``pytest benchmarks`` should not spend them on CPU timings)."""
    env = os.environ.get("BURSTKERN_BENCH_CPU")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return not torch.cuda.is_available()


@contextlib.contextmanager
def threads(n: int):
    """torch intra-op threads = ``n`` (and inductor's generated code) for the block."""
    old = torch.get_num_threads()
    ind = None
    try:
        import torch._inductor.config as ic

        ind = ic.cpp.threads
        ic.cpp.threads = n
    except Exception:  # pragma: no cover - inductor absent
        ic = None
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)
        if ic is not None:
            ic.cpp.threads = ind


def to_torch(out):
    """A provider's output (tensor, numpy array, or a tuple of them) as a tuple of torch tensors."""
    if isinstance(out, (tuple, list)):
        res = []
        for o in out:
            res.extend(to_torch(o))
        return tuple(res)
    if out is None:
        return ()
    if isinstance(out, torch.Tensor):
        return (out.detach(),)
    return (torch.from_numpy(out),)


def rel_err(out, ref) -> float:
    """max |out - ref| / max |ref| over every tensor of the outputs (fp64)."""
    outs, refs = to_torch(out), to_torch(ref)
    if len(outs) != len(refs):
        raise AssertionError(f"{len(outs)} outputs, expected {len(refs)}")
    worst = 0.0
    for o, r in zip(outs, refs):
        o, r = o.double(), r.double()
        if o.shape != r.shape:
            raise AssertionError(f"shape {tuple(o.shape)}, expected {tuple(r.shape)}")
        scale = r.abs().max().item() if r.numel() else 0.0
        err = (o - r).abs().max().item() if r.numel() else 0.0
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


# ----------------------------------------------------------------------------------------------
# machine ceilings: copy rate and GEMM rate
# ----------------------------------------------------------------------------------------------
def _best_of(fn, n=5) -> float:
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def copy_rate_GBps(nthreads: int, mib: int = 256) -> float:
    """Bytes read + written per second by ``dst.copy_(src)`` of ``mib`` MiB fp32 (far beyond the caches)."""
    with threads(nthreads):
        src = torch.rand(mib << 18)
        dst = torch.empty_like(src)
        s = _best_of(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / s / 1e9


def gemm_rate_GFLOPs(nthreads: int, dtype=torch.float32, m: int = 1024) -> float:
    with threads(nthreads):
        a = torch.randn(m, m, dtype=dtype)
        b = torch.randn(m, m, dtype=dtype)
        s = _best_of(lambda: a @ b)
    return 2 * m ** 3 / s / 1e9


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        flags = ""
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
        isa = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {x}" in flags]
    except OSError:
        isa = []
    info = {"cpu": cpu, "isa": isa, "cores": all_cores(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg": list(os.getloadavg())}
    import burstkern

    info["burstkern"] = burstkern.__version__
    for mod in ("torchvision", "onnx", "onnxruntime", "openvino"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    try:
        info["burstkern_build_flags"] = str(torch.ops.burstkern_C.build_flags())
    except Exception:
        info["burstkern_build_flags"] = None
    return info


# ----------------------------------------------------------------------------------------------
# groups of providers, timed interleaved
# ----------------------------------------------------------------------------------------------
@dataclass
class Group:
    """One piece of work measured by several providers.

    ``make_args(dtype)`` returns the inputs (a tuple); ``providers[name](args, dtype, nthreads)`` returns a
    zero-argument callable that runs the work on those inputs (raising :class:`Skip` when it cannot);
    ``reference(args, dtype)`` returns the outputs every provider is checked against (``None``: not checked).
    """

    suite: str
    name: str
    baseline: str
    providers: Dict[str, Callable]
    make_args: Callable
    reference: Optional[Callable] = None
    tol: Dict[str, float] = field(default_factory=lambda: {"float32": 1e-4, "bfloat16": 2e-2})
    unchecked: Sequence[str] = ()        # providers that compute something else (the dense-conv floor)
    nbytes: Optional[Callable] = None    # dtype -> minimum bytes moved by one call
    flops: Optional[Callable] = None     # dtype -> FLOPs of one call
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16)

    def key(self, dtype) -> str:
        return f"{self.name} {str(dtype).replace('torch.', '')}"


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def prepare(group: Group, name: str, args, dtype, nthreads: int, ref=None):
    """Build provider ``name``; time its first call (setup, incl. compilation); check its numerics.

    Returns (fn, info). Raises Skip when the provider is absent, AssertionError when its numerics are off.
    """
    info = {}
    with threads(nthreads):
        t0 = time.perf_counter()
        fn = group.providers[name](args, dtype, nthreads)
        out = fn()
        info["setup_s"] = time.perf_counter() - t0
    if ref is not None and name not in group.unchecked:
        err = rel_err(out, ref)
        info["max_rel_err"] = err
        tol = group.tol.get(dtype_name(dtype), 1e-4)
        if not err <= tol:
            raise AssertionError(f"{name}: relative error {err:.3g} vs the reference exceeds {tol:g}")
    return fn, info


def _slot(fn, reps: int):
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        fn()
    wall = time.perf_counter() - t0
    return wall / reps, (time.process_time() - c0) / max(wall, 1e-12)


def run_group(group: Group, dtype, nthreads: int, rounds: int, only: Optional[Sequence[str]] = None,
              log=print) -> dict:
    """The interleaved protocol for one group at one dtype and thread count: a dict per provider + notes."""
    res: dict = {"_notes": {}}
    torch.manual_seed(0)
    args = group.make_args(dtype)
    ref = group.reference(args, dtype) if group.reference is not None else None
    fns = {}
    names = [n for n in group.providers if only is None or n in only or n == group.baseline]
    for name in names:
        try:
            fn, info = prepare(group, name, args, dtype, nthreads, ref)
        except Skip as e:
            res["_notes"][name] = f"skipped: {e}"
            log(f"    {name}: skipped ({e})")
            continue
        except AssertionError as e:
            res["_notes"][name] = f"not timed: {e}"
            log(f"    {name}: NOT TIMED ({e})")
            continue
        except Exception as e:  # a peer that fails to build or run is a note, not the end of the run
            res["_notes"][name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log(f"    {name}: FAILED ({res['_notes'][name]})")
            continue
        fns[name] = fn
        res[name] = info
        if getattr(fn, "note", None):
            info["note"] = fn.note
    if group.baseline not in fns:
        res["_notes"]["_group"] = f"baseline {group.baseline} unavailable: no ratios"
    with threads(nthreads):
        for name, fn in fns.items():  # calibrate the reps of a slot (one more warm call)
            t, _ = _slot(fn, 1)
            res[name]["reps_per_slot"] = max(1, min(MAX_REPS, int(math.ceil(SLOT_S / max(t, 1e-6)))))
        order = list(fns)
        times = {n: [] for n in order}
        cpu = {n: [] for n in order}
        for r in range(rounds):
            k = r % len(order) if order else 0
            for name in order[k:] + order[:k]:
                t, c = _slot(fns[name], res[name]["reps_per_slot"])
                times[name].append(t)
                cpu[name].append(c)
    base = times.get(group.baseline)
    for name in order:
        ts = times[name]
        d = res[name]
        d["median_ms"] = statistics.median(ts) * 1e3
        d["min_ms"] = min(ts) * 1e3
        d["cpu_over_wall"] = statistics.median(cpu[name])
        if base:
            ratios = [t / b for t, b in zip(ts, base)]
            d[f"ratio_vs_{group.baseline}"] = statistics.median(ratios)
            d["ratio_lo"], d["ratio_hi"] = min(ratios), max(ratios)
        if group.nbytes is not None:
            d["GBps"] = group.nbytes(dtype) / (d["median_ms"] * 1e-3) / 1e9
        if group.flops is not None:
            d["GFLOPs"] = group.flops(dtype) / (d["median_ms"] * 1e-3) / 1e9
        stages = getattr(fns[name], "stages", None)
        if stages:  # per-stage breakdown recorded by the provider itself (end to end): medians over the calls
            d["stages_ms"] = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    res["_rounds"] = rounds
    return res


# ----------------------------------------------------------------------------------------------
# pytest-benchmark: one provider per test
# ----------------------------------------------------------------------------------------------
_inputs_cache: dict = {}


def _inputs(group: Group, dtype):
    """The group's inputs and reference outputs, kept for the last group only (the tests of one group are
    consecutive in pytest's order, and the fp64 reference is not cheap)."""
    key = (group.suite, group.name, dtype)
    if _inputs_cache.get("key") != key:
        _inputs_cache.clear()
        torch.manual_seed(0)
        args = group.make_args(dtype)
        ref = group.reference(args, dtype) if group.reference is not None else None
        _inputs_cache.update(key=key, args=args, ref=ref)
    return _inputs_cache["args"], _inputs_cache["ref"]


def default_rounds(suite: str) -> int:
    env = os.environ.get("BURSTKERN_BENCH_CPU_ROUNDS")
    if env:
        return max(1, int(env))
    return 2 if suite == "e2e" else 5


def measure_cpu(benchmark, group: Group, provider: str, dtype, nthreads: int, rounds: Optional[int] = None,
                mem: bool = False) -> None:
    """One provider of a group as one pytest-benchmark test: numerics checked first (a failed check fails the
    test), then ``rounds`` rounds of calibrated iterations. ``benchmark.group`` is the group, so pytest-benchmark
    and summarize.py compare the providers of one group (not interleaved: cpu_suite.py does that)."""
    import pytest

    if nthreads > all_cores():
        pytest.skip(f"{nthreads} threads > {all_cores()} cores")
    args, ref = _inputs(group, dtype)
    try:
        fn, info = prepare(group, provider, args, dtype, nthreads, ref)
    except Skip as e:
        pytest.skip(str(e))
    benchmark.group = f"cpu {group.key(dtype)} {nthreads}t"
    rounds = rounds or default_rounds(group.suite)
    with threads(nthreads):
        t, _ = _slot(fn, 1)
        reps = max(1, min(MAX_REPS, int(math.ceil(SLOT_S / max(t, 1e-6)))))
        c0, w0 = time.process_time(), time.perf_counter()
        benchmark.pedantic(fn, rounds=rounds, iterations=reps, warmup_rounds=0)
        cpu_over_wall = (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-12)
    info.update(provider=provider, threads=nthreads, dtype=dtype_name(dtype), baseline=group.baseline,
                cpu_over_wall=cpu_over_wall, cpu=machine_cpu())
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        info["median_ms"] = stats.median * 1e3
        if group.nbytes is not None:
            info["GBps"] = group.nbytes(dtype) / stats.median / 1e9
        if group.flops is not None:
            info["GFLOPs"] = group.flops(dtype) / stats.median / 1e9
    st = getattr(fn, "stages", None)
    if st:
        info["stages_ms"] = {k: statistics.median(s[k] for s in st) for k in st[0]}
    if mem and hasattr(group, "spec"):
        info["peak_extra_MiB"] = peak_extra_rss(group, provider, dtype, 1, reps=1)
    benchmark.extra_info.update(info)


def machine_cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ----------------------------------------------------------------------------------------------
# peak extra memory of one call, in a fresh process
# ----------------------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def mem_child(spec: dict) -> dict:
    """Run in the subprocess: warm the provider up on the group's small twin, then measure one call."""
    import cpu_cases

    torch.set_num_threads(int(spec.get("threads", 1)))
    group = cpu_cases.group_from_spec(spec["group"])
    dtype = getattr(torch, spec["dtype"])
    small = cpu_cases.small_twin(group)
    if small is not None:  # load libraries, initialise allocators and kernels outside the measured call
        group.providers[spec["provider"]](small.make_args(dtype), dtype, 1)()
    base = _status_kib("VmRSS")
    args = group.make_args(dtype)
    fn = group.providers[spec["provider"]](args, dtype, int(spec.get("threads", 1)))
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    fn()
    peak = _status_kib("VmHWM")
    return {"peak_extra_MiB": (peak - base) / 1024, "rss_before_MiB": base / 1024}


def peak_extra_rss(group: Group, provider: str, dtype, nthreads: int = 1, reps: int = 3) -> dict:
    """Median over ``reps`` fresh processes of the peak RSS growth from before the inputs exist to the end of one
    call (inputs, outputs, gradients and every workspace)."""
    spec = json.dumps({"group": group.spec, "provider": provider, "dtype": dtype_name(dtype),
                       "threads": nthreads})
    here = os.path.dirname(os.path.abspath(__file__))
    vals, err = [], None
    env = dict(os.environ, OMP_NUM_THREADS=str(nthreads))
    for _ in range(reps):
        p = subprocess.run([sys.executable, os.path.join(here, "cpu_harness.py"), "--mem-child", spec],
                           capture_output=True, text=True, env=env, cwd=here, timeout=900)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("MEM ")]
        if p.returncode != 0 or not line:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
            err = f"rc {p.returncode}: {tail[0][:300]}"
            break
        vals.append(json.loads(line[0][4:])["peak_extra_MiB"])
    if not vals:
        return {"error": err}
    return {"peak_extra_MiB_median": statistics.median(vals), "all": vals}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--mem-child":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        print("MEM " + json.dumps(mem_child(json.loads(sys.argv[2]))), flush=True)
    else:
        print(__doc__)
