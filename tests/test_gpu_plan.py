"""The GPU script without a GPU (runs in CI): ``bash python/gpu_run.sh --dry-run`` estimates at most 8 minutes and
names only tests and benchmarks that exist; every test of tests/test_gpu.py is marked ``gpu``; the stage machinery
records a failure, a hang cut off at its limit and the skipped stages after it; ``--full`` parts fit 10 minutes;
python/gpu_summary.py and python/gpu_results.py turn a fabricated $OUT (in a temp dir) into summary.md and a
RESULTS.md GPU section with every failure kept.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "python", "gpu_run.sh")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "python", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(args, env=None, timeout=300):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHON=sys.executable, **(env or {})))


def _collect(*args):
    out = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args])
    return [ln.strip() for ln in out.stdout.splitlines() if "::" in ln]


@pytest.fixture(scope="module")
def plan():
    return _load("gpu_plan").quick_plan()


def test_dry_run_estimate_within_8_minutes():
    out = _run(["bash", SCRIPT, "--dry-run"])
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"total estimate: (\d+) s", out.stdout)
    assert m, out.stdout
    assert int(m.group(1)) <= 480, out.stdout
    assert "PROBLEM" not in out.stdout, out.stdout
    for stage in ("build", "tests", "sanitize", "bench", "summary"):
        assert re.search(rf"^{stage}\s+\d+", out.stdout, re.M), f"no estimate for stage {stage}:\n{out.stdout}"


def test_plan_names_only_existing_tests_and_benchmarks(plan):
    assert not plan["problems"], plan["problems"]
    assert plan["total_s"] <= plan["limit_s"] == 480
    ids = plan["test_ids"]
    functions = {i.split("::")[-1].split("[")[0] for i in ids}
    tests = next(s for s in plan["stages"] if s["name"] == "tests")
    assert tests["n"] == len(ids) > 100
    assert set(tests["names"]) <= functions, set(tests["names"]) - functions
    data = _load("gpu_plan").load_data()
    for prefix in data["quick"]["tests"]["case_s"]:
        assert any(f.startswith(prefix) for f in functions), f"gpu_plan.json names {prefix}*, no such GPU test"
    bench = next(s for s in plan["stages"] if s["name"] == "bench")
    case_ids = [c.id for c in _load("gpu_bench").all_cases()]
    assert bench["names"] == case_ids and len(set(case_ids)) == len(case_ids), "benchmark case ids must be unique"
    families = {c.family for c in _load("gpu_bench").all_cases()}
    assert families == {"deform_conv2d", "sft", "denoise", "ebsrd"}
    # the script enforces the limits the plan prints
    caps = _load("gpu_plan").script_caps()
    assert {"build", "tests", "sanitize"} <= set(caps)
    for st in plan["stages"]:
        if st.get("cap_s"):
            assert st["est_s"] <= st["cap_s"], st


def test_every_test_gpu_case_is_marked_gpu(plan):
    assert _collect("-m", "not gpu", "tests/test_gpu.py") == []
    assert all(i.startswith("tests/test_gpu.py::") for i in plan["test_ids"])


def test_sanitizer_plan_covers_every_family_and_dtype(capsys):
    san = _load("gpu_sanitize")
    calls = san.plan(["native", "triton"])
    assert len(calls) == len(set(calls)) == 2 * len(san.FAMILIES) * 3
    assert san.main(["--list"]) == 0
    assert f"calls={len(calls)}" in capsys.readouterr().out


def test_full_parts_fit_ten_minutes():
    gp = _load("gpu_plan")
    full = gp.full_plan()
    assert not full["problems"], full["problems"]
    assert all(p["est_s"] <= 600 for p in full["parts"])
    units = [u for p in full["parts"] for u in p["units"]]
    kinds = {u["kind"] for u in units}
    assert kinds == {"tests", "bench", "ncu"}
    n = full["n_parts"]
    # every test file and every benchmark lands in exactly one part
    files = [u["target"] for u in units if u["kind"] == "tests"]
    assert len(files) == len(set(files)) and "tests/test_gpu.py" in files
    bench_ids = [i for u in units if u["kind"] == "bench" for i in u["ids"]]
    assert len(bench_ids) == len(set(bench_ids))
    assert sorted(bench_ids) == sorted(full["collected"]["benchmarks"])
    assert {i.split("::")[0] for i in full["collected"]["tests"]} == set(files)
    lines = [ln for p in full["parts"] for ln in gp.commands(p)]
    assert all(ln.split()[0] in ("TESTS", "BENCH", "NCU") for ln in lines)
    assert sum(ln == "NCU" for ln in lines) == 1 and n == full["parts_needed"]


def test_pack_is_balanced_and_complete():
    gp = _load("gpu_plan")
    units = [{"kind": "tests", "target": f"u{i}", "est_s": float(i)} for i in range(1, 11)]
    parts = gp.pack(units, 3)
    assert sorted(u["target"] for p in parts for u in p) == sorted(u["target"] for u in units)
    loads = [sum(u["est_s"] for u in p) for p in parts]
    assert max(loads) - min(loads) <= 10


def test_bad_arguments():
    assert _run(["bash", SCRIPT, "--full"]).returncode == 2
    assert _run(["bash", SCRIPT, "--bogus"]).returncode == 2
    assert _run(["bash", SCRIPT]).returncode == 2


def test_stage_machinery_records_failure_timeout_and_skips(tmp_path):
    """Fake stage bodies (GPU_RUN_FAKE=1): build fails, tests hang past the budget; the run still ends on time with
    a summary that lists every one of them."""
    out = _run(["bash", SCRIPT, "--quick"], env={"OUT": str(tmp_path), "GPU_RUN_FAKE": "1", "GPU_RUN_BUDGET": "8",
                                                 "GPU_RUN_RESERVE": "1", "GPU_RUN_MIN_STAGE": "2"}, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    status = {s["name"]: s["status"] for s in res["stages"]}
    assert status == {"setup": "ok", "build": "failed", "tests": "timeout", "sanitize": "skipped",
                      "bench": "skipped"}, status
    summary = (tmp_path / "summary.md").read_text()
    assert "FAIL" in summary and "stage tests: timeout" in summary
    assert (tmp_path / "run.log").exists()
    assert len(list(tmp_path.iterdir())) <= 8


# ----------------------------------------------------------------------------------------------
# summary and merge, on a fabricated $OUT
# ----------------------------------------------------------------------------------------------
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_gpu" name="test_sft[spade_N4C128_192_bf16-native]" time="0.5"/>
<testcase classname="tests.test_gpu" name="test_deform_conv2d[N8C64_96og8-fp16-triton]" time="0.7">
<failure message="AssertionError: deform_conv2d N8C64_96og8 [triton] output: relative error 3.1e-02 &gt; 1.0e-02">
trace</failure></testcase>
<testcase classname="tests.test_gpu" name="test_large_denoise[cm_update-native]" time="2.0">
<skipped message="native cannot run cm_update">skip</skipped></testcase>
<testcase classname="tests.test_gpu" name="test_denoise[euler-1x3x384x384_fp32-native]" time="0.1"/>
</testsuite></testsuites>"""

