"""The CPU benchmark run: every CPU group of every suite, providers interleaved round by round, at 1 thread and
at all cores; JSON plus a markdown table for RESULTS.md.

    python benchmarks/cpu_suite.py --threads 1 2 --rounds 7 --out benchmarks/results/cpu_<date>.json
    python benchmarks/cpu_suite.py --suites dcn sft --dtypes float32 --rounds 3 --out /tmp/x.json   # a part
    python benchmarks/cpu_suite.py --quick --out /tmp/quick.json     # small shapes: proves the harness in ~2 min
    python benchmarks/cpu_suite.py --markdown benchmarks/results/cpu_<date>.json   # the table of a finished run

Protocol and providers: cpu_harness.py and cpu_cases.py. Ratios are medians of the paired per-round ratios
``t_provider / t_baseline`` (below 1: faster than the baseline; ``x faster`` = 1 / ratio). Floors: the group's
minimum bytes at the machine's copy rate and its FLOPs at the machine's fp32/bf16 GEMM rate (both measured at
the start of the run at each thread count), and the dense conv2d / memcpy providers timed in the same rounds.
The JSON is rewritten after every group, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import cpu_cases as C  # noqa: E402
import cpu_harness as H  # noqa: E402

SUITES = ("dcn", "dcn_bwd", "sft", "denoise", "e2e")


def _log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def op_profile(fn, top: int = 10) -> list:
    """Self CPU time of the top ops of one call (torch.profiler), for where an end-to-end step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count,
             "pct": 100 * e.self_cpu_time_total / total} for e in ev[:top]]


