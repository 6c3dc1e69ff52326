"""The plan of ``python/gpu_run.sh`` with an estimated time per stage (its ``--dry-run``), and the split of
``--full`` into parts that each fit in one 10-minute device call.

    python3 python/gpu_plan.py quick [--json] [--check]
    python3 python/gpu_plan.py full [--part K/N] [--json] [--check] [--commands]

Estimates come from python/gpu_plan.json: the extension build time measured in CI scaled to the device's cores,
the Triton compile time per kernel specialization measured on the CI machine, the number of GPU tests
(``pytest --collect-only -m gpu``), sanitizer calls and benchmark cases, times stated per-case assumptions.
``--check`` exits 1 when the quick estimate passes its wall limit (8 minutes), a part passes 10 minutes, or the
plan names a test or benchmark that does not exist. ``--commands`` prints what part K runs, for gpu_run.sh.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "python")
DATA = os.path.join(HERE, "gpu_plan.json")
QUICK_TESTS = ["tests/test_gpu.py"]


def load_data() -> dict:
    with open(DATA) as f:
        return json.load(f)


def _module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def script_caps() -> dict:
    """The stage limits gpu_run.sh itself enforces (CAP_<STAGE>=seconds lines): one source of truth."""
    text = open(os.path.join(HERE, "gpu_run.sh")).read()
    return {k.lower(): int(v) for k, v in re.findall(r"^\s*CAP_([A-Z]+)=(\d+)", text, re.M)}


def collect(args: list) -> list:
    """pytest node ids (collection only, no GPU needed)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    ids = [ln.strip() for ln in out.stdout.splitlines() if "::" in ln and not ln.startswith(("=", " "))]
    if out.returncode not in (0, 5) and not ids:
        raise RuntimeError(f"pytest --collect-only {' '.join(args)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return ids


# ----------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------
def translation_units(testing: bool) -> list:
    tus = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True))
    if not testing:
        tus = [t for t in tus if os.sep + "testing" + os.sep not in t]
    return tus


def _rel(path: str) -> str:
    path = path.replace(os.sep, "/")
    i = path.find("csrc/")
    return path[i:] if i >= 0 else path


