"""The native driver (backends/tvm/driver.py): `main` calls one TIR function that calls every kernel on a planned
arena. Bit-exact against the reference integer executor and the same kernels run by the VM one by one."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np
import pytest
import tvm_graphs as G
from conftest import fresh, make_input, vm_calls, vm_pipeline

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


def test_dynamic_batch_keeps_the_vm_program(mbv2_dynamic, mbv2_graph):
    """A batch loop is not a straight line of static kernel calls: the VM program runs it, as before."""
    low = fresh(mbv2_dynamic)
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


def test_call_runs_the_driver_directly(mbv2_x86, mbv2_graph):
    """`__call__` calls the driver out of the VM on prepared tensors: outputs equal `main`'s and the reference's,
    the returned array is the caller's (not the driver's output buffer, unchanged by later calls), and a
    non-contiguous, float64 or big-endian input is still converted."""
    import tvm

    x = make_input(mbv2_graph, 21)
    y = mbv2_x86(x)
    assert mbv2_x86._driver is not None and mbv2_x86._ready is not None
    assert mbv2_x86.meta["driver"]["finite_checked"] == [0]
    assert not np.shares_memory(y, mbv2_x86._out_array) and y.flags.owndata
    # the short path's bound buffers (`_ready`: input, driver with its arguments, output) are the driver's own
    assert mbv2_x86._ready[3] is mbv2_x86._in_array and mbv2_x86._ready[5] is mbv2_x86._out_array
    assert not np.shares_memory(y, x) and not np.shares_memory(y, mbv2_x86._in_array)
    assert mbv2_x86(x) is not y
    via_main = mbv2_x86._native_vm()["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(y, via_main)
    np.testing.assert_array_equal(y, G.reference(mbv2_graph, x))
    kept = y.copy()
    y2 = mbv2_x86(make_input(mbv2_graph, 22))
    assert not np.array_equal(y2, kept)
    np.testing.assert_array_equal(y, kept)
    for other in (np.asfortranarray(x), x.astype(np.float64), x.astype(">f4"), x[..., ::-1][..., ::-1]):
        np.testing.assert_array_equal(mbv2_x86(other), kept)


def _with_non_finite(x: np.ndarray, values: tuple, positions: tuple):
    """Copies of `x` with one of `values` (NaN/inf) at one of the flat `positions`, every pair."""
    for bad in values:
        for pos in positions:
            y = x.copy()
            y.flat[pos] = bad
            yield y


def _assert_refused(low, y: np.ndarray) -> None:
    """`low` refuses `y`: `__call__` with the input check's ConfigError, the driver called directly with its own."""
    from qcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="non-finite"):
        low(y)
    np.copyto(low._in_array, y)
    with pytest.raises(Exception, match="non-finite"):
        low._driver(*low._driver_args)


