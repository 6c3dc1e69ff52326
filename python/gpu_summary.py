"""Collects what a ``python/gpu_run.sh`` run left in $OUT into ``results.json`` and ``summary.md``; called after
every stage, so a run cut off at its limit still returns a summary of what it finished.

    python3 python/gpu_summary.py --out DIR [--mode quick|full] [--part K/N] [--env]
                                  [--stage NAME --rc RC --seconds S [--limit L] [--note TEXT]]

Reads (each if present): results.json (stages and environment so far), tests.xml (pytest's JUnit XML),
sanitizer.txt (compute-sanitizer memcheck output of python/gpu_sanitize.py), bench.json (python/gpu_bench.py),
build.log, ncu.csv. Speed-ups are ours over the best peer of the same group measured in the same run; floors are
the minimum bytes at the measured copy bandwidth or FLOPs at the measured matrix rate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

OURS = ("native", "triton", "cuda")


def _load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _cmd(args) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:  # a missing tool is recorded, not fatal
        return f"unavailable ({type(exc).__name__})"


def environment() -> dict:
    env = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "cores": os.cpu_count(),
           "nvidia_smi": _cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                               "--format=csv,noheader"]),
           "nvcc": (_cmd([os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"), "--version"])
                    .splitlines() or [""])[-1]}
    try:
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except Exception as exc:
        env["torch"] = f"import failed: {exc}"
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:
        env["triton"] = f"import failed: {exc}"
    return env


# ----------------------------------------------------------------------------------------------
# parsers
# ----------------------------------------------------------------------------------------------
def parse_junit(path) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"parse_error": str(exc), "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    res = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "seconds": 0.0, "skip_reasons": {}}
    for case in root.iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        path_ = cls.replace(".", "/") + ".py" if cls else ""
        nodeid = f"{path_}::{name}" if path_ else name
        res["seconds"] += float(case.get("time", 0) or 0)
        kinds = {child.tag: child for child in case}
        if "failure" in kinds or "error" in kinds:
            tag = "failure" if "failure" in kinds else "error"
            el = kinds[tag]
            msg = (el.get("message") or (el.text or "")).strip().splitlines()
            res["failed" if tag == "failure" else "errors"] += 1
            res["failures"].append({"id": nodeid, "kind": tag, "message": (msg[0] if msg else "")[:300]})
        elif "skipped" in kinds:
            res["skipped"] += 1
            why = (kinds["skipped"].get("message") or "").strip()[:160]
            res["skip_reasons"][why] = res["skip_reasons"].get(why, 0) + 1
        else:
            res["passed"] += 1
    res["seconds"] = round(res["seconds"], 1)
    return res


def parse_jsonl(path, benchmarks=False) -> dict | None:
    """tests.jsonl (python/gpu_pytest_log.py): the same counts as parse_junit, for a run cut off before pytest
    wrote its XML. benchmarks: only the benchmarks/ node ids, else everything else."""
    if not os.path.exists(path):
        return None
    res = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "seconds": 0.0, "skip_reasons": {},
           "source": "tests.jsonl"}
    for ln in open(path, errors="replace"):
        try:
            r = json.loads(ln)
        except ValueError:
            continue
        if r.get("nodeid", "").startswith("benchmarks/") != benchmarks:
            continue
        res["seconds"] += r.get("duration", 0)
        out, when = r.get("outcome"), r.get("when")
        if out == "failed":
            res["failed" if when == "call" else "errors"] += 1
            res["failures"].append({"id": r["nodeid"], "kind": "failure" if when == "call" else "error",
                                    "message": r.get("message", "")})
        elif out == "skipped":
            res["skipped"] += 1
            why = r.get("message", "")[:160]
            res["skip_reasons"][why] = res["skip_reasons"].get(why, 0) + 1
        elif when == "call":
            res["passed"] += 1
    res["seconds"] = round(res["seconds"], 1)
    return res if res["passed"] + res["failed"] + res["errors"] + res["skipped"] else None


def parse_sanitizer(path) -> dict | None:
    if not os.path.exists(path):
        return None
    text = open(path, errors="replace").read()
    m = re.search(r"ERROR SUMMARY:\s*(\d+)\s+error", text)
    calls = re.findall(r"^call (\S+ \S+ \S+): (ok|FAILED.*?)\s*\(", text, re.M)
    done = re.search(r"^calls=(\d+) failed=(\d+)", text, re.M)
    res = {"complete": bool(m), "errors": int(m.group(1)) if m else len(re.findall(r"^=+ (Invalid|Program hit|"
                                                                                    r"Error)", text, re.M)),
           "calls_done": len(calls), "calls_failed": [c for c, s in calls if s != "ok"],
           "calls_planned": int(done.group(1)) if done else None}
    refused = re.search(r"(Device not supported|Target application terminated before first instrumented API call"
                        r"|cannot be run|not supported on this)", text)
    if refused:
        res["tool_problem"] = refused.group(1)
    first = re.findall(r"^=+ (Invalid .*|Program hit .*)$", text, re.M)
    res["first_errors"] = first[:10]
    return res


def bench_rows(doc) -> list:
    """Each result with its speed-up over the best peer of its group (ours) or the best of ours (peers)."""
    rows = doc.get("results", [])
    groups = {}
    for r in rows:
        groups.setdefault(r.get("group"), []).append(r)
    out = []
    for g, rs in groups.items():
        timed = [r for r in rs if "median_ms" in r]
        peers = [r for r in timed if r["provider"].split("+")[0] not in OURS]
        best_peer = min(peers, key=lambda r: r["median_ms"]) if peers else None
        for r in rs:
            r = dict(r)
            if best_peer is not None and "median_ms" in r and r is not best_peer:
                r["vs_peer"] = best_peer["median_ms"] / r["median_ms"]
                r["peer"] = best_peer["provider"]
            out.append(r)
    return out


def _pytest_benchmark_rows(benchmarks) -> list:
    """pytest-benchmark records (benchmarks/harness.py puts its numbers in extra_info) as gpu_bench.py rows."""
    rows = []
    for b in benchmarks:
        info = dict(b.get("extra_info") or {})
        info.setdefault("provider", info.get("provider", "?"))
        info["id"] = b.get("fullname") or b.get("name")
        info["group"] = b.get("group") or info["id"]
        rows.append(info)
    return rows


def parse_bench(path, jsonl=None) -> dict | None:
    doc = _load(path, None)
    if doc is not None and "benchmarks" in doc:  # pytest-benchmark's JSON (--full)
        doc = {"results": _pytest_benchmark_rows(doc["benchmarks"]), "ceilings": doc.get("machine_info", {})
               .get("ceilings"), "machine": doc.get("machine_info"), "finished": True}
    if doc is None and jsonl and os.path.exists(jsonl):  # --full cut off before pytest-benchmark wrote its JSON
        recs = [json.loads(ln) for ln in open(jsonl, errors="replace") if '"extra_info"' in ln]
        if not recs:
            return None
        doc = {"results": [dict(r["extra_info"], id=r["nodeid"], group=r["extra_info"].get("group", r["nodeid"]))
                           for r in recs]}
    if doc is None:
        return None
    rows = bench_rows(doc)
    return {"ceilings": doc.get("ceilings"), "machine": doc.get("machine"), "rows": rows,
            "failed": [r["id"] for r in rows if "error" in r], "not_run": doc.get("not_run", []),
            "finished": "finished" in doc}


def parse_build(path) -> dict | None:
    if not os.path.exists(path):
        return None
    text = open(path, errors="replace").read()
    errs = [ln for ln in text.splitlines() if re.search(r"\berror\b", ln, re.I)][:10]
    return {"bytes": len(text), "error_lines": errs}


# ----------------------------------------------------------------------------------------------
# summary.md
# ----------------------------------------------------------------------------------------------
def _f(v, p=3):
    return "" if v is None else f"{v:.{p}f}"


def verdict(res) -> tuple[bool, list]:
    """(everything that ran passed, the list of problems): a failure is never dropped."""
    problems = []
    for s in res.get("stages", []):
        if s.get("status") not in ("ok",):
            problems.append(f"stage {s['name']}: {s.get('status')} (rc {s.get('rc')})")
    t = res.get("tests")
    if t:
        problems += [f"test {f['id']}: {f['message']}" for f in t.get("failures", [])]
        if t.get("passed", 0) == 0 and t.get("skipped", 0):
            why = max(t.get("skip_reasons", {"?": 1}).items(), key=lambda kv: kv[1])[0]
            problems.append(f"no test ran: all {t['skipped']} skipped (mostly: {why})")
    san = res.get("sanitizer")
    if san:
        if san.get("errors"):
            problems.append(f"compute-sanitizer memcheck: {san['errors']} errors")
        problems += [f"sanitizer call failed: {c}" for c in san.get("calls_failed", [])]
    b = res.get("bench")
    if b:
        problems += [f"benchmark failed: {i}" for i in b.get("failed", [])]
    bt = res.get("bench_tests")
    if bt:
        problems += [f"benchmark {f['id']}: {f['message']}" for f in bt.get("failures", [])]
    return not problems, problems


def render(res) -> str:
    env = res.get("env", {})
    mode = res.get("mode", "quick") + (f" part {res['part']}" if res.get("part") else "")
    lines = [f"# burstkern GPU run: {mode}", "",
             f"- GPU: {env.get('gpu')} ({env.get('nvidia_smi', '')})",
             f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), Triton {env.get('triton')}, "
             f"nvcc: {env.get('nvcc')}, {env.get('cores')} cores, started {env.get('date_utc')} UTC",
             f"- wall time so far: {sum(s.get('seconds', 0) for s in res.get('stages', []))} s", ""]
    ok, problems = verdict(res)
    lines += ["## Verdict", "", "PASS: everything that ran passed." if ok else
              f"FAIL: {len(problems)} problem(s), each listed below.", ""]
    lines += ["## Stages", "", "| stage | status | seconds | limit | note |", "|---|---|---:|---:|---|"]
    for s in res.get("stages", []):
        lines.append(f"| {s['name']} | {s.get('status')} | {s.get('seconds')} | {s.get('limit', '')} | "
                     f"{s.get('note', '')} |")
    t = res.get("tests")
    if t:
        lines += ["", f"## Tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
                      f"{t['skipped']} skipped ({t.get('seconds')} s in tests)", ""]
        for f in t.get("failures", []):
            lines.append(f"- FAILED `{f['id']}`: {f['message']}")
        for why, n in sorted(t.get("skip_reasons", {}).items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"- skipped {n}: {why}")
    san = res.get("sanitizer")
    if san:
        lines += ["", f"## compute-sanitizer memcheck: {san['errors']} errors in {san['calls_done']} calls"
                      + ("" if san["complete"] else " (INCOMPLETE: no error summary; cut off or refused)"), ""]
        if san.get("tool_problem"):
            lines.append(f"- tool problem: {san['tool_problem']}")
        for e in san.get("first_errors", []):
            lines.append(f"- {e}")
        for c in san.get("calls_failed", []):
            lines.append(f"- call failed: {c}")
    b = res.get("bench")
    if b:
        c = b.get("ceilings") or {}
        lines += ["", "## Benchmarks", "",
                  f"Ceilings measured in this run: copy {_f(c.get('copy_GBps'), 0)} GB/s (read + write), bf16 matrix "
                  f"{_f(c.get('bf16_mm_TFLOPs'), 0)} TFLOP/s. x floor = median / floor; speed-up = best peer's "
                  "median / this one's (peers: torchvision, cuDNN conv, eager, torch.compile, reference).", "",
                  "| group | provider | median ms | floor ms | x floor | GB/s | TFLOP/s | speed-up vs best peer |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in b["rows"]:
            if "error" in r:
                lines.append(f"| {r['group']} | {r['provider']} | FAILED: {r['error']} | | | | | |")
                continue
            sp = f"{r['vs_peer']:.2f}x vs {r['peer']}" if "vs_peer" in r else ""
            lines.append(f"| {r['group']} | {r['provider']} | {_f(r.get('median_ms'), 4)} | "
                         f"{_f(r.get('floor_ms'), 4)} | {_f(r.get('x_floor'), 2)} | {_f(r.get('GBps'), 0)} | "
                         f"{_f(r.get('TFLOPs'), 1)} | {sp} |")
        if b.get("not_run"):
            lines += ["", f"Not run (time limit): {len(b['not_run'])} cases: " + "; ".join(b["not_run"])]
    n = res.get("ncu")
    if n:
        lines += ["", f"## ncu: {n.get('kernels', 0)} kernel launches profiled (ncu.csv)"]
    if problems:
        lines += ["", "## Problems (every one; none dropped)", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def collect(out_dir, mode=None, part=None) -> dict:
    path = os.path.join(out_dir, "results.json")
    res = _load(path, {})
    if mode:
        res["mode"] = mode
    if part:
        res["part"] = part
    res.setdefault("stages", [])
    jsonl = os.path.join(out_dir, "tests.jsonl")
    tests = parse_junit(os.path.join(out_dir, "tests.xml")) or parse_jsonl(jsonl)
    if tests is not None:
        res["tests"] = tests
    bench_tests = parse_jsonl(jsonl, benchmarks=True)  # --full: failed / skipped benchmark cases
    if bench_tests is not None:
        res["bench_tests"] = bench_tests
    for key, v in [("sanitizer", parse_sanitizer(os.path.join(out_dir, "sanitizer.txt"))),
                   ("bench", parse_bench(os.path.join(out_dir, "bench.json"), jsonl)),
                   ("build", parse_build(os.path.join(out_dir, "build.log")))]:
        if v is not None:
            res[key] = v
    ncu = os.path.join(out_dir, "ncu.csv")
    if os.path.exists(ncu):
        rows = [ln for ln in open(ncu, errors="replace") if ln.startswith('"')]
        res["ncu"] = {"kernels": len({ln.split('","')[0] for ln in rows[1:]}) if rows else 0}
    res["ok"], res["problems"] = verdict(res)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode")
    ap.add_argument("--part")
    ap.add_argument("--env", action="store_true", help="record the machine and versions")
    ap.add_argument("--stage")
    ap.add_argument("--rc", type=int, default=0)
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--note", default="")
    ap.add_argument("--status", help="override: skipped, ...")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    res = collect(args.out, args.mode, args.part)
    if args.env:
        res["env"] = environment()
    if args.stage:
        status = args.status or ("ok" if args.rc == 0 else "timeout" if args.rc in (124, 137) else "failed")
        res["stages"].append({"name": args.stage, "status": status, "rc": args.rc, "seconds": args.seconds,
                              "limit": args.limit, "note": args.note})
        res["ok"], res["problems"] = verdict(res)
    _write(os.path.join(args.out, "results.json"), json.dumps(res, indent=1))
    _write(os.path.join(args.out, "summary.md"), render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