def build_estimate(data: dict, testing: bool) -> tuple:
    """(seconds, how). With per-unit times (build.units_core_s, from a ninja log of a CI build): the units of the
    tree now, longest first onto the device's cores (a unit not measured costs the median), plus the link. Else:
    CI's whole-build core-seconds, scaled by the number of units now, spread over the cores but never below the
    longest unit (assumed twice the mean), plus the link."""
    b = data["build"]
    units = b.get("units_core_s")
    if units:
        now = [_rel(t) for t in translation_units(testing)]
        known = sorted(units.values())
        median = known[len(known) // 2]
        costs = sorted((units.get(u, median) for u in now), reverse=True)
        cores = [0.0] * b["target_cores"]
        for c in costs:
            cores[cores.index(min(cores))] += c
        est = max(cores) + b["assumed_link_s"]
        missing = sum(u not in units for u in now)
        how = (f"{len(now)} units, per-unit core-s from the CI ninja log ({b['units_source']}), {missing} not "
               f"measured (median {median:.0f} s), longest first on {b['target_cores']} cores: {max(cores):.0f} s "
               f"+ link {b['assumed_link_s']} s (whole CI build: {b['measured_ci_seconds']} s on 2 jobs; device "
               f"anchor {b['device_anchor_seconds']} s on an earlier csrc/)")
        return est, how
    work = b["measured_ci_seconds"] * b["measured_ci_jobs"]  # core-seconds on the CI machine (an upper bound)
    n_then = b["measured_ci_translation_units"]
    n_now = max(1, len(translation_units(testing)))
    work_now = work * n_now / n_then
    parallel = work_now / b["target_cores"]
    longest = b["assumed_longest_tu_over_mean"] * work_now / n_now
    est = max(parallel, longest) + b["assumed_link_s"]
    how = (f"CI {b['measured_ci_seconds']} s x {b['measured_ci_jobs']} jobs = {work} core-s for {n_then} units, x "
           f"{n_now}/{n_then} units now = {work_now:.0f} core-s; max(/{b['target_cores']} cores = {parallel:.0f} s, "
           f"longest unit ~{b['assumed_longest_tu_over_mean']}x mean = {longest:.0f} s) + link "
           f"{b['assumed_link_s']} s (device anchor: {b['device_anchor_seconds']} s on an earlier csrc/)")
    return est, how


def triton_compile_s(data: dict, n_specs: int) -> float:
    t = data["triton"]
    per = t["measured_compile_seconds_total"] / t["measured_specializations"] + t["assumed_launcher_s_per_specialization"]
    return n_specs * per


# ----------------------------------------------------------------------------------------------
# quick
# ----------------------------------------------------------------------------------------------
def _case_s(nodeid: str, table: dict, default: float) -> float:
    func = nodeid.split("::")[-1]
    best = max((k for k in table if func.startswith(k)), key=len, default=None)
    return table[best] if best else default


def quick_plan(data: dict | None = None) -> dict:
    data = data or load_data()
    q = data["quick"]
    caps = script_caps()
    stages, problems = [], []

    stages.append({"name": "setup", "est_s": q["setup_s"], "what": "nvidia-smi, versions, carried wheels"})

    est, how = build_estimate(data, testing=False)
    stages.append({"name": "build", "est_s": round(est), "cap_s": caps.get("build"),
                   "what": "setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=nproc", "how": how})

    t = q["tests"]
    ids = collect(["-m", "gpu", *QUICK_TESTS])
    if not ids:
        problems.append("no tests collected by `pytest -m gpu tests/test_gpu.py`")
    for key in t["case_s"]:
        if not any(i.split("::")[-1].startswith(key) for i in ids):
            problems.append(f"plan names test {key}* but no collected GPU test matches it")
    case_total = sum(_case_s(i, t["case_s"], t["default_case_s"]) for i in ids)
    n_specs = data["triton"]["assumed_quick_specializations"]
    compile_total = triton_compile_s(data, n_specs)
    est = t["startup_s"] + (case_total + compile_total) / t["workers"] * t["imbalance"]
    stages.append({"name": "tests", "est_s": round(est), "cap_s": caps.get("tests"), "n": len(ids),
                   "what": f"pytest -m gpu {' '.join(QUICK_TESTS)} (-n {t['workers']} when pytest-xdist is there)",
                   "how": f"{t['startup_s']} s start + ({len(ids)} cases {case_total:.0f} s + {n_specs} Triton "
                          f"specializations {compile_total:.0f} s) / {t['workers']} workers x {t['imbalance']}",
                   "names": sorted({i.split("::")[-1].split("[")[0] for i in ids})})

    s = q["sanitizer"]
    calls = _module("gpu_sanitize").plan(["native", "triton"])
    est = min(s["cap_s"], s["startup_s"] + len(calls) * s["call_s"])
    stages.append({"name": "sanitize", "est_s": round(est), "cap_s": caps.get("sanitize"), "n": len(calls),
                   "what": "compute-sanitizer --tool memcheck python/gpu_sanitize.py",
                   "how": f"{s['startup_s']} s start + {len(calls)} calls x {s['call_s']} s"})

    bq = q["bench"]
    cases = _module("gpu_bench").all_cases()
    est = bq["startup_s"]
    seen = set()
    for c in cases:
        est += bq["family_case_s"].get(c.family, bq["case_s"])
        if c.heavy_compile:
            est += bq["heavy_compile_s"]
        if c.family not in seen:
            seen.add(c.family)
            est += bq["first_case_of_family_s"].get(c.family, 0)
    n_heavy = sum(c.heavy_compile for c in cases)
    stages.append({"name": "bench", "est_s": round(est), "cap_s": None, "n": len(cases),
                   "what": "python/gpu_bench.py (the time left, less the summary's reserve)",
                   "how": f"{bq['startup_s']} s start + {len(cases)} cases ({n_heavy} torch.compile peers at "
                          f"{bq['heavy_compile_s']} s, E-BSRD at {bq['family_case_s'].get('ebsrd')} s, others "
                          f"{bq['case_s']} s) + first-use costs per family",
                   "names": [c.id for c in cases]})
    stages.append({"name": "summary", "est_s": q["summary_s"], "what": "python/gpu_summary.py -> summary.md"})
    total = sum(st["est_s"] for st in stages)
    limit = data["limits"]["quick_wall_s"]
    if total > limit:
        problems.append(f"quick estimate {total} s > {limit} s")
    if total > data["limits"]["quick_budget_s"]:
        problems.append(f"quick estimate {total} s leaves no margin under the script's budget "
                        f"{data['limits']['quick_budget_s']} s")
    return {"mode": "quick", "stages": stages, "total_s": total, "limit_s": limit, "problems": problems,
            "test_ids": ids}


# ----------------------------------------------------------------------------------------------
# full: units packed into parts
# ----------------------------------------------------------------------------------------------
def full_units(data: dict | None = None) -> tuple:
    data = data or load_data()
    f = data["full"]
    units, problems = [], []
    ids = collect(["tests"])
    by_file = {}
    for i in ids:
        by_file.setdefault(i.split("::")[0], []).append(i)
    ft = f["tests"]
    for path, its in sorted(by_file.items()):
        units.append({"kind": "tests", "target": path, "n": len(its),
                      "est_s": round(len(its) * ft["case_cpu_s"] / ft["workers"], 1)})
    fb = f["bench"]
    bids = collect(["benchmarks"])
    bfiles = {}
    for i in bids:
        bfiles.setdefault(i.split("::")[0], []).append(i)
    for path, its in sorted(bfiles.items()):
        def cost(i):
            if "teacher" in i:
                return fb["teacher_case_s"]
            if "ebsrd" in path:
                return fb["ebsrd_case_s"]
            return fb["compile_case_s"] if "compile" in i else fb["case_s"]
        total = sum(cost(i) for i in its)
        m = max(1, math.ceil(total / fb["chunk_s"]))
        chunks, load = [[] for _ in range(m)], [0.0] * m
        for i in sorted(its, key=lambda i: (-cost(i), i)):  # costliest first into the lightest chunk
            j = min(range(m), key=lambda j: (load[j], j))
            chunks[j].append(i)
            load[j] += cost(i)
        for k, chunk in enumerate(chunks):
            chunk = [i for i in its if i in set(chunk)]  # collection order within a chunk
            units.append({"kind": "bench", "target": f"{path}#{k + 1}/{m}", "n": len(chunk),
                          "est_s": round(load[k], 1), "ids": chunk})
    units.append({"kind": "ncu", "target": "python/gpu_ncu.py", "n": 1, "est_s": f["ncu"]["seconds"]})
    return units, problems, {"tests": ids, "benchmarks": bids}


def pack(units: list, n_parts: int) -> list:
    """Longest first into the emptiest part (deterministic)."""
    parts = [[] for _ in range(n_parts)]
    load = [0.0] * n_parts
    for u in sorted(units, key=lambda u: (-u["est_s"], u["kind"], u["target"])):
        k = min(range(n_parts), key=lambda j: (load[j], j))
        parts[k].append(u)
        load[k] += u["est_s"]
    return parts


def part_overhead(data: dict) -> float:
    est, _ = build_estimate(data, testing=True)
    f = data["full"]
    return (data["quick"]["setup_s"] + est + f.get("plan_s", 0) + f["tests"]["startup_s"] + f["bench"]["startup_s"]
            + data["quick"]["summary_s"])


def parts_needed(units, data) -> int:
    budget = data["limits"]["part_budget_s"] - part_overhead(data)
    n = max(1, math.ceil(sum(u["est_s"] for u in units) / budget))
    while max(sum(u["est_s"] for u in p) for p in pack(units, n)) > budget and n < len(units):
        n += 1
    return n


def full_plan(part: str | None = None, data: dict | None = None) -> dict:
    data = data or load_data()
    units, problems, collected = full_units(data)
    n_needed = parts_needed(units, data)
    if part:
        k, n = (int(v) for v in part.split("/"))
        if not 1 <= k <= n:
            raise SystemExit(f"--part {part}: K must be in 1..N")
    else:
        k, n = None, n_needed
    parts = pack(units, n)
    over = part_overhead(data)
    summary = []
    for j, p in enumerate(parts, 1):
        est = round(over + sum(u["est_s"] for u in p))
        summary.append({"part": f"{j}/{n}", "est_s": est, "units": p})
        if est > data["limits"]["part_wall_s"]:
            problems.append(f"part {j}/{n} estimate {est} s > {data['limits']['part_wall_s']} s "
                            f"(use --part K/{n_needed} or more parts)")
    for u in units:
        if u["kind"] != "ncu" and not os.path.exists(os.path.join(ROOT, u["target"].split("#")[0])):
            problems.append(f"plan names {u['target']}, which does not exist")
    return {"mode": "full", "parts_needed": n_needed, "n_parts": n, "overhead_s": round(over),
            "parts": summary if k is None else [summary[k - 1]], "problems": problems, "collected": collected}


def commands(part: dict) -> list:
    """What one part runs, as gpu_run.sh reads it: 'TESTS files...', 'BENCH node ids...', 'NCU'."""
    tests = [u["target"] for u in part["units"] if u["kind"] == "tests"]
    bench = [i for u in part["units"] if u["kind"] == "bench" for i in u["ids"]]
    lines = (["TESTS " + " ".join(tests)] if tests else []) + (["BENCH " + " ".join(bench)] if bench else [])
    return lines + (["NCU"] if any(u["kind"] == "ncu" for u in part["units"]) else [])


# ----------------------------------------------------------------------------------------------
def _print_quick(plan):
    print(f"gpu_run.sh --quick plan (estimate {plan['total_s']} s of {plan['limit_s']} s wall):")
    print(f"{'stage':<10} {'est s':>6} {'limit s':>8}  what")
    for st in plan["stages"]:
        cap = st.get("cap_s")
        print(f"{st['name']:<10} {st['est_s']:>6} {cap if cap else '-':>8}  {st['what']}"
              + (f" [{st['n']}]" if "n" in st else ""))
        if st.get("how"):
            print(f"{'':<27}{st['how']}")
    tests = next(s for s in plan["stages"] if s["name"] == "tests")
    print("GPU tests: " + ", ".join(tests.get("names", [])))
    print(f"total estimate: {plan['total_s']} s ({plan['total_s'] / 60:.1f} min) of {plan['limit_s']} s")


def _print_full(plan):
    print(f"gpu_run.sh --full: {plan['parts_needed']} parts needed; each part rebuilds if needed "
          f"(~{plan['overhead_s']} s with start-up)")
    for p in plan["parts"]:
        print(f"part {p['part']}: estimate {p['est_s']} s")
        for u in p["units"]:
            print(f"  {u['kind']:<6} {u['target']:<50} {u['n']:>4} cases {u['est_s']:>7.1f} s")


def record_build(ninja_log: str, load: float, cores: int, source: str) -> dict:
    """Per-unit core-seconds from a ninja log of a CI build into gpu_plan.json: wall seconds x the share of a core
    each job had (cores / load average, the machine being shared)."""
    units = {}
    for ln in open(ninja_log):
        if ln.startswith("#"):
            continue
        start, end, _, out = ln.split("\t")[:4]
        src = _rel(out).rsplit(".o", 1)[0]
        for ext in (".cu", ".cpp"):
            if os.path.exists(os.path.join(ROOT, src + ext)):
                units[src + ext] = round((int(end) - int(start)) / 1000 * min(1.0, cores / load), 1)
    data = load_data()
    data["build"]["units_core_s"] = dict(sorted(units.items()))
    data["build"]["units_source"] = source
    with open(DATA, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    return units


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["record-build"]:
        ap = argparse.ArgumentParser(prog="gpu_plan.py record-build")
        ap.add_argument("ninja_log")
        ap.add_argument("--load", type=float, required=True, help="load average during the build")
        ap.add_argument("--cores", type=int, default=2)
        ap.add_argument("--source", required=True)
        a = ap.parse_args(sys.argv[2:])
        print(json.dumps(record_build(a.ninja_log, a.load, a.cores, a.source), indent=1))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["quick", "full"])
    ap.add_argument("--part")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 on any problem")
    ap.add_argument("--commands", action="store_true", help="full: what part K runs, one 'KIND ARGS' line each")
    args = ap.parse_args(argv)
    plan = quick_plan() if args.mode == "quick" else full_plan(args.part)
    if args.commands:
        if args.mode != "full" or not args.part:
            raise SystemExit("--commands needs full --part K/N")
        print("\n".join(commands(plan["parts"][0])))
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in plan.items() if k not in ("test_ids", "collected")}, indent=1, default=str))
    else:
        (_print_quick if args.mode == "quick" else _print_full)(plan)
        for pr in plan["problems"]:
            print(f"PROBLEM: {pr}")
    return 1 if (args.check and plan["problems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