def test_driver_refuses_non_finite_inputs_itself(mbv2_x86, mbv2_graph):
    """The driver checks its float input before any kernel runs (`driver.finite_check`): called directly or through
    the VM's `main` with a NaN or inf it fails, and `__call__` turns that into the ConfigError of the input check."""
    import tvm


    x = make_input(mbv2_graph, 23)
    mbv2_x86(x)
    for y in _with_non_finite(x, (np.nan, np.inf, -np.inf), (0, x.size // 2, x.size - 1)):
        _assert_refused(mbv2_x86, y)
        with pytest.raises(Exception, match="non-finite"):
            mbv2_x86._native_vm()["main"](tvm.runtime.tensor(y))
    np.testing.assert_array_equal(mbv2_x86(x), G.reference(mbv2_graph, x))


def test_input_quantize_checks_finiteness_in_place_of_the_driver(mbv2_x86, mbv2_graph, monkeypatch):
    """The input's quantize checks its NaN/inf (`driver.quantize_checks_input`, the default): the driver has no
    `qc_driver_finite0` call, the profiling twin no stamp for it, the outputs equal the reference's and a NaN or inf
    anywhere fails the driver as before; `QCOMPILE_FINITE_IN_QUANTIZE=0` keeps the separate check, same outputs."""
    from qcompile.backends.tvm.driver import ENV_FINITE_IN_QUANTIZE, finite_in_quantize
    from qcompile.backends.tvm.profile import Stamper
    from qcompile.errors import ConfigError

    x = make_input(mbv2_graph, 25)
    ref = G.reference(mbv2_graph, x)
    info = mbv2_x86.meta["driver"]
    assert info["finite_checked"] == [0] and info["finite_in_kernel"] == [0]
    np.testing.assert_array_equal(mbv2_x86(x), ref)  # a finite input in the bound buffer: the twin runs on it
    assert Stamper(mbv2_x86).names == info["calls"]
    monkeypatch.setenv(ENV_FINITE_IN_QUANTIZE, "0")
    sep = lower_integer_graph(mbv2_graph, "x86")
    assert sep.meta["driver"]["finite_checked"] == [0] and sep.meta["driver"]["finite_in_kernel"] == []
    np.testing.assert_array_equal(sep(x), ref)
    assert Stamper(sep).names == [f"{DRIVER_NAME}_finite0", *info["calls"]]
    for low in (mbv2_x86, sep):
        np.testing.assert_array_equal(low(x), ref)
        for y in _with_non_finite(x, (np.nan, -np.inf), (0, x.size // 2 + 3, x.size - 1)):
            _assert_refused(low, y)
        np.testing.assert_array_equal(low(x), ref)
    assert not finite_in_quantize()
    monkeypatch.delenv(ENV_FINITE_IN_QUANTIZE)
    assert finite_in_quantize()
    monkeypatch.setenv(ENV_FINITE_IN_QUANTIZE, "yes")
    with pytest.raises(ConfigError, match=ENV_FINITE_IN_QUANTIZE):
        finite_in_quantize()


@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_finite_check_on_the_bits(dtype, chunks):
    """`finite_check` passes the largest finite values, subnormals and signed zeros, and fails on NaN (either sign)
    and +-inf at the first, a middle and the last position (the vectorised loop's remainder included); in the
    parallel form too (3 chunks of 13, 13 and 11 values: each chunk's first and last position among them)."""
    import tvm

    from qcompile.backends.tvm.driver import finite_check
    from qcompile.backends.tvm.targets import resolve_target

    n = 37
    lib = tvm.tirx.build(tvm.IRModule({"chk": finite_check(n, dtype, "chk", chunks)}),
                         target=resolve_target("x86").target())
    check = lib["chk"]
    fi = np.finfo(dtype)
    ok = np.resize(np.array([fi.max, -fi.max, fi.smallest_subnormal, -fi.tiny, 0.0, -0.0, 1.5], dtype), n)
    check(tvm.runtime.tensor(ok))
    for bad in (np.nan, -np.nan, np.inf, -np.inf):
        for pos in (0, n // 2, n - 1, 12, 13, 25, 26):
            y = ok.copy()
            y[pos] = bad
            with pytest.raises(Exception, match="non-finite"):
                check(tvm.runtime.tensor(y))


def test_driver_through_main_where_not_called_directly(mbv2_x86, mbv2_graph, monkeypatch):
    """An output above `_COPY_OUT_MAX` bytes, or a library without `qc_driver_blob` (built before it), runs the
    driver through the VM's `main` as before: bit-exact, NaN refused from Python. (Each case on a fresh `Lowered`
    over the session's library: the driver is bound at the first call.)"""
    from qcompile.backends.tvm import driver, lowered
    from qcompile.errors import ConfigError

    x = make_input(mbv2_graph, 24)
    ref = G.reference(mbv2_graph, x)
    low = fresh(mbv2_x86)
    with monkeypatch.context() as m:
        m.setattr(lowered, "_COPY_OUT_MAX", 0)
        np.testing.assert_array_equal(low(x), ref)
        assert low._driver is None and low._ready is None
    again = fresh(mbv2_x86)
    monkeypatch.setattr(driver, "DRIVER_BLOB_NAME", "qc_not_there")
    y = again(x)
    assert again._driver is None
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(again(x + 1), G.reference(mbv2_graph, x + 1))
    np.testing.assert_array_equal(y, ref)  # the VM's fresh output tensor, not reused
    bad = x.copy()
    bad.flat[3] = np.nan
    with pytest.raises(ConfigError, match="non-finite"):
        again(bad)


def test_call_minus_driver_probe(mbv2_x86, monkeypatch):
    """`benchmarks.overhead.call_minus_driver` (`--probe DIR`) times `__call__`, the driver and the input copy in
    interleaved rounds and reports their difference; a lowering whose `__call__` runs VM `main` is refused."""
    from benchmarks.overhead import call_minus_driver
    from qcompile.backends.tvm import lowered

    low = fresh(mbv2_x86)
    res = call_minus_driver(low, rounds=3, calls=5)
    assert set(res["min_us"]) == {"call", "driver", "input_copy"}
    assert all(v > 0 for v in res["min_us"].values())
    assert res["call_minus_driver_min_us"] == res["min_us"]["call"] - res["min_us"]["driver"]
    assert res["input_bytes"] == 4 * int(np.prod(low.input_shape)) and 0 <= res["input_mod_64"] < 64
    monkeypatch.setattr(lowered, "_COPY_OUT_MAX", 0)
    with pytest.raises(ValueError, match="does not call the native driver"):
        call_minus_driver(fresh(mbv2_x86), rounds=1, calls=1)


def test_arena_affine_reuse_alternates_a_blocks_buffers(monkeypatch):
    """`reuse="affine"`: never two live tensors on one byte (random lifetimes); in a chain of inverted-residual
    blocks (expand E -> depthwise D -> project P) each depthwise output after the first lands on the bytes the
    previous depthwise read (the previous E's output), where first fit puts every one on the bytes the previous P
    read; the environment knob is validated."""
    from qcompile.backends.tvm import driver
    from qcompile.errors import ConfigError

    rng = np.random.default_rng(2)
    kinds = ["a", "b", "c"]
    for _ in range(40):
        slots = []
        for _ in range(int(rng.integers(1, 30))):
            first = int(rng.integers(0, 30))
            slots.append(_Slot("arena", nbytes=int(rng.integers(1, 5000)), first=first,
                               last=first + int(rng.integers(0, 5)), writer=str(rng.choice(kinds)),
                               reader=str(rng.choice(kinds))))
        size = _first_fit(slots, reuse="affine")
        for i, a in enumerate(slots):
            assert a.offset % ALIGN == 0 and a.offset + a.nbytes <= size
            for b in slots[i + 1:]:
                if a.first <= b.last and b.first <= a.last:
                    assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset

    def blocks(reuse):
        slots = []
        for k in range(4):
            slots += [_Slot("arena", nbytes=75264, first=3 * k, last=3 * k + 1, writer="E", reader="D"),
                      _Slot("arena", nbytes=75264, first=3 * k + 1, last=3 * k + 2, writer="D", reader="P"),
                      _Slot("arena", nbytes=12544, first=3 * k + 2, last=3 * k + 3, writer="P", reader="E")]
        _first_fit(slots, reuse=reuse)
        return slots

    aff, first = blocks("affine"), blocks("first")
    for k in range(1, 4):
        assert aff[3 * k + 1].offset == aff[3 * (k - 1)].offset  # D_k on E_(k-1)'s bytes (read by D_(k-1))
        assert first[3 * k + 1].offset == first[3 * (k - 1) + 1].offset  # first fit: on D_(k-1)'s (read by P)
    monkeypatch.delenv(driver.ENV_ARENA_REUSE, raising=False)
    assert driver.arena_reuse() == "affine"  # the default since session 15's 2-thread measurement
    monkeypatch.setenv(driver.ENV_ARENA_REUSE, "first")
    assert driver.arena_reuse() == "first"
    monkeypatch.setenv(driver.ENV_ARENA_REUSE, "lru")
    with pytest.raises(ConfigError, match=driver.ENV_ARENA_REUSE):
        driver.arena_reuse()


def _relax_module(ig, pipeline=None):
    """The module `lower_integer_graph(ig, "x86", pipeline=pipeline)` hands to `relax.build`."""
    from qcompile.backends.tvm.emitter import emit_relax
    from qcompile.backends.tvm.pipeline import build_pass, default_pipeline
    from qcompile.backends.tvm.targets import resolve_target

    tgt = resolve_target("x86").target()
    return build_pass(pipeline or default_pipeline(tgt), tgt)(emit_relax(ig, tgt, None, "float32").mod)


def _packed_pipeline():
    """The default pipeline with the driver calling every kernel through its packed API (`direct_calls=False`)."""
    import dataclasses
    import functools

    from qcompile.backends.tvm.pipeline import default_pipeline, finalize_passes

    return dataclasses.replace(default_pipeline(), finalize=functools.partial(finalize_passes, direct_calls=False))


@pytest.fixture(scope="module")
def mbv2_packed(mbv2_graph):
    return lower_integer_graph(mbv2_graph, "x86", pipeline=_packed_pipeline())


def _llvm_source(low):
    return next(m.inspect_source("ll") for m in low._exec.mod.imports if m.kind == "llvm")


def test_driver_calls_the_kernel_bodies_directly(mbv2_x86, mbv2_packed, mbv2_graph):
    """By default the driver calls each kernel's `direct_body` (a private PrimFunc of data pointers: no exported
    symbol, so no packed-API argument checks) in the order of `meta["driver"]["calls"]`, and nothing through
    `tvm_call_cpacked` (the input's quantize checks its NaN/inf, no `finite_check` call); each body is compiled
    as its own noinline LLVM function with noalias, 64-byte aligned pointers (its compute scope,
    `DirectBodyDevice`), which the driver calls; each exported kernel calls the same body and is still in the
    library (the per-kernel table). `direct_calls=False` calls every kernel through its packed API. Both builds
    are bit-exact with the reference executor."""
    import re

    from qcompile.backends.tvm.driver import DIRECT_BODY_ATTR, DIRECT_SUFFIX, UNALIGNED_ATTR
    from qcompile.backends.tvm.lowered import _find_function_module

    calls = mbv2_x86.meta["driver"]["calls"]
    assert mbv2_packed.meta["driver"]["calls"] == calls
    packed = _relax_module(mbv2_graph, _packed_pipeline())
    script = packed[packed.get_global_var(DRIVER_NAME)].script()
    # the input's NaN/inf check is in its quantize (`driver.quantize_checks_input`): no call of its own
    assert re.findall(r'call_cpacked\("(\w+)"', script) == calls
    assert DIRECT_SUFFIX not in script

    mod = _relax_module(mbv2_graph)
    script = mod[mod.get_global_var(DRIVER_NAME)].script()
    assert re.findall(rf"\b(\w+){DIRECT_SUFFIX}\(", script) == calls
    assert re.findall(r'call_cpacked\("(\w+)"', script) == []
    bodies = {gv.name_hint: f for gv, f in mod.functions.items() if f.attrs is not None and DIRECT_BODY_ATTR in f.attrs}
    assert set(bodies) == {s + DIRECT_SUFFIX for s in calls}
    assert all("global_symbol" not in f.attrs and f.attrs["tirx.noalias"] for f in bodies.values())
    for sym in set(calls):
        assert f"{sym}{DIRECT_SUFFIX}(" in mod[mod.get_global_var(sym)].script()
        assert _find_function_module(mbv2_x86._exec.mod, sym) is not None
        assert _find_function_module(mbv2_x86._exec.mod, sym + DIRECT_SUFFIX) is None
    ll = _llvm_source(mbv2_x86)
    # the input's reader (the quantize) takes it unaligned (the caller's array, `Lowered.__call__`'s zero copy)
    loose = {name: [int(i) for i in f.attrs[UNALIGNED_ATTR]] for name, f in bodies.items() if UNALIGNED_ATTR in f.attrs}
    assert loose == {calls[0] + DIRECT_SUFFIX: [0]}
    for sym in set(calls):
        head = re.search(rf"define internal [^@\n]*@{sym}{DIRECT_SUFFIX}_compute_\((.*)\) \w+ #(\d+)", ll)
        assert head is not None, sym
        params = [p for p in head.group(1).split(", ") if p.startswith("ptr")]
        assert params and all("noalias" in p for p in params), head.group(0)
        assert [j for j, p in enumerate(params) if "align 64" not in p] == loose.get(sym + DIRECT_SUFFIX, []), \
            head.group(0)
        assert re.search(rf"^attributes #{head.group(2)} = {{[^}}]*\bnoinline\b", ll, re.M), sym
    # the driver calls every body (inlined, a body is its call of its compute function), none inlined further
    start = re.search(rf"^define [^@\n]*@{DRIVER_NAME}_compute_\(", ll, re.M).start()
    driver_ll = ll[start:ll.index("\n}\n", start)]
    assert re.findall(rf"call [^@\n]*@(\w+){DIRECT_SUFFIX}_compute_\(", driver_ll) == calls
    assert set(calls) <= {row["name"] for row in mbv2_x86.benchmark(repeat=2).kernels}
    for seed in (31, 32):
        x = make_input(mbv2_graph, seed)
        ref = G.reference(mbv2_graph, x)
        np.testing.assert_array_equal(mbv2_x86(x), ref)
        np.testing.assert_array_equal(mbv2_packed(x), ref)


@pytest.mark.parametrize("seq", ["RLR", "LRLR", "LRL"])
def test_direct_calls_keep_kernel_order(seq):
    """Kernels that hand bytes to each other through the arena stay exact with direct calls: a lut between two
    calls of one rescale (254 of 256 values wrong while LLVM inlined the bodies into the driver, where TVM's
    per-buffer TBAA tags let GVN reuse the first rescale's loads across the lut's stores), and the other orders;
    against the reference and the packed build."""
    import torch

    from qcompile import ops
    from qcompile.ops.graph import IntegerGraphBuilder

    b = IntegerGraphBuilder()
    table = b.const(torch.arange(255, -1, -1, dtype=torch.int32).to(torch.uint8))
    y = b.call(ops.quantize, b.input("x"), 1 / 0.05, 128.5, 255)
    for op in seq:
        y = b.call(ops.lut, y, table) if op == "L" else b.call(
            ops.rescale, y, multiplier=(1 << 16) | 777, offset=(1 << 15) - 9 * (1 << 16), shift=16, lo=0, hi=255)
    ig = b.build(y, {"input_shape": [1, 4, 8, 8]})
    direct = lower_integer_graph(ig, "x86")
    packed = lower_integer_graph(ig, "x86", pipeline=_packed_pipeline())
    for seed in (3, 4):
        x = make_input(ig, seed)
        ref = G.reference(ig, x)
        np.testing.assert_array_equal(direct(x), ref)
        np.testing.assert_array_equal(packed(x), ref)


def test_direct_calls_free_their_workspace(mbv2_x86, mbv2_graph):
    """Kernels whose scratch buffers exceed TVM's 1 KiB stack limit allocate them from the workspace pool inside
    their direct bodies (`DirectBodyDevice`) and free them before returning: 3,000 calls leave the process's peak
    memory where it was (with the `return 0` inside the device scope the frees never ran: 44 MB over 3,000 calls,
    ~15 KB of scratch per call here)."""
    import resource

    x = make_input(mbv2_graph, 33)
    ref = G.reference(mbv2_graph, x)
    for _ in range(200):
        mbv2_x86(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3000):
        mbv2_x86._driver(*mbv2_x86._driver_args)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 2048, f"peak memory grew {grown_kb} KB over 3000 calls"
    np.testing.assert_array_equal(mbv2_x86(x), ref)


def _zero_copy(low, tmp_path, monkeypatch):
    """`low` exported and loaded again with the zero-copy input from any size on (`ZERO_COPY_MIN_BYTES = 0`)."""
    from qcompile.backends.tvm import lowered

    low.export(tmp_path / "zc")
    monkeypatch.setattr(lowered, "ZERO_COPY_MIN_BYTES", 0)
    return load(tmp_path / "zc")


def test_zero_copy_input_at_every_offset(mbv2_x86, mbv2_graph, tmp_path, monkeypatch):
    """With direct calls the driver takes its float input unaligned (`driver.DRIVER_INPUT_ALIGN_ATTR`: the element
    size), so `__call__` hands it the caller's array (`lowered.ZERO_COPY_MIN_BYTES`): at every 4-byte offset from
    0 to 60 past a 64-byte boundary the outputs equal the reference's and the copy path's, the bound input buffer
    is never written (no copy happened) and neither is the caller's array or the bytes around it. A read-only
    array (numpy exports none through DLPack) and one off its element alignment take the copy path, bit-exact
    too."""
    from qcompile.backends.tvm.driver import aligned_empty

    assert mbv2_x86.meta["driver"]["input_align"] == 4
    low = _zero_copy(mbv2_x86, tmp_path, monkeypatch)
    x = make_input(mbv2_graph, 41)
    ref = G.reference(mbv2_graph, x)
    np.testing.assert_array_equal(low(x), ref)
    assert low._ready is not None and low._ready[6] is not None
    sentinel = np.full(low._in_array.shape, 7.25, np.float32)
    np.copyto(low._in_array, sentinel)
    base = aligned_empty((x.size + 32,), np.dtype(np.float32))
    for off in range(16):  # bytes 0, 4, ..., 60 past the boundary
        base[...] = -3.5
        view = base[off:off + x.size].reshape(x.shape)
        view[...] = x
        assert view.ctypes.data % 64 == 4 * off and view.flags.c_contiguous
        before = base.copy()
        y = low(view)
        np.testing.assert_array_equal(y, ref, err_msg=f"offset {4 * off}")
        np.testing.assert_array_equal(base, before)
        np.testing.assert_array_equal(low._in_array, sentinel)  # zero copy: the bound buffer untouched
    other = make_input(mbv2_graph, 42)
    view[...] = other
    np.testing.assert_array_equal(low(view), G.reference(mbv2_graph, other))
    np.testing.assert_array_equal(low(view), mbv2_x86(other.copy()))
    frozen = x.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(low(frozen), ref)
    np.testing.assert_array_equal(low._in_array, x)  # copied: read-only arrays take the copy path
    raw = np.zeros(x.nbytes + 8, np.uint8)
    odd = np.frombuffer(raw.data, np.float32, x.size, offset=1).reshape(x.shape)  # read-only, not 4-byte aligned
    raw[1:1 + x.nbytes] = x.view(np.uint8).reshape(-1)
    assert not odd.flags.aligned
    np.testing.assert_array_equal(low(odd), ref)


def test_zero_copy_input_refuses_non_finite_values(mbv2_x86, mbv2_graph, tmp_path, monkeypatch):
    """A NaN or inf in an array the driver takes where it lies (misaligned here) raises the same ConfigError as
    the copy path, and the next finite call is bit-exact."""
    from qcompile.backends.tvm.driver import aligned_empty
    from qcompile.errors import ConfigError

    low = _zero_copy(mbv2_x86, tmp_path, monkeypatch)
    x = make_input(mbv2_graph, 43)
    base = aligned_empty((x.size + 16,), np.dtype(np.float32))
    view = base[5:5 + x.size].reshape(x.shape)
    view[...] = x
    np.testing.assert_array_equal(low(view), G.reference(mbv2_graph, x))  # binds the driver
    for bad in (np.nan, np.inf, -np.inf):
        for pos in (0, x.size // 2, x.size - 1):
            view[...] = x
            view.flat[pos] = bad
            with pytest.raises(ConfigError, match="non-finite"):
                low(view)
            assert low._ready[6] is not None
    view[...] = x
    np.testing.assert_array_equal(low(view), G.reference(mbv2_graph, x))


def test_zero_copy_only_where_the_driver_takes_unaligned_inputs(mbv2_packed, mbv2_x86, mbv2_graph, tmp_path,
                                                               monkeypatch):
    """Packed kernel calls assume 64-byte aligned buffers (their packed API marks them): that driver needs aligned
    inputs (`input_align` 64) and `__call__` keeps copying; below `ZERO_COPY_MIN_BYTES` the default build copies
    too."""
    from qcompile.backends.tvm import lowered

    assert mbv2_packed.meta["driver"]["input_align"] == 64
    low = _zero_copy(mbv2_packed, tmp_path, monkeypatch)
    x = make_input(mbv2_graph, 44)
    np.testing.assert_array_equal(low(x), G.reference(mbv2_graph, x))
    assert low._ready is not None and low._ready[6] is None
    monkeypatch.setattr(lowered, "ZERO_COPY_MIN_BYTES", x.nbytes + 1)
    mbv2_x86.export(tmp_path / "small")
    small = load(tmp_path / "small")
    np.testing.assert_array_equal(small(x), G.reference(mbv2_graph, x))
    assert small._ready[6] is None


def test_call_minus_driver_probe_times_the_zero_copy_path(mbv2_x86, tmp_path, monkeypatch):
    """Where `__call__` takes the caller's array, the probe also times the copy path (`call_copy`, a read-only
    view) and the driver on the caller's array (`driver_zero_copy`), in the same rounds."""
    from benchmarks.overhead import call_minus_driver

    low = _zero_copy(mbv2_x86, tmp_path, monkeypatch)
    res = call_minus_driver(low, rounds=2, calls=3)
    assert res["zero_copy"] is True
    assert set(res["min_us"]) == {"call", "driver", "input_copy", "call_copy", "driver_zero_copy"}
    assert all(v > 0 for v in res["median_us"].values())


def test_thread_pool_benchmark_runs_each_setting_in_its_own_process(mbv2_x86, tmp_path):
    """`benchmarks.thread_pool.measure`: one process per setting, each seeing exactly its pool variables (TVM reads
    them once, at pool start) and the thread count asked for, every round giving each setting its samples."""
    from benchmarks.thread_pool import measure

    path = str(mbv2_x86.export(tmp_path / "low"))
    res = measure([path], ["default", "bind=0", "spin=3000"], threads=2, rounds=2, samples=2, burst=3,
                  settle_ms=1.0, lead_in_ms=1.0)[path]
    assert res["default"]["env"] == {"TVM_BIND_THREADS": None, "TVM_THREAD_POOL_SPIN_COUNT": None,
                                     "TVM_NUM_THREADS": "2"}
    assert res["bind=0"]["env"] == {"TVM_BIND_THREADS": "0", "TVM_THREAD_POOL_SPIN_COUNT": None,
                                    "TVM_NUM_THREADS": "2"}
    assert res["spin=3000"]["env"]["TVM_THREAD_POOL_SPIN_COUNT"] == "3000"
    for v in res.values():
        assert len(v["sample"]) == 4 and len(v["burst"]) == 2 and min(v["sample"] + v["burst"]) > 0


def _vm_flags(addr: int) -> list[str]:
    """The `VmFlags` of this process's mapping holding `addr` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= addr < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def _thp_available() -> bool:
    import os

    return os.path.exists("/proc/self/smaps") and os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")


def test_huge_empty_is_aligned_zeroed_and_advised():
    """`huge_empty`: a zeroed array of exactly the bytes asked, at a `HUGE_PAGE` boundary, in a mapping advised
    `MADV_HUGEPAGE` (smaps' `hg` flag, madvise(2)); a bad size is a `ConfigError` naming it."""
    from qcompile.backends.tvm.driver import HUGE_PAGE, huge_empty
    from qcompile.errors import ConfigError

    for n in (1, 64, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 5):
        a = huge_empty(n)
        assert a.dtype == np.uint8 and a.shape == (n,) and a.ctypes.data % HUGE_PAGE == 0 and a.flags.writeable
        assert not a.any()
        a[-1] = 7  # the last byte is ours
        if _thp_available():
            assert "hg" in _vm_flags(a.ctypes.data)
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="nbytes"):
            huge_empty(bad)


def test_driver_blob_and_arena_on_huge_pages(mbv2_x86, mbv2_graph, tmp_path, monkeypatch):
    """With `QCOMPILE_HUGE_PAGES=1` `__call__` binds the driver's constant blob, copied byte for byte from the
    library's, and its arena at 2 MiB boundaries in mappings advised `MADV_HUGEPAGE`; by default (unset) and with
    "0" the blob is the library's constant itself and the arena a plain 64-byte aligned buffer. Outputs equal the
    reference executor's either way, on several inputs; a bad setting is a `ConfigError` naming the variable at
    the first call."""
    from qcompile.backends.tvm.driver import DRIVER_BLOB_NAME, ENV_HUGE_PAGES, HUGE_PAGE
    from qcompile.errors import ConfigError

    path = mbv2_x86.export(tmp_path / "lib")
    lows = {}
    for setting in ("1", "0", None):
        if setting is None:
            monkeypatch.delenv(ENV_HUGE_PAGES)
        else:
            monkeypatch.setenv(ENV_HUGE_PAGES, setting)
        lows[setting] = load(path)
        lows[setting](make_input(mbv2_graph, 0))  # binds under the setting
    on, off = lows["1"], lows["0"]
    default = np.from_dlpack(lows[None]._driver_args[1])
    assert default.ctypes.data == np.from_dlpack(lows[None]._native_vm()[DRIVER_BLOB_NAME]()).ctypes.data
    blob_on, arena_on = (np.from_dlpack(on._driver_args[i]) for i in (1, 3))
    blob_off, arena_off = (np.from_dlpack(off._driver_args[i]) for i in (1, 3))
    vm_blob = np.from_dlpack(on._native_vm()[DRIVER_BLOB_NAME]())
    assert blob_on.ctypes.data % HUGE_PAGE == 0 and arena_on.ctypes.data % HUGE_PAGE == 0
    assert blob_on.nbytes == vm_blob.nbytes == on.meta["driver"]["blob_bytes"]
    assert arena_on.nbytes == arena_off.nbytes == on.meta["driver"]["arena_bytes"]
    np.testing.assert_array_equal(blob_on, vm_blob)
    assert not np.shares_memory(blob_on, vm_blob)
    assert blob_off.ctypes.data == np.from_dlpack(off._native_vm()[DRIVER_BLOB_NAME]()).ctypes.data
    assert arena_off.ctypes.data % ALIGN == 0
    if _thp_available():
        assert "hg" in _vm_flags(blob_on.ctypes.data) and "hg" in _vm_flags(arena_on.ctypes.data)
        assert "hg" not in _vm_flags(arena_off.ctypes.data)
    for seed in range(1, 4):
        x = make_input(mbv2_graph, seed, scale=1.0 + seed)
        want = G.reference(mbv2_graph, x)
        np.testing.assert_array_equal(on(x), want)
        np.testing.assert_array_equal(off(x), want)
    monkeypatch.setenv(ENV_HUGE_PAGES, "yes")
    bad = load(path)
    with pytest.raises(ConfigError, match=ENV_HUGE_PAGES):
        bad(make_input(mbv2_graph, 0))
