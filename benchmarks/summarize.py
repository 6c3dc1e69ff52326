"""Summarise a pytest-benchmark JSON (from benchmarks/harness.py) as a markdown table, one row per provider,
with each group's ratios against the other providers measured in the same run.

    python benchmarks/summarize.py bench.json > table.md
"""

import json
import sys
from collections import defaultdict


def main(path: str) -> int:
    with open(path) as f:
        data = json.load(f)
    mi = data.get("machine_info", {})
    print(f"GPU: {mi.get('gpu')} | torch {mi.get('torch')} (CUDA {mi.get('torch_cuda')}) | triton {mi.get('triton')}"
          f" | ceilings {mi.get('ceilings')} | {data.get('datetime', '')}\n")
    cpus = sorted({b["extra_info"]["cpu"] for b in data.get("benchmarks", []) if "cpu" in b.get("extra_info", {})})
    if cpus:  # the CPU cases (cpu_harness.measure_cpu); their interleaved protocol is cpu_suite.py
        print(f"CPU cases: {', '.join(cpus)} | {mi.get('cpu', {}).get('brand_raw', '')} | python {mi.get('python_version')}\n")
    groups = defaultdict(list)
    for b in data.get("benchmarks", []):
        groups[b.get("group") or b["name"]].append(b["extra_info"])
    print("| group | provider | median ms | GB/s | % copy BW | TFLOP/s | x floor | peak MB | speed-up vs others |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for group in sorted(groups):
        rows = [r for r in groups[group] if "median_ms" in r]
        for r in rows:
            others = ", ".join(f"{o['provider']} {o['median_ms'] / r['median_ms']:.2f}x" for o in rows if o is not r)
            fmt = lambda k, p=3: (f"{r[k]:.{p}f}" if k in r else "")  # noqa: E731
            print(f"| {group} | {r['provider']} | {fmt('median_ms', 4)} | {fmt('GBps', 0 if r.get('GBps', 0) >= 100 else 2)} | {fmt('pct_copy_bw', 1)} "
                  f"| {fmt('TFLOPs', 1)} | {fmt('x_floor', 2)} | {fmt('peak_mem_MB', 1)} | {others} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
