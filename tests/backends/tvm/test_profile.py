"""The native driver's profiling twin (`driver.PROFILE_NAME`) and `Lowered.profile` (backends/tvm/profile.py):
one row per driver call in order, stamps consistent with the call timed from Python, outputs unchanged."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tvm_graphs as G
from conftest import make_input, vm_pipeline

from qcompile.backends.tvm import lower_integer_graph
from qcompile.backends.tvm.driver import DRIVER_NAME, PROFILE_NAME
from qcompile.errors import ConfigError, LoweringError


def test_profile_rows_follow_the_driver_and_add_up(mbv2_x86, mbv2_graph):
    """Rows: every kernel the driver calls, in its order (the input's NaN/inf check is in its quantize,
    `driver.quantize_checks_input`; test_driver.py checks a separate check's row), each kernel with its time alone;
    every in-network time positive; the stamped network (first stamp to last) no longer than the plain driver
    timed from Python around its call, and not less than half of it (the call's entry and return are ~1 us of the
    demo's ~10); the TSC rate plausible; the output afterwards still the reference's."""
    x = make_input(mbv2_graph, 31)
    prof = mbv2_x86.profile(x, repeat=30)
    calls = mbv2_x86.meta["driver"]["calls"]
    assert [r.symbol for r in prof.rows] == calls
    assert [r.index for r in prof.rows] == list(range(len(calls)))
    assert all(r.network_min_us > 0 and r.network_median_us >= r.network_min_us for r in prof.rows)
    assert all(r.isolated_us is not None and r.isolated_us > 0 for r in prof.rows)
    assert 0.5 * prof.call_min_us <= prof.stamped_min_us <= 1.05 * prof.call_min_us
    assert sum(r.network_min_us for r in prof.rows) <= prof.stamped_min_us * (1 + 1e-9)
    # kernels alone and in this small network: same order of magnitude (both minima)
    assert 0.5 * prof.isolated_sum_us <= prof.stamped_min_us <= 3 * prof.isolated_sum_us + 5
    assert 0.5e9 < prof.tsc_hz < 10e9 and prof.repeat == 30 and prof.threads >= 1
    table = prof.table(top=3)
    assert table.count("\n| ") == 3 and "TSC" in table  # the 3 rows of largest delta, largest first
    worst = max((r for r in prof.rows if r.delta_us is not None), key=lambda r: r.delta_us)
    assert table.split("\n")[2].startswith(f"| {worst.index} | {worst.symbol} |")
    np.testing.assert_array_equal(mbv2_x86(x), G.reference(mbv2_graph, x))


def test_profiling_twin_computes_the_drivers_output(mbv2_x86, mbv2_graph):
    """The twin writes the same output as the driver (bit-exact with the reference) and one increasing stamp per
    call + 1; its stamps span at least a sleep inserted between two of its runs (the counter counts time)."""
    import tvm

    from qcompile.backends.tvm.driver import aligned_empty
    from qcompile.backends.tvm.profile import _twin

    x = make_input(mbv2_graph, 32)
    ref = G.reference(mbv2_graph, x)
    mbv2_x86(x)
    twin = _twin(mbv2_x86)
    info = mbv2_x86.meta["driver"]
    n = len(info["calls"]) + len(set(info["finite_checked"]) - set(info["finite_in_kernel"]))  # calls, checks included
    stamps = aligned_empty((n + 1,), np.dtype(np.int64))
    stamps[:] = 0
    mbv2_x86._out_array[...] = 0
    twin(*mbv2_x86._driver_args, tvm.runtime.from_dlpack(stamps))
    np.testing.assert_array_equal(mbv2_x86._out_array, ref)
    assert (np.diff(stamps) > 0).all()
    first = int(stamps[0])
    t = time.perf_counter()
    time.sleep(0.02)
    twin(*mbv2_x86._driver_args, tvm.runtime.from_dlpack(stamps))
    secs = time.perf_counter() - t
    assert int(stamps[0]) - first >= 0.02 * 0.5e9 and secs >= 0.02


def test_profile_refuses_what_it_cannot_time(mbv2_graph, mbv2_x86):
    """No native driver (one VM instruction per kernel): LoweringError saying so; a bad `repeat`: ConfigError."""
    vm = lower_integer_graph(mbv2_graph, "x86", pipeline=vm_pipeline())
    with pytest.raises(LoweringError, match="no native driver"):
        vm.profile(make_input(mbv2_graph, 1))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="repeat"):
            mbv2_x86.profile(make_input(mbv2_graph, 1), repeat=bad)


def test_only_x86_libraries_get_the_twin(mbv2_graph, mbv2_x86, mbv2_arm):
    """`llvm.readcyclecounter` is `rdtsc` on x86-64 but a trapping PMU read on AArch64: only x86 targets get it
    (an arm_cpu library has a driver without the twin, and `profile` says so)."""
    import tvm

    from qcompile.backends.tvm.driver import _x86_target
    from qcompile.backends.tvm.targets import resolve_target

    with resolve_target("x86").target():
        assert _x86_target()
    with resolve_target("arm_cpu").target():
        assert not _x86_target()
    with tvm.target.Target("c"):
        assert not _x86_target()
    assert PROFILE_NAME != DRIVER_NAME
    assert mbv2_x86.meta["driver"]["profile"] is True
    arm = mbv2_arm
    assert arm.meta["driver"] is not None and arm.meta["driver"]["profile"] is False
    with pytest.raises(LoweringError, match="without the profiling driver"):
        arm.profile(make_input(mbv2_graph, 1))


def test_network_profile_compare_binds_each_library_under_its_env(mbv2_x86, tmp_path, monkeypatch, capsys):
    """`benchmarks.network_profile --compare ... --env NAME:VAR=VALUE`: one export compared under two runtime
    settings (here `QCOMPILE_HUGE_PAGES`), each library bound under its own and the variable restored after; the
    outputs were checked equal. A malformed entry or an unknown library name is a `ConfigError` naming `--env`."""
    import qcompile.api as qc
    from benchmarks import network_profile as npf
    from qcompile.backends.tvm.driver import ENV_HUGE_PAGES, HUGE_PAGE

    path = mbv2_x86.export(tmp_path / "lib")
    monkeypatch.delenv(ENV_HUGE_PAGES, raising=False)
    seen = {}
    load = qc.load

    def spy(p):
        low = load(p)
        orig = low._bind_driver

        def bind():
            orig()
            seen[len(seen)] = np.from_dlpack(low._driver_args[1]).ctypes.data % HUGE_PAGE == 0

        low._bind_driver = bind
        return low

    monkeypatch.setattr(qc, "load", spy)
    res = npf.compare([f"old={path}", f"new={path}"], rounds=2, repeat=2, top=3, envs=[f"new:{ENV_HUGE_PAGES}=1"])
    assert seen == {0: False, 1: True}  # old on 4 KiB pages (the default), new on huge pages
    assert ENV_HUGE_PAGES not in os.environ
    assert set(res) == {"old", "new"} and res["old"]["calls"] == res["new"]["calls"]
    assert "outputs equal" in capsys.readouterr().out
    for bad in (["old=QCOMPILE_HUGE_PAGES=0"], ["old:QCOMPILE_HUGE_PAGES"], ["other:X=1"]):
        with pytest.raises(ConfigError, match="--env"):
            npf.compare([f"old={path}"], rounds=1, repeat=1, top=1, envs=bad)
