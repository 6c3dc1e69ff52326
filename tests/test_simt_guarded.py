"""No CUDA kernel reads outside its inputs: tests/guarded_inputs.py runs every kernel on the SIMT emulation with
each input ending right before an unreadable page, then starting right after one (a crash there is an overrun the
GPU's compute-sanitizer would report). Writes outside the outputs (which the ops allocate) are not covered here."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from burstkern import _extension

if _extension.cuda_extension_error() is not None or not hasattr(torch.ops.burstkern_C, "set_simt_emulation"):
    pytest.skip(f"burstkern._C without the SIMT emulation ({_extension.cuda_extension_error()})",
                allow_module_level=True)
if not sys.platform.startswith("linux"):
    pytest.skip("guard pages via mmap/mprotect (Linux)", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parent / "guarded_inputs.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("where", ["end", "start"])
def test_guard_page_catches_an_overrun(where):
    out = _run(f"control-{where}")
    assert out.returncode == -signal.SIGSEGV, (out.returncode, out.stderr[-2000:])


@pytest.mark.parametrize("where", ["end", "start"])
def test_kernels_stay_inside_their_inputs(where):
    out = _run(where)
    assert out.returncode == 0, (
        f"exit {out.returncode} ({f'SIGSEGV: a kernel read past the {where} of an input' if out.returncode == -11 else ''})"
        f" after: {out.stdout.strip()!r}\n{out.stderr[-3000:]}")
    assert out.stdout.split() == ["deform_conv", "ok", "sft", "ok", "denoise", "ok"]
