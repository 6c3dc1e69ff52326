"""Benchmark session setup: the harness is importable, and the JSON names the machine and its ceilings."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    import burstkern

    machine_info["torch"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["burstkern"] = burstkern.__version__
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = None
    if torch.cuda.is_available():
        from harness import ceilings

        machine_info["gpu"] = torch.cuda.get_device_name(0)
        machine_info["ceilings"] = ceilings()
