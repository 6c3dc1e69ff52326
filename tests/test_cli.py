"""`burstkern info` and `python -m burstkern info`."""

import os
import shutil
import subprocess
import sys

import pytest

from burstkern.registry import registered_ops
from burstkern.cli import main


def test_info_lists_every_op_and_backend(capsys):
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "triton", "burstkern._C", "reference", "native", "GPU"):
        assert word in out
    for op in registered_ops():
        assert op in out
    assert "no [" in out  # a CPU machine cannot run the cuda backend: the reason is footnoted
    assert "the cuda backend runs CUDA tensors" in out or "not available" in out or "no cuda kernel" in out


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "usage" in capsys.readouterr().err


def test_demo_is_wired(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


def test_python_dash_m():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-m", "burstkern", "info"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "deform_conv2d" in res.stdout


@pytest.mark.skipif(shutil.which("burstkern") is None, reason="console script not installed (pip install -e .)")
def test_console_script():
    res = subprocess.run(["burstkern", "info"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "burstkern" in res.stdout
