"""The native driver (backends/tvm/driver.py): `main` calls one TIR function that calls every kernel on a planned
arena. Bit-exact against the reference integer executor and the same kernels run by the VM one by one."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import tvm_graphs as G
from conftest import make_input, vm_calls, vm_pipeline

from qcompile.backends.tvm import load, lower_integer_graph
from qcompile.backends.tvm.driver import ALIGN, DRIVER_NAME, _first_fit, _Slot


@pytest.fixture(scope="module")
def mbv2_vm(mbv2_graph):
    return lower_integer_graph(mbv2_graph, "x86", pipeline=vm_pipeline())


def test_driver_calls_the_vm_programs_kernels_bit_exact(mbv2_x86, mbv2_vm, mbv2_graph):
    """The default lowering runs `main` as one driver call (no per-kernel VM instruction, two tensors allocated
    per call: output and arena); it calls the kernels the VM program calls, as often, and the outputs equal the
    VM program's and the reference executor's on several inputs."""
    drv = mbv2_x86.meta["driver"]
    assert drv is not None and mbv2_vm.meta["driver"] is None
    x = make_input(mbv2_graph, 1)
    on_vm, on_driver = vm_calls(mbv2_vm, x), vm_calls(mbv2_x86, x)
    vm_kernels = {k: n for k, n in on_vm.items() if not k.startswith("vm.")}
    assert sum(vm_kernels.values()) >= 10
    assert collections.Counter(drv["calls"]) == vm_kernels
    assert {k: n for k, n in on_driver.items() if not k.startswith("vm.")} == {DRIVER_NAME: 1}
    assert on_driver["vm.builtin.alloc_tensor"] == 2 < on_vm["vm.builtin.alloc_tensor"]
    assert drv["arena_bytes"] > 0 and drv["arena_bytes"] % ALIGN == 0 and drv["blob_bytes"] > 0
    for seed in range(4):
        x = make_input(mbv2_graph, seed, scale=1.0 + seed)
        y = mbv2_x86(x)
        np.testing.assert_array_equal(y, G.reference(mbv2_graph, x))
        np.testing.assert_array_equal(y, mbv2_vm(x))
    assert DRIVER_NAME not in mbv2_x86.meta["signatures"]
    assert set(mbv2_x86.meta["signatures"]) == set(mbv2_vm.meta["signatures"])


@pytest.mark.parametrize("build", [G.float_island, G.unfused_acc, G.epilogue_chains, G.se_island,
                                   lambda: G.mbv2_like(seed=2, bits=2)])
def test_driver_other_graphs_exact(build):
    """Float islands, unfused accumulators (batch 2), epilogue chains, squeeze-excite, 2-bit: bit-exact through
    the driver."""
    ig = build()
    low = lower_integer_graph(ig, "x86")
    assert low.meta["driver"] is not None
    for seed in (3, 4):
        x = make_input(ig, seed, scale=0.5)
        y, r = low(x), G.reference(ig, x)
        assert y.dtype == r.dtype and y.shape == r.shape
        np.testing.assert_array_equal(y, r)


def test_driver_export_load_threads_and_kernel_table(mbv2_x86, mbv2_graph, tmp_path):
    """An exported driver library loads and runs bit-exact, at 2 threads too; the per-kernel table times the
    kernels the driver calls, not the driver."""
    again = load(mbv2_x86.export(tmp_path / "lib"))
    assert again.meta["driver"] == mbv2_x86.meta["driver"]
    x = make_input(mbv2_graph, 9)
    np.testing.assert_array_equal(again(x), G.reference(mbv2_graph, x))
    two = lower_integer_graph(mbv2_graph, "x86", num_threads=2)
    assert two.meta["driver"] is not None
    np.testing.assert_array_equal(two(x), G.reference(mbv2_graph, x))
    res = again.benchmark(repeat=3)
    names = {r["name"] for r in res.kernels}
    assert set(mbv2_x86.meta["driver"]["calls"]) <= names and DRIVER_NAME not in names


def test_dynamic_batch_keeps_the_vm_program(mbv2_graph):
    """A batch loop is not a straight line of static kernel calls: the VM program runs it, as before."""
    low = lower_integer_graph(mbv2_graph, "x86", batch="dynamic")
    assert low.meta["driver"] is None
    x = (np.random.default_rng(2).standard_normal((2, 3, 17, 15)) * 3).astype(np.float32)
    np.testing.assert_array_equal(low(x)[1:], G.reference(mbv2_graph, x[1:]))


def test_arena_first_fit_never_overlaps_live_tensors():
    """Random lifetimes and sizes: two tensors alive at a common call never share a byte, offsets are aligned,
    and tensors with disjoint lifetimes do share bytes (the arena is smaller than their sum)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        slots = []
        for _ in range(int(rng.integers(1, 40))):
            first = int(rng.integers(0, 30))
            slots.append(_Slot("arena", nbytes=int(rng.integers(1, 5000)), first=first,
                               last=first + int(rng.integers(0, 5))))
        size = _first_fit(slots)
        for i, a in enumerate(slots):
            assert a.offset % ALIGN == 0 and a.offset + a.nbytes <= size
            for b in slots[i + 1:]:
                if a.first <= b.last and b.first <= a.last:
                    assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset
    chain = [_Slot("arena", nbytes=1000, first=i, last=i + 1) for i in range(10)]  # each read by the next call
    assert _first_fit(chain) == 2 * 1024  # two buffers ping-pong


def test_fast_input_path_checks_like_the_full_one(mbv2_x86, mbv2_graph):
    """Once the input buffer is bound, a ready float32 array skips the conversions (`Lowered._ready_input`): NaN
    and inf are still refused, the largest finite values pass, and the outputs equal the reference's."""
    from qcompile.errors import ConfigError

    x = make_input(mbv2_graph, 11)
    np.testing.assert_array_equal(mbv2_x86(x), G.reference(mbv2_graph, x))
    assert mbv2_x86._ready_input(x, mbv2_x86._in_array)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y.flat[7] = bad
        assert not mbv2_x86._ready_input(y, mbv2_x86._in_array)
        with pytest.raises(ConfigError, match="non-finite"):
            mbv2_x86(y)
    huge = x.copy()
    huge.flat[::2] = np.finfo(np.float32).max  # finite: the probe's sum must not overflow
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        assert mbv2_x86._ready_input(huge, mbv2_x86._in_array)
    np.testing.assert_array_equal(mbv2_x86(huge), G.reference(mbv2_graph, huge))
    assert not mbv2_x86._ready_input(x.astype(np.float64), mbv2_x86._in_array)
    assert not mbv2_x86._ready_input(np.asfortranarray(x), mbv2_x86._in_array)
    np.testing.assert_array_equal(mbv2_x86(x.astype(np.float64)), G.reference(mbv2_graph, x))