SANITIZER = """call native deform_conv2d fp32: ok (1.0s)
========= Invalid __global__ read of size 4 bytes
=========     at deform_conv2d_fwd_kernel<float>+0x1a0
call native deform_conv2d fp16: ok (0.2s)
calls=2 failed=0 seconds=3
========= ERROR SUMMARY: 1 error
"""


def _fabricate(out_dir, gpu="NVIDIA H200", date="2026-12-02 01:00:00"):
    (out_dir / "tests.xml").write_text(JUNIT)
    (out_dir / "sanitizer.txt").write_text(SANITIZER)
    bench = {"ceilings": {"copy_GBps": 4300.0, "bf16_mm_TFLOPs": 780.0}, "results": [
        {"id": "g [native]", "family": "sft", "group": "g", "provider": "native", "median_ms": 0.05, "floor_ms": 0.04,
         "x_floor": 1.25},
        {"id": "g [eager]", "family": "sft", "group": "g", "provider": "eager", "median_ms": 0.30},
        {"id": "g [triton]", "family": "sft", "group": "g", "provider": "triton", "error": "RuntimeError: boom"}],
        "not_run": ["h [native]"]}
    (out_dir / "bench.json").write_text(json.dumps(bench))
    (out_dir / "results.json").write_text(json.dumps({"mode": "quick", "env": {"gpu": gpu, "date_utc": date},
                                                      "stages": [{"name": "build", "status": "ok", "rc": 0,
                                                                  "seconds": 60}]}))
    summ = _run([sys.executable, "python/gpu_summary.py", "--out", str(out_dir), "--stage", "bench", "--rc", "1",
                 "--seconds", "100"])
    assert summ.returncode == 0, summ.stderr