def quick_groups():
    return [C.dcn_group((2, 16, 16, 1, 4), False), C.dcn_group((2, 16, 16, 2, 4), True),
            C.sft_group((1, 64, 16), False), C.sft_group((1, 64, 16), True), C.denoise_group((2, 3, 32, 32)),
            C.e2e_group("tiny", 16)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=H.thread_counts())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--e2e-rounds", type=int, default=3)
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    ap.add_argument("--e2e-presets", nargs="+", default=["tiny", "paper"])
    ap.add_argument("--e2e-threads", type=int, nargs="+", default=None,
                    help="thread counts of the end-to-end groups (default: --threads)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--providers", nargs="+", default=None, help="only these providers (and each baseline)")
    ap.add_argument("--match", nargs="+", default=None, help="only groups whose name contains one of these")
    ap.add_argument("--mem-reps", type=int, default=3, help="fresh processes per peak-memory figure (0: none)")
    ap.add_argument("--no-profile", action="store_true", help="skip the torch.profiler op table end to end")
    ap.add_argument("--quick", action="store_true", help="small shapes, to prove the harness")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/cpu_<date>.json)")
    ap.add_argument("--md", default=None, help="markdown path (default: the JSON path with .md)")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. the machine's load)")
    ap.add_argument("--markdown", metavar="JSON", help="only print the markdown table of a finished run")
    a = ap.parse_args(argv)
    if a.markdown:
        with open(a.markdown) as f:
            print(markdown(json.load(f)))
        return 0

    here = os.path.dirname(os.path.abspath(__file__))
    out = a.out or os.path.join(here, "results", f"cpu_{datetime.date.today().isoformat()}.json")
    md = a.md or os.path.splitext(out)[0] + ".md"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    t_start = time.time()
    doc = {"env": H.machine_info(), "argv": sys.argv[1:], "note": a.note, "rounds": a.rounds,
           "e2e_rounds": a.e2e_rounds, "started_utc": datetime.datetime.utcnow().isoformat(timespec="seconds"),
           "ceilings": {}, "results": []}

    def save():
        doc["env"]["loadavg_end"] = list(os.getloadavg())
        doc["wall_s"] = time.time() - t_start
        with open(out, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        with open(md, "w") as f:
            f.write(markdown(doc))

    for n in sorted(set(a.threads + (a.e2e_threads or []))):
        doc["ceilings"][str(n)] = {"copy_GBps": H.copy_rate_GBps(n), "gemm_fp32_GFLOPs": H.gemm_rate_GFLOPs(n),
                                   "gemm_bf16_GFLOPs": H.gemm_rate_GFLOPs(n, torch.bfloat16)}
        _log(f"ceilings at {n} thread(s): {doc['ceilings'][str(n)]}")
    save()

    if a.quick:
        groups = [g for g in quick_groups() if g.suite in a.suites]
    else:
        groups = [g for g in C.all_groups(tuple(a.e2e_presets)) if g.suite in a.suites]
    if a.match:
        groups = [g for g in groups if any(m in g.name for m in a.match)]
    for n in a.threads:
        for g in groups:
            if g.suite == "e2e" and a.e2e_threads is not None and n not in a.e2e_threads:
                continue
            for dt in a.dtypes:
                dtype = getattr(torch, dt)
                if dtype not in g.dtypes:
                    continue
                rounds = a.e2e_rounds if g.suite == "e2e" else a.rounds
                _log(f"{g.suite}: {g.key(dtype)}, {n} thread(s), {rounds} rounds")
                t0 = time.time()
                r = H.run_group(g, dtype, n, rounds, only=a.providers, log=lambda m: _log(m))
                entry = {"suite": g.suite, "group": g.name, "dtype": dt, "threads": n, "baseline": g.baseline,
                         "wall_s": None, "providers": {k: v for k, v in r.items() if not k.startswith("_")},
                         "notes": r["_notes"], "rounds": rounds}
                ceil = doc["ceilings"][str(n)]
                if g.nbytes is not None:
                    entry["bytes"] = g.nbytes(dtype)
                    entry["copy_floor_ms"] = g.nbytes(dtype) / (ceil["copy_GBps"] * 1e9) * 1e3
                if g.flops is not None:
                    rate = ceil["gemm_bf16_GFLOPs" if dtype == torch.bfloat16 else "gemm_fp32_GFLOPs"]
                    entry["flops"] = g.flops(dtype)
                    entry["gemm_floor_ms"] = g.flops(dtype) / (rate * 1e9) * 1e3
                if g.suite == "dcn_bwd" and a.mem_reps and n == a.threads[0]:
                    entry["mem"] = {}
                    for p in C.DCN_MEM_PROVIDERS:
                        if p in entry["providers"]:
                            entry["mem"][p] = H.peak_extra_rss(g, p, dtype, 1, a.mem_reps)
                            _log(f"    peak extra RSS {p}: {entry['mem'][p]}")
                    entry["mem_floor_MiB"] = g.mem_floor_bytes(dtype) / 2 ** 20
                if g.suite == "e2e" and not a.no_profile and n == a.threads[0]:
                    entry["profile"] = {}
                    for p in ("bk_reference", "bk_native"):
                        if p in entry["providers"]:
                            with H.threads(n):
                                fn = g.providers[p](g.make_args(dtype), dtype, n)
                                entry["profile"][p] = op_profile(fn)
                entry["wall_s"] = time.time() - t0
                doc["results"].append(entry)
                for p, d in entry["providers"].items():
                    rk = f"ratio_vs_{g.baseline}"
                    _log(f"    {p:24s} {d['median_ms']:10.3f} ms  ratio {d.get(rk, float('nan')):.3f}"
                         f"  cpu/wall {d['cpu_over_wall']:.2f}  err {d.get('max_rel_err', '-')}")
                save()
    save()
    _log(f"wrote {out} and {md} ({time.time() - t_start:.0f} s)")
    return 0


# ----------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------
def _f(v, p=3):
    if v is None:
        return ""
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** -p:
            return f"{v:.1e}"
        return f"{v:.{p}f}"
    return str(v)


ORDER = ["torchvision", "eager", "bk_reference", "bk_native", "bk_native_dev", "inductor", "torch_compile",
         "torch_compile_reference", "onnxruntime", "openvino", "dense_conv2d", "memcpy"]


def compact(doc: dict) -> list:
    """One row per (work, dtype, threads): each provider's median ms and its paired ratio to the baseline."""
    out = []
    for suite in SUITES:
        rows = [r for r in doc.get("results", []) if r["suite"] == suite]
        if not rows:
            continue
        provs = []
        for r in rows:
            for p in list(r["providers"]) + list(r.get("notes", {})):
                if p not in provs and p != "_group":
                    provs.append(p)
        provs.sort(key=lambda p: ORDER.index(p) if p in ORDER else len(ORDER))
        out += [f"**{suite}** (cells: median ms, and in brackets the median paired ratio to the baseline "
                f"{rows[0]['baseline']}; - = skipped, see the detailed table)", "",
                "| work | dtype | thr | " + " | ".join(provs) + " | floors |",
                "|---|---|---:|" + "---:|" * len(provs) + "---|"]
        for r in rows:
            cells = []
            for p in provs:
                d = r["providers"].get(p)
                if d is None:
                    cells.append("-")
                    continue
                ratio = d.get(f"ratio_vs_{r['baseline']}")
                cells.append(f"{_f(d['median_ms'], 1 if d['median_ms'] >= 10 else 3)}"
                             + (f" ({ratio:.3f})" if ratio is not None else ""))
            fl = []
            if r.get("copy_floor_ms") is not None:
                fl.append(f"copy {_f(r['copy_floor_ms'], 2)} ms")
            if r.get("gemm_floor_ms") is not None:
                fl.append(f"GEMM {_f(r['gemm_floor_ms'], 1)} ms")
            if r.get("mem"):
                fl.append("peak extra RSS " + ", ".join(
                    f"{p} {v['peak_extra_MiB_median']:.0f}" for p, v in r["mem"].items() if "error" not in v)
                    + f" MiB (floor {r['mem_floor_MiB']:.0f})")
            out.append(f"| {r['group']} | {r['dtype']} | {r['threads']} | " + " | ".join(cells) + f" | {'; '.join(fl)} |")
        out.append("")
    return out


def markdown(doc: dict) -> str:
    e = doc["env"]
    lines = [f"CPU: {e.get('cpu')} ({e.get('cores')} cores; {', '.join(e.get('isa', []))}; torch CPU capability "
             f"{e.get('torch_cpu_capability')}) | torch {e.get('torch')} | torchvision {e.get('torchvision')} | "
             f"onnxruntime {e.get('onnxruntime')} | onnx {e.get('onnx')} | OpenVINO {e.get('openvino')} | burstkern "
             f"{e.get('burstkern')} (_C build flags: {e.get('burstkern_build_flags')}) | started "
             f"{doc.get('started_utc')} UTC, {doc.get('wall_s', 0):.0f} s | load average at start "
             f"{_f(e.get('loadavg', [None])[0], 1)}, at end {_f((e.get('loadavg_end') or [None])[0], 1)} | "
             f"rounds {doc.get('rounds')} (end to end {doc.get('e2e_rounds')})", ""]
    if doc.get("note"):
        lines += [doc["note"], ""]
    if doc.get("ceilings"):
        lines += ["| threads | copy GB/s (read+write) | fp32 GEMM GFLOP/s | bf16 GEMM GFLOP/s |", "|---|---:|---:|---:|"]
        for n, c in doc["ceilings"].items():
            lines.append(f"| {n} | {c['copy_GBps']:.1f} | {c['gemm_fp32_GFLOPs']:.0f} | {c['gemm_bf16_GFLOPs']:.0f} |")
        lines.append("")
    lines += compact(doc) + [""]
    lines += ["Ratio = median over rounds of t_provider / t_baseline in the same round (range in brackets); "
              "below 1 is faster than the baseline. Floors: bytes at the copy rate, FLOPs at the GEMM rate.", "",
              "| work | dtype | thr | provider | median ms | ratio vs baseline [lo, hi] | x faster | GB/s | GFLOP/s "
              "| cpu/wall | setup s | rel err |",
              "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    extras = []
    for r in doc.get("results", []):
        base = r["baseline"]
        rk = f"ratio_vs_{base}"
        floors = []
        if r.get("copy_floor_ms") is not None:
            floors.append(f"copy floor {_f(r['copy_floor_ms'])} ms")
        if r.get("gemm_floor_ms") is not None:
            floors.append(f"GEMM floor {_f(r['gemm_floor_ms'])} ms")
        work = f"{r['group']} (baseline {base}{'; ' + ', '.join(floors) if floors else ''})"
        for p, d in r["providers"].items():
            ratio = d.get(rk)
            rr = f"{ratio:.3f} [{d['ratio_lo']:.2f}, {d['ratio_hi']:.2f}]" if ratio is not None else ""
            fast = f"{1 / ratio:.2f}" if ratio else ""
            name = p + (" (fp32)" if p == "torchvision" and r["dtype"] != "float32" else "")
            lines.append(f"| {work} | {r['dtype']} | {r['threads']} | {name} | {_f(d['median_ms'])} | {rr} | {fast} "
                         f"| {_f(d.get('GBps'), 2)} | {_f(d.get('GFLOPs'), 1)} | {_f(d.get('cpu_over_wall'), 2)} "
                         f"| {_f(d.get('setup_s'), 2)} | {_f(d.get('max_rel_err'), 2)} |")
            work = '"'
        for p, note in r.get("notes", {}).items():
            note = note if len(note) < 170 else note[:160] + " ..."
            lines.append(f"| {work} | {r['dtype']} | {r['threads']} | {p} | | {note} | | | | | | |")
            work = '"'
        if r.get("mem"):
            m = ", ".join(f"{p} {v.get('peak_extra_MiB_median', float('nan')):.1f} MiB" if "error" not in v
                          else f"{p}: {v['error']}" for p, v in r["mem"].items())
            extras.append(f"- peak extra RSS of one call, {r['group']} {r['dtype']} (fresh process, median): {m}; "
                          f"floor (inputs + output + gradients) {r['mem_floor_MiB']:.1f} MiB")
        for p, d in r["providers"].items():
            if d.get("stages_ms"):
                s = d["stages_ms"]
                parts = ", ".join(f"{k} {v:.1f}" for k, v in s.items())
                extras.append(f"- stages of {r['group']} {r['dtype']} {r['threads']} thr, {p} (ms, median): {parts}")
        for p, prof in (r.get("profile") or {}).items():
            parts = "; ".join(f"{x['op']} {x['self_ms']:.1f} ms ({x['pct']:.0f}%, {x['calls']}x)" for x in prof[:8])
            extras.append(f"- top ops (self CPU) of {r['group']}, {p}: {parts}")
    if extras:
        lines += [""] + extras
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
