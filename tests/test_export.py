"""Export: torch.export programs and ONNX graphs of the nn modules and of one-step E-BSRD equal eager; the ONNX
graph runs in onnxruntime (and OpenVINO, where its ONNX frontend converts DeformConv)."""

import numpy as np
import pytest
import torch

import burstkern
from burstkern.export import OneStep, export_onnx, export_program, register_onnx_symbolics
from burstkern.models import EBSRD
from burstkern.nn import DeformConv2d, ModulatedDeformConv2d, SFT, SPADEGroupNorm, ScaleShiftGroupNorm

from utils import rel_err

MODULES = {
    "DeformConv2d": (lambda: DeformConv2d(4, 6, 3, padding=1),
                     lambda: (torch.randn(2, 4, 7, 7), torch.randn(2, 18, 7, 7), torch.rand(2, 9, 7, 7))),
    "DeformConv2d_groups_stride": (lambda: DeformConv2d(4, 4, (3, 2), stride=2, padding=(1, 0), dilation=(2, 1),
                                                        groups=2, bias=False),
                                   lambda: (torch.randn(1, 4, 9, 8), torch.randn(1, 24, 4, 4))),
    "ModulatedDeformConv2d": (lambda: ModulatedDeformConv2d(4, 4, 3, padding=1, deform_groups=2),
                              lambda: (torch.randn(2, 4, 6, 6),)),
    "SFT": (lambda: SFT(8, 4, 4, act="leaky_relu(0.2)"), lambda: (torch.randn(2, 8, 5, 5), torch.randn(2, 4, 5, 5))),
    "SPADEGroupNorm": (lambda: SPADEGroupNorm(8, 4, 8, num_groups=2, affine=True, act="silu"),
                       lambda: (torch.randn(2, 8, 6, 6), torch.randn(2, 4, 3, 3))),
    "ScaleShiftGroupNorm": (lambda: ScaleShiftGroupNorm(8, 6, num_groups=4),
                            lambda: (torch.randn(2, 8, 5, 5), torch.randn(2, 6))),
}


def _model(name):
    torch.manual_seed(0)
    module_fn, args_fn = MODULES[name]
    m = module_fn().eval()
    if isinstance(m, ModulatedDeformConv2d):  # its offset conv starts at zero: give it offsets to export
        torch.nn.init.normal_(m.conv_offset.weight, std=0.3)
    return m, args_fn()


@pytest.mark.parametrize("name", list(MODULES))
def test_torch_export_of_modules_equals_eager(name):
    m, args = _model(name)
    with burstkern.backend("reference"), torch.no_grad():
        ref = m(*args)
        prog = export_program(m, args)
        out = prog.module()(*args)
    assert rel_err(out, ref) < 1e-6
    targets = {str(n.target) for n in prog.graph.nodes if n.op == "call_function"}
    assert any("burstkern." in t for t in targets), targets  # the ops stay single nodes


def _onnx_session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(MODULES))
def test_onnx_export_of_modules_runs_in_onnxruntime(name, tmp_path):
    pytest.importorskip("onnx")
    m, args = _model(name)
    with burstkern.backend("reference"), torch.no_grad():
        ref = m(*args)
    path = export_onnx(m, args, str(tmp_path / f"{name}.onnx"))
    import onnx

    graph = onnx.load(path).graph
    ops_used = {n.op_type for n in graph.node}
    assert all(not t.startswith("burstkern") for t in ops_used), ops_used  # standard ONNX only
    if name.startswith(("DeformConv", "Modulated")):
        assert "DeformConv" in ops_used
    sess = _onnx_session(path)
    out = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})[0]
    assert rel_err(torch.from_numpy(out), ref) < 1e-5


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    torch.manual_seed(1)
    model = EBSRD("tiny").eval()
    burst = torch.rand(1, model.config.burst_size, 4, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x_init, _ = model.initial(burst)
    noise = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(3))
    wrapper = OneStep(model).eval()
    return model, wrapper, burst, noise, tmp_path_factory.mktemp("onnx")


def test_one_step_wrapper_is_the_model(one_step):
    """OneStep(burst, ε) is EBSRD.forward when ε is the noise forward's generator draws (rng.py's stream)."""
    from burstkern.ops.denoise import rng

    model, wrapper, burst, _, _ = one_step
    with burstkern.backend("reference"), torch.no_grad():
        ref = model(burst, generator=torch.Generator().manual_seed(7))
        seed = rng.draw_seed(torch.device("cpu"), torch.Generator().manual_seed(7))
        noise = rng.randn(seed, ref.shape)
        out = wrapper(burst, noise)
    assert rel_err(out, ref) < 1e-6


def test_one_step_torch_export_equals_eager(one_step):
    _, wrapper, burst, noise, _ = one_step
    with burstkern.backend("reference"), torch.no_grad():
        ref = wrapper(burst, noise)
        out = export_program(wrapper, (burst, noise)).module()(burst, noise)
    assert rel_err(out, ref) < 1e-6


def test_one_step_onnx_runs_in_onnxruntime_and_openvino(one_step):
    pytest.importorskip("onnx")
    _, wrapper, burst, noise, tmp = one_step
    with burstkern.backend("reference"), torch.no_grad():
        ref = wrapper(burst, noise)
    path = export_onnx(wrapper, (burst, noise), str(tmp / "one_step.onnx"), input_names=["burst", "noise"])
    sess = _onnx_session(path)
    out = sess.run(None, {"burst": burst.numpy(), "noise": noise.numpy()})[0]
    assert rel_err(torch.from_numpy(out), ref) < 1e-5
    try:
        import openvino as ov
    except ImportError:
        return
    try:
        compiled = ov.Core().compile_model(path, "CPU")
    except RuntimeError as exc:
        if "DeformConv" in str(exc):
            pytest.skip("OpenVINO's ONNX frontend has no conversion rule for DeformConv-19 (its own "
                        "DeformableConvolution op is reachable from its other frontends only)")
        raise
    out_ov = compiled([burst.numpy(), noise.numpy()])[0]
    assert rel_err(torch.from_numpy(np.asarray(out_ov)), ref) < 1e-4


def test_export_onnx_cli(tmp_path, capsys):
    pytest.importorskip("onnx")
    from burstkern.cli import main

    out = tmp_path / "m.onnx"
    rc = main(["export-onnx", "--out", str(out), "--size", "6", "6"])
    if rc == 2 and "no shipped weights" in capsys.readouterr().err:
        pytest.skip("no shipped weights in this checkout")
    assert rc == 0 and out.stat().st_size > 0
    assert main(["export-onnx", "--out", str(tmp_path / "x.onnx"), "--size", "0", "6"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_symbolics_refuse_old_opsets():
    with pytest.raises(burstkern.ArgumentError, match="opset must be >= 19"):
        register_onnx_symbolics(17)
