"""One worker process per runtime (qcompile.bench.workers): a spinning neighbour does not inflate an isolated
runner, failures of a worker stay in its row, no process outlives the harness, and real peers give the same
fidelity numbers isolated as in one process."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

from qcompile.bench import BenchOptions, RunnerSpec, run_bench, time_isolated
from qcompile.bench.harness import _cpu_snapshot, _other_load
from qcompile.bench.report import to_markdown
from qcompile.errors import ConfigError
from tests.bench import spawn_helpers as H

X = np.zeros((1, 4), dtype=np.float32)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _median_ms(samples) -> float:
    assert isinstance(samples, list), samples
    return float(np.median(samples)) * 1e3


def _work_cpu_ms(rounds: int, calls: int = 3) -> float:
    """CPU time of `rounds` of the runners' work on this thread (thread time: unaffected by competing processes)."""
    times = []
    for _ in range(calls):
        c = time.thread_time()
        H._work(rounds)
        times.append(time.thread_time() - c)
    return min(times) * 1e3


def test_spinning_neighbour_does_not_inflate_an_isolated_runner():
    load = os.getloadavg()[0]  # before our own spinning threads add to it
    # ~20 ms of work per call: long enough that a freshly woken thread's scheduler credit does not cover it
    normal = RunnerSpec("normal", H.busy, (8,))
    # 4 threads spin 150 ms after every call of the neighbour: 5 runnable threads on this machine's cores
    spin = RunnerSpec("spinner", H.spinner, (150.0, 4))
    kw = dict(repeats=12, warmup=2, threads=1)
    solo = time_isolated({"normal": normal}, X, settle_s=0.4, lead_in=1, **kw)
    before = _cpu_snapshot()
    mixed = time_isolated({"spinner": spin, "normal": normal}, X, settle_s=0.4, lead_in=1, **kw)
    others = _other_load(before, _cpu_snapshot()).get("other_load_cores", 0.0)
    raw = time_isolated({"spinner": spin, "normal": normal}, X, settle_s=0.0, lead_in=0, **kw)
    base = _median_ms(solo.samples["normal"])
    cpu = _work_cpu_ms(8)
    if base > 1.3 * cpu:
        # The premise is our 5 runnable threads on otherwise quiet cores (beside at most the sibling xdist worker).
        # Other processes starve the spinner, so its spin may not overlap a probe: measured beside training
        # processes, settle waits of 2-15 ms, and a raw control inflated 1.6x instead of 2.5-5x.
        pytest.skip(f"the solo runner took {base:.0f} ms per call for {cpu:.0f} ms of CPU work: the machine is busy")
    if others > 1.2:
        # Same premise, checked where it matters: beyond the sibling xdist worker (one core at most), other
        # processes took cores during the isolated run, so a settle wait cannot make the cores free (measured
        # beside four niced engineers' builds: 2 cores of others, the isolated median inflated 4.7x).
        pytest.skip(f"other processes used {others:.2f} cores during the isolated run: the machine is busy")
    if load > 2 * (os.cpu_count() or 2):
        # Same premise over the minute before the test (the xdist workers are at most one runnable thread each):
        # failed once at 0.06 s of settle waits beside a 2-process predictor collection and a lowering, load ~5
        pytest.skip(f"load average {load:.1f} on {os.cpu_count()} cores: the machine is busy")
    # the settle step waits for every worker's threads: the spinner's 150 ms show up as waits, not in samples
    # (medians: on a loaded machine a niced spinner may not be scheduled yet at the first probe, so a sample
    # or two can still be hit; measured here: all 12 raw samples 2.5-5x, 0-2 of the isolated ones)
    assert max(mixed.settle_waits) >= 0.1, (mixed.settle_waits, others, load)
    assert _median_ms(mixed.samples["normal"]) < 1.5 * base, (mixed.samples["normal"], solo.samples["normal"])
    # control: without the settle step the spinning neighbour takes the cores (so the check above can fail)
    assert _median_ms(raw.samples["normal"]) > 1.8 * base, (raw.samples["normal"], solo.samples["normal"])
    for run in (solo, mixed, raw):
        assert all(w["isolation"] == "process" and w["threads"] == 1 for w in run.workers.values())
        assert all(_gone(w["pid"]) for w in run.workers.values())
    assert multiprocessing.active_children() == []


