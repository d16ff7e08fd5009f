"""Interleaved timing of several runtimes in one process, with a settle step between runtimes.

Why the settle step: every CPU runtime keeps its worker threads spinning for a while after a call
(onnxruntime's intra-op pool, libgomp's spin-wait after a torch op, TVM's and XNNPACK's pools) so
that back-to-back calls of the *same* runtime start at once. When the next call belongs to another
runtime, those spinners still hold the cores: on a 2-core machine a 2-thread torch call that follows
an onnxruntime call measured 5x its solo latency. Turning spinning off would change what users of
each runtime get, so instead, before a runner's turn, the harness

1. waits until the process is quiet: it sleeps in `probe` steps until the process's CPU time
   (all threads) grew by less than `idle_fraction` of a step *and* none of its other threads is runnable
   (state R in /proc), at most `settle` seconds in all. The CPU clock alone is not enough: Linux brings
   another thread's CPU time up to date only at a scheduler tick or a context switch (4 ms at HZ=250),
   so a 2 ms probe saw no growth for about half of the probes of a process with 4 spinning threads
   (measured on the 2-vCPU Zen 4 host), and a runner then started beside spinning threads (CI failure:
   6 of 12 samples 3x the solo time). A spinning thread is in state R at every probe;
2. makes `lead_in` untimed calls of that runner, so the timed call finds its own pool as a user's
   steady-state loop does (hot, spinning), not freshly parked;
3. times one call.

Rounds still interleave all runners with a rotating order, so slow drifts of a shared machine
(frequency, other jobs) hit every runner alike.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]
#: called after every timed call: (runner name, round index, seconds)
Hook = Callable[[str, int, float], None]
Clock = Callable[[], float]


def runnable_threads(pid: int, exclude_tid: int | None = None) -> int:
    """Threads of process `pid` that are running or waiting for a core (state R in /proc/<pid>/task/*/stat),
    not counting thread `exclude_tid`; 0 where /proc is missing (not Linux) or the process is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    n = 0
    for tid in tids:
        if exclude_tid is not None and tid == str(exclude_tid):
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split(None, 1)[0]
        except (OSError, IndexError):
            continue  # the thread ended between the listing and the read
        n += state == "R"
    return n


def own_runnable_threads() -> int:
    """Runnable threads of this process other than the calling one (the one that probes)."""
    return runnable_threads(os.getpid(), threading.get_native_id())


@dataclass(frozen=True)
class Clocks:
    """Wall clock, process CPU clock (all threads), sleep and the count of runnable threads besides the
    caller's: injectable so tests can use a fake time."""

    wall: Clock = time.perf_counter
    cpu: Clock = time.process_time
    sleep: Callable[[float], None] = time.sleep
    runnable: Callable[[], int] = own_runnable_threads


def settle(max_s: float, probe_s: float, idle_fraction: float, clocks: Clocks = Clocks(),
           quiet_probes: int = 2) -> float:
    """Sleep in `probe_s` steps until `quiet_probes` consecutive steps each used less than `idle_fraction *
    probe_s` of process CPU time with no other thread runnable at their end (no thread is spinning any more),
    or `max_s` has passed; returns seconds waited. (The runnable count is read outside the CPU-measured step, so
    reading /proc does not count as activity.)

    Why consecutive probes: the CPU clock of another process moves only at a scheduler tick, and the runnable
    count is a thread-by-thread read of /proc, not a snapshot; a pool whose threads hand the GIL or a lock to one
    another can read as idle at one probe (CI: 6 of 12 isolated samples beside 4 spinning threads took 3x)."""
    if max_s <= 0:
        return 0.0
    start = clocks.wall()
    quiet = 0
    while True:
        c0 = clocks.cpu()
        clocks.sleep(probe_s)
        busy = clocks.cpu() - c0
        waited = clocks.wall() - start
        quiet = quiet + 1 if busy < idle_fraction * probe_s and clocks.runnable() == 0 else 0
        if waited >= max_s or quiet >= max(1, quiet_probes):
            return waited


def lead_in_calls(call: Callable[[], object], n: int, min_s: float = 0.0, clock: Clock = time.perf_counter) -> int:
    """Untimed calls right before a timed one: at least `n`, and more until `min_s` seconds have passed.

    Why a time floor: measured on this project's 2-vCPU VM, a runtime whose threads slept through the other
    runners' turns had its pool threads woken onto the *same* vCPU as its spinning main thread (the
    scheduler packs threads of low recent utilisation), so a call waited a whole 4 ms scheduler tick per
    parallel section: onnxruntime INT8 showed latencies in 4 ms steps (1.9, 6.6, 11.5 ms). About 50 ms of
    calls first brings the threads' utilisation up and they are spread again, as in a user's loop.
    Returns the number of calls made."""
    made = 0
    start = clock()
    while made < n or (min_s > 0 and clock() - start < min_s):
        call()
        made += 1
    return made


def time_runners(
    runners: Mapping[str, Runner],
    x: np.ndarray,
    repeats: int,
    warmup: int,
    hook: Hook | None = None,
    *,
    settle_s: float = 0.0,
    lead_in: int = 0,
    lead_in_s: float = 0.0,
    probe_s: float = 0.002,
    idle_fraction: float = 0.05,
    clocks: Clocks = Clocks(),
    settle_log: list[float] | None = None,
    before_round: Callable[[int], object] | None = None,
) -> dict[str, list[float] | str]:
    """Interleaved timing; seconds per timed call per runner, or the error text of a runner that failed.

    Each round visits every live runner once (order rotated by one per round); per visit: `settle`
    (at most `settle_s`), untimed calls (`lead_in_calls`: at least `lead_in`, for at least `lead_in_s`), one
    timed call, then `hook(name, round, seconds)`.
    The seconds waited in each settle step are appended to `settle_log` when given. `before_round(r)` (e.g. the
    harness's host memory probe, `qcompile.bench.hostprobe`) is called at the start of every round, after a
    settle step of its own, so no runner's call overlaps it.
    """
    names = list(runners)
    samples: dict[str, list[float] | str] = {n: [] for n in names}
    for n in names:
        try:
            for _ in range(warmup):
                runners[n](x)
        except Exception as e:  # a broken peer is recorded, the others still run
            samples[n] = f"failed: {type(e).__name__}: {e}"
            log.warning("runner %s failed: %s", n, e)
    live = [n for n in names if isinstance(samples[n], list)]
    for r in range(repeats):
        if before_round is not None:
            settle(settle_s, probe_s, idle_fraction, clocks)
            before_round(r)
        k = r % max(1, len(live))
        for n in live[k:] + live[:k]:
            waited = settle(settle_s, probe_s, idle_fraction, clocks)
            if settle_log is not None:
                settle_log.append(waited)
            lead_in_calls(lambda n=n: runners[n](x), lead_in, lead_in_s, clocks.wall)
            t0 = clocks.wall()
            runners[n](x)
            dt = clocks.wall() - t0
            samples[n].append(dt)  # type: ignore[union-attr]
            if hook is not None:
                hook(n, r, dt)
    return samples
