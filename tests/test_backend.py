"""The backend registry: choice precedence, context-local blocks, the backend recorded for backward, availability
with reason codes, the float64 policy, warn-once fallback, and the `info` lines per cause."""

import asyncio
import subprocess
import sys
import threading
import warnings

import pytest
import torch

import burstkern
from burstkern import registry
from burstkern.registry import (BUILD_COMMAND, BackendUnavailableError, Reason, Supports, backend_available,
                                resolve)

OP = "_test_only_op"
CPU = torch.device("cpu")


@pytest.fixture
def test_op():
    """A throw-away op with a reference and a triton kernel, removed afterwards."""
    with registry.testing.temporary_kernels(OP, {"reference": lambda x: ("reference", x),
                                                 "triton": lambda x: ("triton", x)}) as op:
        yield op


@pytest.fixture(autouse=True)
def clean_choice(monkeypatch):
    monkeypatch.delenv("BURSTKERN_BACKEND", raising=False)
    with registry.testing.process_choice(None):
        yield


# ----------------------------------------------------------------------------------------------
# choosing
# ----------------------------------------------------------------------------------------------
def test_default_is_auto():
    assert burstkern.get_backend() == "auto"


def test_set_backend_and_invalid_names():
    burstkern.set_backend("reference")
    assert burstkern.get_backend() == "reference"
    burstkern.set_backend("AUTO")
    assert burstkern.get_backend() == "auto"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        burstkern.set_backend("fast")
    with pytest.raises(ValueError, match="backend"):
        with burstkern.backend("cudnn"):
            pass


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("BURSTKERN_BACKEND", "reference")
    assert burstkern.get_backend() == "reference"
    burstkern.set_backend("triton")  # an explicit call wins over the environment
    assert burstkern.get_backend() == "triton"


def test_bad_environment_variable_fails_at_import_in_one_line():
    env = {"BURSTKERN_BACKEND": "garbage", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", "import burstkern"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "BURSTKERN_BACKEND" in last and "unknown backend 'garbage'" in last and "native" in last, r.stderr


def test_module_is_not_shadowed():
    import burstkern.registry as mod

    assert mod is registry and callable(burstkern.backend) and not hasattr(burstkern, "_kernels")


def test_blocks_nest_restore_and_are_per_thread():
    burstkern.set_backend("reference")
    seen = []
    with burstkern.backend("triton"):
        assert burstkern.get_backend() == "triton"
        with burstkern.backend("native"):
            assert burstkern.get_backend() == "native"
        assert burstkern.get_backend() == "triton"
        t = threading.Thread(target=lambda: seen.append(burstkern.get_backend()))
        t.start()
        t.join()
    assert seen == ["reference"]  # the other thread sees the process-wide choice, not this block
    with pytest.raises(KeyError):
        with burstkern.backend("triton"):
            raise KeyError("boom")
    assert burstkern.get_backend() == "reference"


def test_blocks_do_not_leak_between_asyncio_tasks():
    seen = {}

    async def inside(entered, release):
        with burstkern.backend("triton"):
            entered.set()
            await release.wait()
            seen["inside"] = burstkern.get_backend()

    async def outside(entered, release):
        await entered.wait()
        seen["outside"] = burstkern.get_backend()
        release.set()

    async def main():
        entered, release = asyncio.Event(), asyncio.Event()
        await asyncio.gather(inside(entered, release), outside(entered, release))

    asyncio.run(main())
    assert seen == {"inside": "triton", "outside": "auto"}


def test_a_suspended_generator_block_does_not_leak_into_its_caller():
    def gen():
        with burstkern.backend("triton"):
            yield burstkern.get_backend()
            yield burstkern.get_backend()

    g = gen()
    assert next(g) == "triton"
    assert burstkern.get_backend() == "auto"  # the generator is suspended inside its block
    with burstkern.backend("reference"):
        assert next(g) == "triton"  # resumed: its own block is innermost while it runs
        assert burstkern.get_backend() == "reference"
    assert burstkern.get_backend() == "auto"
    g.close()


def test_blocks_exited_out_of_order_remove_their_own_entry():
    outer, inner = burstkern.backend("triton"), burstkern.backend("reference")
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # e.g. a generator closed while the caller's block is open
    assert burstkern.get_backend() == "reference"
    inner.__exit__(None, None, None)
    assert burstkern.get_backend() == "auto"


# ----------------------------------------------------------------------------------------------
# the backward runs on the forward's backend
# ----------------------------------------------------------------------------------------------
def _deform():
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    off = torch.randn(1, 18, 5, 5, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    return "deform_conv2d_backward", lambda: burstkern.ops.deform_conv2d(x, off, w, padding=1)


def _modulate():
    x, g = torch.randn(2, 4, 3, 3, requires_grad=True), torch.randn(2, 8, 3, 3, requires_grad=True)
    return "sft_modulate_backward", lambda: burstkern.ops.sft_modulate(x, g, act="silu")


def _group_norm():
    x, g = torch.randn(2, 4, 3, 3, requires_grad=True), torch.randn(2, 8, 1, 1, requires_grad=True)
    return "sft_group_norm_backward", lambda: burstkern.ops.sft_group_norm(x, g, num_groups=2)


def _combine():
    x, F = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4, requires_grad=True)
    return "denoise_combine_backward", lambda: burstkern.ops.denoise_combine(x, F, torch.tensor([0.5, 2.0]))


def _cm():
    x, F = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4, requires_grad=True)
    return "cm_update_backward", lambda: burstkern.ops.cm_update(x, F, torch.tensor(0.03), clamp=1.0)


