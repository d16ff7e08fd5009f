"""Module-level runner factories for the worker-process tests: a spawned worker imports this module to
unpickle its `RunnerSpec`, so the factories cannot live in a test function."""

from __future__ import annotations

import hashlib
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


def busy(rounds: int = 2):
    """A plain runtime: fixed CPU work on the calling thread, no pool, nothing left running."""

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) + _work(rounds)

    return run


def spinner(spin_ms: float, threads: int):
    """A runtime whose pool keeps `threads` threads spinning (busy, GIL released) for `spin_ms` after each
    call, like onnxruntime's intra-op pool or libgomp after a torch op."""
    state = {"until": 0.0}
    cond = threading.Condition()

    def pool_thread() -> None:
        while True:
            with cond:
                while time.perf_counter() >= state["until"]:
                    cond.wait()
            while time.perf_counter() < state["until"]:
                hashlib.sha256(_BUF)

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