def test_failing_workers_become_row_statuses_and_are_reaped():
    seen: list[tuple[str, int]] = []
    runners = {
        "ok": RunnerSpec("ok", H.busy, (1,)),
        "broken": RunnerSpec("broken", H.broken_factory, ("no kernel for this shape",)),
        "exits": RunnerSpec("exits", H.dies_on_call, (3, "exit")),
        "killed": RunnerSpec("killed", H.dies_on_call, (3, "kill")),
        "raises": RunnerSpec("raises", H.raises_on_call, (3,)),
        "unpicklable": RunnerSpec("unpicklable", lambda: H.busy(1)),
        "plain": lambda x: x + 1,
    }
    run = time_isolated(runners, X, repeats=4, warmup=1, hook=lambda n, r, dt: seen.append((n, r)), threads=1,
                        settle_s=0.05, lead_in=0, timeout_s=120)
    s = run.samples
    assert s["broken"] == "failed: ValueError: no kernel for this shape"
    assert s["exits"] == "failed: worker exited with code 7"
    assert s["killed"] == "failed: worker exited with code -9 (SIGKILL)"
    assert s["raises"] == "failed: RuntimeError: kernel missing"
    assert s["unpicklable"].startswith("failed: runner spec cannot be sent to a worker process")
    # call 1 fetches the output, call 2 is round 0's timed call, call 3 (round 1) kills the process
    assert [r for n, r in seen if n in ("exits", "killed", "raises")] == [0, 0, 0]
    assert len(s["ok"]) == 4 and len(s["plain"]) == 4 and all(v > 0 for v in s["ok"] + s["plain"])
    np.testing.assert_array_equal(run.outputs["plain"], X + 1)
    np.testing.assert_array_equal(run.outputs["ok"], X + H._work(1))  # the first call's output, from the worker
    assert set(run.outputs) == {"ok", "plain"}
    assert run.workers["plain"] == {"isolation": "in-process", "pid": os.getpid(), "threads": 1}
    pids = [w["pid"] for n, w in run.workers.items() if n != "plain"]
    assert len(set(pids)) == 5 and os.getpid() not in pids and all(_gone(p) for p in pids)
    assert multiprocessing.active_children() == []


def test_keyboard_interrupt_still_stops_every_worker():
    def interrupt(name, r, dt):
        if r == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        time_isolated({"a": RunnerSpec("a", H.busy, (1,)), "b": RunnerSpec("b", H.spinner, (50.0, 1))}, X,
                      repeats=5, warmup=1, hook=interrupt, threads=1, settle_s=0.05)
    assert multiprocessing.active_children() == []


def test_real_peers_isolated_equal_in_process(tiny_model, tiny_input):
    runners = {"broken": RunnerSpec("broken", H.broken_factory, ("no kernel",)), "plain": lambda x: 2 * x}
    res = {}
    for iso in ("process", "none"):
        opts = BenchOptions(threads=1, repeats=2, warmup=1, settle_ms=50, peers=("torch_fp32", "ort_fp32"),
                            isolation=iso)
        res[iso] = run_bench(tiny_model, tiny_input, runners=runners, options=opts)
    p, n = res["process"].by_name(), res["none"].by_name()
    for name in ("torch_fp32", "ort_fp32"):
        assert p[name].status == "ok" and p[name].n == 2 and p[name].isolation == "process"
        assert n[name].isolation == "none"
        # the fidelity columns come from the worker's first output: the same numbers as in one process
        assert p[name].rel_l2_vs_fp32 == pytest.approx(n[name].rel_l2_vs_fp32, rel=1e-9, abs=1e-12)
        assert p[name].cosine_vs_fp32 == pytest.approx(n[name].cosine_vs_fp32, rel=1e-12)
    assert p["torch_fp32"].rel_l2_vs_fp32 == 0.0 and p["ort_fp32"].rel_l2_vs_fp32 < 1e-5
    assert p["broken"].status == n["broken"].status == "failed: ValueError: no kernel"
    assert p["plain"].status == "ok" and p["plain"].isolation == "in-process"
    meta = res["process"].meta
    assert meta["isolation"] == "process" and res["none"].meta["isolation"] == "none"
    w = meta["workers"]
    assert w["plain"]["pid"] == os.getpid() and w["torch_fp32"]["pid"] != os.getpid()
    assert w["torch_fp32"]["threads"] == 1 and w["torch_fp32"]["torch_threads"] == 1
    assert w["torch_fp32"]["pid"] != w["ort_fp32"]["pid"]
    md = to_markdown(res["process"])
    assert "| plain (in-process) |" in md and "one worker process per runner" in md
    assert "| plain |" in to_markdown(res["none"]) and "all runners in one process" in to_markdown(res["none"])
    assert multiprocessing.active_children() == []


def test_bad_isolation_values():
    with pytest.raises(ConfigError, match="isolation") as e:
        BenchOptions(isolation="thread")
    assert "process" in str(e.value) and "none" in str(e.value)
    with pytest.raises(ConfigError, match="worker_timeout_s"):
        BenchOptions(worker_timeout_s=0)