def _loss():
    x, F, y = (torch.randn(2, 3, 4, 4, requires_grad=True) for _ in range(3))
    return "edm_loss_backward", lambda: burstkern.ops.edm_loss(x, F, y, torch.tensor([0.5, 2.0]))


FAMILIES = [_deform, _modulate, _group_norm, _combine, _cm, _loss]
triton_on_cpu = pytest.mark.skipif(not backend_available("triton", "cpu", "sft_modulate").ok,
                                   reason=backend_available("triton", "cpu", "sft_modulate").message)


@triton_on_cpu
@pytest.mark.parametrize("make", FAMILIES, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("where", ["here", "another thread"])
def test_backward_runs_on_the_forward_backend(make, where):
    bwd_op, forward = make()
    with burstkern.backend("triton"):
        out = forward()
    with registry.testing.spy(bwd_op) as calls:
        # outside the block (auto would pick another backend on the CPU), inside one naming another backend
        with burstkern.backend("reference"):
            if where == "here":
                out.sum().backward()
            else:
                errors = []

                def run():
                    try:
                        out.sum().backward()
                    except Exception as exc:  # noqa: BLE001 - reported below
                        errors.append(exc)

                t = threading.Thread(target=run)
                t.start()
                t.join()
                assert not errors, errors
    assert calls == ["triton"]


@triton_on_cpu
def test_reference_forward_keeps_a_reference_backward():
    bwd_op, forward = _modulate()
    with burstkern.backend("reference"):
        out = forward()
    with registry.testing.spy(bwd_op) as calls, burstkern.backend("triton"):
        out.sum().backward()
    assert calls == ["reference"]


# ----------------------------------------------------------------------------------------------
# availability, reasons, the float64 policy
# ----------------------------------------------------------------------------------------------
def test_kernels_plug_in_per_op_and_backend(test_op, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with burstkern.backend("triton"):
        assert resolve(test_op, CPU)[1](1) == ("triton", 1)
    with burstkern.backend("reference"):
        assert resolve(test_op, CPU)[1](2) == ("reference", 2)


def test_unavailable_backends_say_why(test_op, monkeypatch):
    with burstkern.backend("native"):
        with pytest.raises(BackendUnavailableError) as e:
            resolve(test_op, CPU)
        assert e.value.reason in (Reason.NO_KERNEL, Reason.NOT_BUILT)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with burstkern.backend("triton"):
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1") as e:
            resolve(test_op, CPU)
        assert e.value.reason is Reason.WRONG_DEVICE


def test_cuda_alias_refuses_cpu_tensors(test_op):
    with registry.testing.temporary_kernels("_test_native_op", {"native": lambda x: x, "reference": lambda x: x}):
        with registry.testing.available("native", "cpu"):
            av = backend_available("cuda", "cpu", "_test_native_op")
        if burstkern._extension.state().loaded:
            assert av.reason is Reason.WRONG_DEVICE and "use backend 'native'" in av.message


def test_missing_extension_is_one_reason_with_the_build_command(test_op, monkeypatch):
    monkeypatch.setattr(burstkern._extension, "_cuda_error", "not built: this install has no compiled burstkern._C")
    for dev in ("cpu", "cuda"):
        av = backend_available("native", dev)
        assert not av.ok and av.reason is Reason.NOT_BUILT and BUILD_COMMAND in av.message
    with burstkern.backend("native"):
        with pytest.raises(BackendUnavailableError, match="--no-build-isolation") as e:
            resolve("deform_conv2d", CPU, torch.float32)
        assert e.value.reason is Reason.NOT_BUILT


def test_float64_policy_is_one_rule_for_every_op():
    """CUDA and Triton kernels declare fp32/fp16/bf16: auto passes over them for float64, a named backend raises
    with reason DTYPE; the native CPU kernels and the reference take float64."""
    gpu = torch.device("cuda")  # resolve() only looks at the device type
    with registry.testing.available("native", "cuda"), registry.testing.available("triton", "cuda"):
        for op in registry.registered_ops():
            if op.startswith("_") or not registry.has_kernel(op, "native"):
                continue
            assert resolve(op, gpu, torch.float64)[0] in ("reference",), op
            assert resolve(op, gpu, torch.float32)[0] == "native", op
            for name in ("native", "triton"):
                with burstkern.backend(name), pytest.raises(BackendUnavailableError) as e:
                    resolve(op, gpu, torch.float64)
                assert e.value.reason is Reason.DTYPE and "reference backend" in str(e.value), op
    with registry.testing.available("native", "cpu"):
        for op in registry.registered_ops():
            if registry.has_kernel(op, "native"):
                assert resolve(op, CPU, torch.float64)[0] == "native", op


def test_supports_predicate_routes_auto(test_op):
    with registry.testing.temporary_kernels("_test_pred_op", {
            "native": lambda: "native", "reference": lambda: "reference"},
            supports={"native": Supports.of(cpu=[torch.float32])}):
        with registry.testing.available("native", "cpu"):
            assert resolve("_test_pred_op", CPU, torch.float32)[0] == "native"
            assert resolve("_test_pred_op", CPU, torch.bfloat16)[0] == "reference"
            with burstkern.backend("native"), pytest.raises(BackendUnavailableError, match="takes float32"):
                resolve("_test_pred_op", CPU, torch.bfloat16)


def test_unknown_op():
    with pytest.raises(RuntimeError, match="no registered kernels"):
        resolve("_no_such_op", CPU)


def test_auto_warns_once_for_every_op_when_the_build_is_missing(monkeypatch):
    monkeypatch.setattr(burstkern._extension, "_cuda_error", "not built: this install has no compiled burstkern._C")
    registry.testing.reset_warnings()
    registry._resolve_cache.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for op in ("deform_conv2d", "sft_modulate", "sft_group_norm", "denoise_combine", "edm_heun_update"):
            for _ in range(3):
                assert resolve(op, CPU, torch.float32)[0] == "reference"
    msgs = [str(w.message) for w in caught if "burstkern" in str(w.message)]
    assert len(msgs) == 1 and BUILD_COMMAND in msgs[0] and "no kernel" not in msgs[0], msgs
    registry._resolve_cache.clear()


def test_every_public_op_has_a_reference_kernel():
    assert registry.registered_ops(), "no ops registered"
    for op in registry.registered_ops():
        if op.startswith("_test"):
            continue
        assert registry.has_kernel(op, "reference"), op


def test_info_prints_one_line_per_cause(monkeypatch, capsys):
    from burstkern import info

    monkeypatch.setattr(burstkern._extension, "_cuda_error", "not built: this install has no compiled burstkern._C")
    registry._resolve_cache.clear()
    text = "\n".join(info.lines("cpu"))
    assert "import failed" not in text and "circular import" not in text
    causes = [ln for ln in text.splitlines() if ln.lstrip().startswith("[")]
    assert len(causes) == len(set(causes)) and any(BUILD_COMMAND in c for c in causes), text
    assert sum("not built" in c for c in causes) == 1, text
