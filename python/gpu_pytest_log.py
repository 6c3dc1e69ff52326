"""A pytest plugin for python/gpu_run.sh: one JSON line per test phase, appended as each test finishes, so a run
cut off at its time limit (JUnit XML is written only at the end) still records every finished test.

    PYTHONPATH=python GPU_TEST_LOG=$OUT/tests.jsonl python3 -m pytest -p gpu_pytest_log ...

Each line: nodeid, when (setup/call/teardown), outcome, duration, the first line of a failure, and for a
benchmark (pytest-benchmark's ``benchmark`` fixture) its ``extra_info`` (median_ms, provider, floor, ...).
Works under pytest-xdist (the controller receives every worker's reports).
"""

from __future__ import annotations

import json
import os
import time

import pytest


def _first_line(report) -> str:
    if not report.failed and not report.skipped:
        return ""
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:  # skip: (path, line, reason)
        return str(lr[2])[:300]
    text = getattr(report, "longreprtext", "") or str(lr or "")
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")] or text.splitlines()[-1:]
    return (lines[0] if lines else "")[:300]


_WORKER = False


def pytest_configure(config):
    global _WORKER
    _WORKER = hasattr(config, "workerinput")  # an xdist worker: its reports reach the controller, which logs them


@pytest.hookimpl(tryfirst=True)  # before the report is built from item.user_properties
def pytest_runtest_makereport(item, call):
    if call.when == "call":
        bm = getattr(item, "funcargs", {}).get("benchmark")
        info = getattr(bm, "extra_info", None)
        if info:
            item.user_properties.append(("extra_info", json.dumps(info, default=str)))


def pytest_runtest_logreport(report):
    path = os.environ.get("GPU_TEST_LOG")
    if not path or _WORKER:
        return
    if report.when != "call" and report.passed:
        return  # setup/teardown lines only when they fail or skip
    rec = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
           "duration": round(report.duration, 3), "t": round(time.time(), 1)}
    msg = _first_line(report)
    if msg:
        rec["message"] = msg
    for k, v in getattr(report, "user_properties", []):
        if k == "extra_info":
            rec["extra_info"] = json.loads(v)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
