"""The settle mechanism of the harness on a simulated machine: a fake clock, runners whose thread pools
keep spinning after each call, and a slowdown while another runtime's pool spins. Deterministic:
no wall-clock thresholds."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import numpy as np
import pytest

from qcompile.bench.timing import Clocks, own_runnable_threads, runnable_threads, settle, time_runners


class FakeMachine:
    """Wall and process-CPU clocks driven by the calls; `spin_until` is when the last runner's pool stops
    spinning (it burns one core of process CPU time until then). A call that starts while *another*
    runner's pool spins takes `slowdown` times longer (its cores are stolen)."""

    def __init__(self, slowdown: float = 3.0):
        self.t = 0.0
        self.cpu_t = 0.0
        self.spin_until = 0.0
        self.spinner: str | None = None
        self.slowdown = slowdown
        self.sleeps: list[float] = []
        self.calls: list[tuple[str, float]] = []  # (runner, start time)

    def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.cpu_t += max(0.0, min(self.t + d, self.spin_until) - self.t)  # the spinning pool's CPU time
        self.t += d

    def clocks(self) -> Clocks:
        return Clocks(wall=lambda: self.t, cpu=lambda: self.cpu_t, sleep=self.sleep,
                      runnable=lambda: int(self.t < self.spin_until))

    def runner(self, name: str, seconds: float, spin: float):
        def run(x: np.ndarray) -> np.ndarray:
            self.calls.append((name, self.t))
            contended = self.spinner not in (None, name) and self.t < self.spin_until
            d = seconds * (self.slowdown if contended else 1.0)
            self.t += d
            self.cpu_t += d
            self.spin_until, self.spinner = self.t + spin, name
            return x

        return run


def test_settle_waits_until_the_process_is_idle():
    m = FakeMachine()
    m.runner("a", 0.001, spin=0.007)(np.zeros(1))  # pool spins 7 ms after the call
    waited = settle(0.2, 0.002, 0.05, m.clocks())
    # probes of 2 ms: [0,2) [2,4) [4,6) busy, [6,8) busy 1 ms, [8,10) [10,12) idle -> stop after 6 probes
    assert m.sleeps == [0.002] * 6
    assert waited == pytest.approx(0.012)
    m1 = FakeMachine()
    m1.runner("a", 0.001, spin=0.007)(np.zeros(1))
    assert settle(0.2, 0.002, 0.05, m1.clocks(), quiet_probes=1) == pytest.approx(0.010)  # the first idle probe


def test_settle_is_capped_and_disabled_by_zero():
    m = FakeMachine()
    m.runner("a", 0.001, spin=10.0)(np.zeros(1))  # a pool that never parks
    waited = settle(0.05, 0.002, 0.05, m.clocks())
    assert waited == pytest.approx(0.05, abs=0.002) and waited >= 0.05
    assert len(m.sleeps) == round(waited / 0.002)
    m2 = FakeMachine()
    assert settle(0.0, 0.002, 0.05, m2.clocks()) == 0.0 and m2.sleeps == []


