"""Module-level runner factories for the worker-process tests: a spawned worker imports this module to
unpickle its `RunnerSpec`, so the factories cannot live in a test function."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import threading
import time

import numpy as np

#: 4 MiB hashed per call: a few ms of single-threaded CPU work (hashlib releases the GIL on large buffers)
_BUF = bytes(range(256)) * (4 << 12)


def _work(rounds: int) -> int:
    h = 0
    for _ in range(rounds):
        h ^= hashlib.sha256(_BUF).digest()[0]
    return h


def _now() -> float:
    """CLOCK_MONOTONIC: one clock for every process of the machine, so intervals logged by workers compare."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _log(path: str | None, *fields: float) -> None:
    if path is not None:
        with open(path, "a") as f:  # one short O_APPEND write per line: lines from threads do not interleave
            f.write(" ".join(repr(v) for v in fields) + "\n")


def read_intervals(path) -> list[tuple[float, float]]:
    """The (start, end) CLOCK_MONOTONIC intervals a runner logged, in the order they started; an interval
    whose end was never logged (its process was closed mid-spin) ends at infinity."""
    starts: dict[float, float] = {}
    try:
        with open(path) as f:
            for line in f:
                key, *rest = (float(v) for v in line.split())
                starts[key] = rest[-1] if rest else starts.get(key, math.inf)
    except FileNotFoundError:
        return []
    return sorted(starts.items())


def busy(rounds: int = 2, log: str | None = None):
    """A plain runtime: fixed CPU work on the calling thread, no pool, nothing left running; with `log`, every
    call's interval is appended to that file."""

    def run(x: np.ndarray) -> np.ndarray:
        t0 = _now()
        y = np.asarray(x, dtype=np.float32) + _work(rounds)
        _log(log, t0, _now())
        return y

    return run


def spinner(spin_ms: float, threads: int, log: str | None = None):
    """A runtime whose pool keeps `threads` threads spinning (busy, GIL released) for `spin_ms` after each
    call, like onnxruntime's intra-op pool or libgomp after a torch op; with `log`, every spin of every thread
    is appended to that file: its start when it begins, then its start and end (`read_intervals` pairs them)."""
    state = {"until": 0.0}
    cond = threading.Condition()

    def pool_thread() -> None:
        while True:
            with cond:
                while time.perf_counter() >= state["until"]:
                    cond.wait()
            start = None
            while time.perf_counter() < state["until"]:
                if start is None:  # logged at once: the process may be closed before this spin ends
                    start = _now()
                    _log(log, start)
                hashlib.sha256(_BUF)
            if start is not None:
                _log(log, start, _now())

    for _ in range(threads):
        threading.Thread(target=pool_thread, daemon=True).start()

    def run(x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, dtype=np.float32) * 2
        with cond:
            state["until"] = time.perf_counter() + spin_ms / 1e3
            cond.notify_all()
        return y

    return run


def broken_factory(message: str):
    """A factory that cannot build its runner."""
    raise ValueError(message)


def dies_on_call(n: int, how: str):
    """A runner that kills its own process on its n-th call: `os._exit(7)` or SIGKILL."""
    calls = {"n": 0}

    def run(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] >= n:
            if how == "exit":
                os._exit(7)
            os.kill(os.getpid(), signal.SIGKILL)
        return np.asarray(x, dtype=np.float32)

    return run


def raises_on_call(n: int):
    """A runner that raises on its n-th call (the worker survives to report it)."""
    calls = {"n": 0}

    def run(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] >= n:
            raise RuntimeError("kernel missing")
        return np.asarray(x, dtype=np.float32)

    return run