def test_summary_of_a_fabricated_run(tmp_path):
    _fabricate(tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["tests"]["passed"] == 2 and res["tests"]["failed"] == 1 and res["tests"]["skipped"] == 1
    assert res["sanitizer"]["errors"] == 1 and res["sanitizer"]["complete"]
    assert not res["ok"]
    md = (tmp_path / "summary.md").read_text()
    assert "FAILED `tests/test_gpu.py::test_deform_conv2d[N8C64_96og8-fp16-triton]`" in md
    assert "memcheck: 1 errors" in md and "Invalid __global__ read" in md
    assert "6.00x vs eager" in md  # 0.30 / 0.05
    assert "FAILED: RuntimeError: boom" in md and "Not run (time limit): 1 cases" in md


def test_summary_falls_back_to_the_jsonl_log(tmp_path):
    recs = [{"nodeid": "tests/test_gpu.py::test_a", "when": "call", "outcome": "passed", "duration": 0.1},
            {"nodeid": "tests/test_gpu.py::test_b", "when": "call", "outcome": "failed", "duration": 0.1,
             "message": "E   assert 0"},
            {"nodeid": "benchmarks/bench_sft.py::test_sft[x]", "when": "call", "outcome": "passed", "duration": 2,
             "extra_info": {"provider": "triton", "median_ms": 0.1, "group": "sft x"}}]
    (tmp_path / "tests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert _run([sys.executable, "python/gpu_summary.py", "--out", str(tmp_path)]).returncode == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["tests"]["passed"] == 1 and res["tests"]["failed"] == 1
    assert res["bench"]["rows"][0]["median_ms"] == 0.1


def test_results_merge_keeps_failures_and_is_idempotent(tmp_path):
    gr = _load("gpu_results")
    md = tmp_path / "RESULTS.md"
    md.write_text("# Measured results\n\n## Status\n\nbench helper's text, untouched.\n")
    rdir = tmp_path / "results"
    run1 = tmp_path / "run1"
    run1.mkdir()
    _fabricate(run1)
    info = gr.merge(str(run1), str(md), str(rdir))
    text = md.read_text()
    assert info["id"] == "2026-12-02-nvidia-h200-quick" and not info["ok"]
    assert "bench helper's text, untouched." in text
    assert "### 2026-12-02-nvidia-h200-quick: FAIL" in text
    assert "test_deform_conv2d[N8C64_96og8-fp16-triton]" in text and "compute-sanitizer memcheck: 1 errors" in text
    for p in info["problems"]:
        assert p in text, p
    assert (rdir / "2026-12-02-nvidia-h200-quick.json").exists()
    assert (rdir / "2026-12-02-nvidia-h200-quick-bench.json").exists()
    gr.merge(str(run1), str(md), str(rdir))  # the same run again: replaced, not duplicated
    assert md.read_text().count("### 2026-12-02-nvidia-h200-quick") == 1
    run2 = tmp_path / "run2"
    run2.mkdir()
    _fabricate(run2, gpu="NVIDIA H100 80GB HBM3", date="2026-12-03 02:00:00")
    gr.merge(str(run2), str(md), str(rdir))
    text = md.read_text()
    assert text.index("2026-12-03-nvidia-h100-80gb-hbm3-quick") < text.index("2026-12-02-nvidia-h200-quick")
    assert text.count("<!-- gpu-results:begin -->") == 1


def test_results_merge_lists_problems_missing_from_a_stale_summary(tmp_path):
    gr = _load("gpu_results")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"mode": "full", "part": "2/8", "ok": False,
                                                 "env": {"gpu": "NVIDIA H200", "date_utc": "2026-12-04 00:00:00"},
                                                 "problems": ["test tests/test_x.py::test_y: boom"]}))
    (run / "summary.md").write_text("# burstkern GPU run: full part 2/8\n\n(cut short)\n")
    md = tmp_path / "RESULTS.md"
    info = gr.merge(str(run), str(md), str(tmp_path / "results"))
    text = md.read_text()
    assert info["id"] == "2026-12-04-nvidia-h200-full-part2-of-8"
    assert "FAIL" in text and "test tests/test_x.py::test_y: boom" in text