def test_settle_waits_for_runnable_threads_when_the_cpu_clock_lags():
    """Linux brings another thread's CPU time up to date only at a scheduler tick: between ticks the clock of
    a process whose pool spins reads flat (CI failure: a 2 ms probe saw no growth, the harness timed a
    runner beside 4 spinning threads). Time in integer microseconds: 4 ms ticks, the pool spins 20 ms."""
    tick, spin_until, now = 4000, 20000, [0]

    def sleep(d: float) -> None:
        now[0] += round(d * 1e6)

    def cpu() -> float:  # the spinner's CPU time as of the last tick
        return min(now[0] // tick * tick, spin_until) / 1e6

    def clocks(runnable) -> Clocks:
        return Clocks(wall=lambda: now[0] / 1e6, cpu=cpu, sleep=sleep, runnable=runnable)

    # the CPU clock alone, one quiet probe: the first probe [0, 2 ms) sees no tick and calls the process idle
    assert settle(0.2, 0.002, 0.05, clocks(lambda: 0), quiet_probes=1) == pytest.approx(0.002)
    # with the runnable count: [20, 22) and [22, 24) ms are the first quiet probes after the spin ended
    now[0] = 0
    waited = settle(0.2, 0.002, 0.05, clocks(lambda: int(now[0] < spin_until)))
    assert waited == pytest.approx(0.024)


def test_settle_needs_consecutive_quiet_probes():
    """A runnable count read thread by thread can miss a pool that hands a lock around: one quiet-looking probe
    in the middle of a spin does not end the settle (CI: 6 of 12 isolated samples beside a spinning pool took
    3x); two in a row do."""
    now, spin_until = [0], 20000
    misses = {6000}  # the probe ending at 6 ms reads no runnable thread although the pool spins

    def sleep(d: float) -> None:
        now[0] += round(d * 1e6)

    def runnable() -> int:
        return 0 if now[0] in misses or now[0] >= spin_until else 1

    clocks = Clocks(wall=lambda: now[0] / 1e6, cpu=lambda: 0.0, sleep=sleep, runnable=runnable)
    assert settle(0.2, 0.002, 0.05, clocks, quiet_probes=1) == pytest.approx(0.006)
    now[0] = 0
    assert settle(0.2, 0.002, 0.05, clocks) == pytest.approx(0.022)


def test_runnable_threads_counts_a_spinning_thread_and_not_the_caller():
    before = own_runnable_threads()
    stop = threading.Event()
    buf = bytes(1 << 20)

    def spin() -> None:
        while not stop.is_set():
            hashlib.sha256(buf)  # releases the GIL: the thread stays runnable while the caller reads /proc

    th = threading.Thread(target=spin, daemon=True)
    th.start()
    try:
        seen = max(own_runnable_threads() for _ in range(50))
        # the whole process, the caller included (it is running while it reads)
        assert runnable_threads(os.getpid()) >= 1
    finally:
        stop.set()
        th.join()
    assert seen >= before + 1, (seen, before)
    deadline = time.monotonic() + 2.0
    while own_runnable_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert own_runnable_threads() <= before
    assert runnable_threads(2**22 + 12345) == 0  # no such process (pid_max is at most 2**22)


def _machine_and_runners():
    m = FakeMachine(slowdown=3.0)
    runners = {"torch": m.runner("torch", 0.014, spin=0.004), "ort": m.runner("ort", 0.002, spin=0.040)}
    return m, runners


def test_without_settle_interleaving_contaminates_and_with_settle_it_does_not():
    m, runners = _machine_and_runners()
    raw = time_runners(runners, np.zeros(1), repeats=6, warmup=1, clocks=m.clocks())
    # the rotating order visits T O | O T | T O | ...: a call that follows the other runtime while its pool
    # still spins is 3x slower; one that follows itself (round boundary) is not
    assert raw["torch"] == pytest.approx([0.042, 0.042, 0.014, 0.042, 0.014, 0.042])
    assert raw["ort"] == pytest.approx([0.006, 0.002, 0.006, 0.002, 0.006, 0.002])

    m, runners = _machine_and_runners()
    waits: list[float] = []
    calls: list[tuple[str, int, float]] = []
    s = time_runners(runners, np.zeros(1), repeats=6, warmup=1, settle_s=0.2, lead_in=1, clocks=m.clocks(),
                     settle_log=waits, hook=lambda n, r, dt: calls.append((n, r, dt)))
    assert s["torch"] == pytest.approx([0.014] * 6)  # the solo latencies
    assert s["ort"] == pytest.approx([0.002] * 6)
    assert len(waits) == 12 and max(waits) <= 0.2
    # after torch (4 ms spin) the settle takes 4 probes (8 ms), after ort (40 ms spin) 22 probes (44 ms): the
    # spin, then two quiet probes
    assert sorted({round(w, 6) for w in waits}) == [0.008, 0.044]
    assert [(n, r) for n, r, _ in calls] == [("torch", 0), ("ort", 0), ("ort", 1), ("torch", 1), ("torch", 2),
                                           ("ort", 2), ("ort", 3), ("torch", 3), ("torch", 4), ("ort", 4),
                                           ("ort", 5), ("torch", 5)]
    assert [dt for n, _, dt in calls if n == "torch"] == pytest.approx([0.014] * 6)


def test_lead_in_calls_are_untimed_and_precede_the_timed_call():
    m, runners = _machine_and_runners()
    s = time_runners(runners, np.zeros(1), repeats=2, warmup=0, settle_s=0.2, lead_in=2, clocks=m.clocks())
    names = [n for n, _ in m.calls]
    # per visit: 2 lead-in calls + 1 timed call of the same runner, rounds rotate the order
    assert names == ["torch"] * 3 + ["ort"] * 3 + ["ort"] * 3 + ["torch"] * 3
    assert len(s["torch"]) == 2 and len(s["ort"]) == 2


def test_failing_runner_is_recorded_and_the_others_still_run():
    m, runners = _machine_and_runners()

    def boom(x):
        raise RuntimeError("kernel missing")

    s = time_runners({**runners, "broken": boom}, np.zeros(1), repeats=3, warmup=1, clocks=m.clocks())
    assert isinstance(s["broken"], str) and "kernel missing" in s["broken"] and s["broken"].startswith("failed:")
    assert len(s["torch"]) == 3 and len(s["ort"]) == 3


def test_lead_in_calls_make_at_least_n_and_last_at_least_min_s():
    """Untimed lead-in: at least `n` calls, and more until `min_s` has passed on the given clock."""
    from qcompile.bench.timing import lead_in_calls

    now = [0.0]
    calls = []

    def call():  # every call takes 7 ms of the fake clock
        calls.append(now[0])
        now[0] += 0.007

    assert lead_in_calls(call, 1, 0.05, clock=lambda: now[0]) == 8  # ceil(50 / 7) calls
    assert lead_in_calls(call, 3, 0.0, clock=lambda: now[0]) == 3
    assert lead_in_calls(call, 0, 0.0, clock=lambda: now[0]) == 0
    assert lead_in_calls(call, 10, 0.01, clock=lambda: now[0]) == 10  # the count wins when it takes longer
    assert len(calls) == 21
