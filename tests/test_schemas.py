"""The compiled ops agree with the Python ones, and the build carries the test machinery only when asked to.

Every public op is declared twice: in Python (``burstkern::<op>``, torch.library) and in C++ (``burstkern_C::<op>``,
csrc/<op>/<op>.cpp), which the native backend calls with the very same arguments. Here the two schemas are compared
argument for argument (name, type, default, keyword-only) and return for return. A testing build
(``BURSTKERN_TESTING=1``) carries every test-only op; a default build carries none (check a default build with
``python -c "import burstkern._C, torch; print(torch.ops.burstkern_C.build_flags())"``: it says ``testing=0``,
and this file's ``test_build_flavour_and_test_ops`` then asserts that none of TEST_OPS is registered).
"""

from __future__ import annotations

import pytest
import torch


def _load_error():
    try:
        import burstkern._C  # noqa: F401  (registers the burstkern_C ops)
    except ImportError as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(_load_error() is not None, reason=f"burstkern._C is not built ({_load_error()})")

# Test-only ops of csrc/testing/ (BURSTKERN_TESTING=1 builds only).
TEST_OPS = {"set_simt_emulation", "simt_selftest", "simt_emulation_stats", "poison_", "set_poison_outputs",
            "sft_tile_elements", "denoise_randn"}
# burstkern_C ops that no Python op mirrors, and Python ops that have no compiled kernel.
C_ONLY = {"build_flags"}
PYTHON_ONLY = {"karras_schedule"}


def _ops(namespace):
    import burstkern  # noqa: F401  (defines the burstkern:: ops)

    prefix = namespace + "::"
    names = {n[len(prefix):].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)}
    return {n for n in names if not n.startswith("_")}


def _schema(namespace, name):
    return getattr(getattr(torch.ops, namespace), name).default._schema


def _type(t):
    # torch.library infers SymInt for a Python int; the C++ ops take int64_t (SymInt is accepted for int there)
    return str(t).replace("SymInt", "int")


def _describe(arg):
    return (arg.name, _type(arg.type), None if not arg.has_default_value() else repr(arg.default_value),
            arg.kwarg_only)


def _pairs():
    return sorted(_ops("burstkern") & _ops("burstkern_C"))


def test_every_op_has_both_declarations():
    py, c = _ops("burstkern"), _ops("burstkern_C")
    assert py - c == PYTHON_ONLY, f"Python ops without a compiled one: {sorted(py - c - PYTHON_ONLY)}"
    assert (c - py) - TEST_OPS == C_ONLY, f"compiled ops without a Python one: {sorted((c - py) - TEST_OPS - C_ONLY)}"


@pytest.mark.parametrize("name", _pairs() if _load_error() is None else [])
def test_python_and_cpp_schemas_agree(name):
    py, c = _schema("burstkern", name), _schema("burstkern_C", name)
    pa, ca = [_describe(a) for a in py.arguments], [_describe(a) for a in c.arguments]
    for i, (p, q) in enumerate(zip(pa, ca)):
        assert p == q, f"{name}: argument {i} is {p} in Python but {q} in C++\n  {py}\n  {c}"
    assert len(pa) == len(ca), f"{name}: {len(pa)} arguments in Python, {len(ca)} in C++\n  {py}\n  {c}"
    pr, cr = [_type(r.type) for r in py.returns], [_type(r.type) for r in c.returns]
    assert pr == cr, f"{name}: returns {pr} in Python, {cr} in C++"


def test_build_flavour_and_test_ops():
    flags = dict(w.split("=", 1) for w in torch.ops.burstkern_C.build_flags().split())
    assert set(flags) >= {"testing", "cuda", "cpu_vec"}, flags
    present = TEST_OPS & _ops("burstkern_C")
    if flags["testing"] == "1":
        assert present == TEST_OPS, f"a testing build lacks {sorted(TEST_OPS - present)}"
    else:
        assert present == set(), f"a default build carries test ops {sorted(present)}"
    from burstkern._build_info import BUILD_INFO

    if "testing" in BUILD_INFO:
        assert BUILD_INFO["testing"] == (flags["testing"] == "1"), (BUILD_INFO, flags)
