"""Merge a returned GPU run ($OUT of python/gpu_run.sh: results.json, summary.md, bench.json) into the repo:
its summary into the GPU section of benchmarks/RESULTS.md, its JSON under benchmarks/results/.

    python python/gpu_results.py DIR [--results-md benchmarks/RESULTS.md] [--results-dir benchmarks/results]

The GPU section lies between ``<!-- gpu-results:begin -->`` and ``<!-- gpu-results:end -->`` (appended at the end
of the file if absent; nothing outside it is touched). Each run is one entry, newest first, keyed by
<date>-<gpu>-<mode>[-partK-of-N]: merging the same run again replaces its entry. A run that failed goes in as a
failure: the entry's title says FAIL and every problem of results.json is listed in it, never dropped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- gpu-results:begin -->", "<!-- gpu-results:end -->"
SECTION = ("\n## GPU results\n\nMerged from the `$OUT` of `bash python/gpu_run.sh` runs by `python python/gpu_results.py "
           "DIR` (newest first; the JSON of each run is in `benchmarks/results/`). Failures stay listed until a later "
           "run passes.\n\n" + BEGIN + "\n" + END + "\n")


def _summary_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_summary.py")
    spec = importlib.util.spec_from_file_location("gpu_summary", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "unknown"


def run_id(res: dict) -> str:
    env = res.get("env", {})
    date = (env.get("date_utc") or "undated").split(" ")[0]
    gpu = _slug(env.get("gpu") or (env.get("nvidia_smi") or "gpu").split(",")[0])
    rid = f"{date}-{gpu}-{res.get('mode', 'quick')}"
    if res.get("part"):
        rid += "-part" + res["part"].replace("/", "-of-")
    return rid


def entry(res: dict, summary_md: str, rid: str, json_rel: str) -> str:
    ok = bool(res.get("ok")) and not res.get("problems")
    body = re.sub(r"^(#+) ", lambda m: "#" * min(6, len(m.group(1)) + 3) + " ", summary_md.strip(), flags=re.M)
    lines = [f"<!-- gpu-run:{rid} -->", f"### {rid}: {'PASS' if ok else 'FAIL'}", "",
             f"JSON: `{json_rel}`", "", body]
    missing = [p for p in res.get("problems", []) if p not in body]
    if missing:  # summary.md cut short or stale: the failures still go in
        lines += ["", "Problems (from results.json):", ""] + [f"- {p}" for p in missing]
    lines.append(f"<!-- /gpu-run:{rid} -->")
    return "\n".join(lines)


def merge(out_dir: str, results_md: str, results_dir: str) -> dict:
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    summary_path = os.path.join(out_dir, "summary.md")
    if os.path.exists(summary_path):
        summary_md = open(summary_path).read()
    else:
        summary_md = _summary_module().render(res)
    rid = run_id(res)
    os.makedirs(results_dir, exist_ok=True)
    json_path = os.path.join(results_dir, f"{rid}.json")
    shutil.copyfile(os.path.join(out_dir, "results.json"), json_path)
    copied = [json_path]
    for name in ("bench.json", "tests.jsonl"):
        src = os.path.join(out_dir, name)
        if os.path.exists(src):
            dst = os.path.join(results_dir, f"{rid}-{name}")
            shutil.copyfile(src, dst)
            copied.append(dst)
    try:
        json_rel = os.path.relpath(json_path, os.path.dirname(os.path.dirname(os.path.abspath(results_md))))
    except ValueError:
        json_rel = json_path
    text = open(results_md).read() if os.path.exists(results_md) else "# Measured results\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + "\n" + SECTION
    head, rest = text.split(BEGIN, 1)
    inside, tail = rest.split(END, 1)
    block = re.compile(rf"<!-- gpu-run:{re.escape(rid)} -->.*?<!-- /gpu-run:{re.escape(rid)} -->\n*", re.S)
    inside = block.sub("", inside).strip("\n")
    new = entry(res, summary_md, rid, json_rel)
    inside = "\n" + new + ("\n\n" + inside if inside else "") + "\n"
    with open(results_md, "w") as f:
        f.write(head + BEGIN + inside + END + tail)
    return {"id": rid, "ok": bool(res.get("ok")) and not res.get("problems"), "problems": res.get("problems", []),
            "copied": copied, "results_md": results_md}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", help="the returned $OUT folder")
    ap.add_argument("--results-md", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    ap.add_argument("--results-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    info = merge(args.dir, args.results_md, args.results_dir)
    print(f"merged {info['id']} into {info['results_md']}: {'PASS' if info['ok'] else 'FAIL'}; copied "
          + ", ".join(info["copied"]))
    if not info["ok"]:
        print(f"{len(info['problems'])} GPU problem(s): fix each failing kernel in this session, or make `auto` stop "
              "choosing it on the GPU until it is fixed (with a test); they stay in RESULTS.md as failures:")
        for p in info["problems"]:
            print(f"  - {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
