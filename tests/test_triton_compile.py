"""Every Triton kernel compiles for sm_90 with the GPU launch configuration, on a machine without a GPU
(tests/triton_sm90_compile.py, in a subprocess: this process runs Triton's interpreter). What the interpreter
cannot show: that each kernel lowers through ptxas, that fp16/bf16 tile products use the tensor cores, and that
no kernel spills much to local memory."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "triton_sm90_compile.py"
# bytes of stack per thread (spilled registers, mostly); the deform_conv tiles were chosen to keep under it
MAX_STACK = 256

if torch.cuda.is_available():
    pytest.skip("on a GPU the kernels compile and run in the other tests", allow_module_level=True)


@lru_cache(maxsize=None)
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=1800,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def launched_kernels():
    """The @triton.jit functions the launchers call (named *_kernel; the others are device helpers)."""
    names = set()
    for path in (ROOT / "burstkern" / "ops").glob("*/triton.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel") and any(
                    "jit" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
    assert names
    return names


def test_every_kernel_compiles_for_sm90():
    got = {r["kernel"] for r in compiled()}
    assert launched_kernels() <= got, f"never compiled: {sorted(launched_kernels() - got)}"
    for r in compiled():
        assert r["cubin_bytes"] > 0, r["kernel"]


def test_no_large_spills():
    records = compiled()
    if "stack" not in records[0]:
        pytest.skip("no cuobjdump to read register use")
    for r in records:
        assert r["local"] == 0 and r["stack"] <= MAX_STACK, \
            f"{r['kernel']} ({r['num_warps']} warps) spills: stack {r['stack']} B, {r['reg']} registers, " \
            f"{r['constexprs']}"


def test_half_precision_tile_products_use_tensor_cores():
    dots = [r for r in compiled() if r["kernel"].startswith("_deform_conv2d")]
    assert dots
    for r in dots:
        half = any(dt in r["signature"].get("x_ptr", "") for dt in ("fp16", "bf16"))
        assert "x_ptr" in r["signature"], r["signature"]
        if half:
            assert r["mma"], f"{r['kernel']} has no tensor-core instruction for {r['signature']}"
