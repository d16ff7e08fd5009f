"""One worker process per runtime for the peer harness.

Why: runtimes that share a process share its allocator, caches, thread affinity and their thread pools
(OpenMP, onnxruntime, TVM, XNNPACK); measured: onnxruntime INT8 had a median of 7.8 ms interleaved in one
process against 2.06 ms alone (its minimum, 2.2 ms, matched the solo run). So each runner is built and
timed in its own process, started with multiprocessing's *spawn* context (a fork after a runtime built
its pools would copy locks held by threads that do not exist in the child).

A runner crosses the process boundary as a `RunnerSpec`: a module-level factory plus picklable arguments
(the float nn.Module, ONNX paths, library bytes), called in the worker. The parent keeps the interleaved
rounds of `qcompile.bench.timing` (rotating order, settle, lead-in): per turn it waits until *every* worker
and the parent itself are idle (process CPU clocks, all threads, nanosecond resolution), then asks one worker
for `lead_in` untimed calls and one call timed in the worker with `time.perf_counter` around the call
alone (the pipe's latency is not in the sample). The input is sent once, at start; the output used for
the fidelity columns is fetched once, from the first call. Plain callables cannot cross the boundary:
they are timed in the parent, in the same rotation, and flagged "in-process".

A worker that cannot build its runner, raises, crashes or hangs turns into its row's status text; the
others go on. Every worker is stopped (stop message, then SIGTERM, then SIGKILL) in a `finally`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcompile.bench.timing import Clocks, Hook, Runner, lead_in_calls, own_runnable_threads, runnable_threads, settle

log = logging.getLogger(__name__)

__all__ = ["RunnerSpec", "IsolatedRun", "time_isolated", "process_cpu_seconds"]

#: thread-count variables every worker gets at start (read by libgomp/MKL at import, TVM at pool creation)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS")


@dataclass(frozen=True)
class RunnerSpec:
    """A recipe for a runner that can cross a process boundary: `factory(*args, **kwargs)` returns a Runner
    (numpy in, numpy out). `factory` must be a module-level function (pickled by reference) and the
    arguments picklable; the factory runs in the worker, so threads and pools it creates live there."""

    name: str
    factory: Callable[..., Runner]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Runner:
        """Call the factory (in this process)."""
        return self.factory(*self.args, **dict(self.kwargs))


@dataclass
class IsolatedRun:
    """What `time_isolated` measured: seconds per timed call (or the row's status text), the first call's
    output, per-row worker facts (pid, threads, isolation, build seconds) and every settle wait (s)."""

    samples: dict[str, list[float] | str]
    outputs: dict[str, np.ndarray]
    workers: dict[str, dict[str, Any]]
    settle_waits: list[float]
    #: per row, its outputs on every batch of `eval_inputs` (stacked), made after the timed rounds
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


class _RowFailed(Exception):
    """A row stopped working; the message is its status text."""


# -- the worker process ------------------------------------------------------------------------------

def _worker_main(conn: Any, spec_bytes: bytes, x: np.ndarray, threads: int) -> None:
    """Entry point of a worker: build the runner, then serve output / warmup / time / stop requests."""
    for k in THREAD_ENV:
        os.environ[k] = str(threads)
    t0 = time.perf_counter()
    try:
        spec = pickle.loads(spec_bytes)
        _set_torch_threads(threads)
        runner = spec.build()
    except BaseException as e:  # reported as the row's status; the parent stops this process
        missing = isinstance(e, ImportError)
        conn.send(("build_error", "missing" if missing else "error", _describe(e)))
        conn.close()
        return
    info = {"pid": os.getpid(), "threads": threads, "build_s": round(time.perf_counter() - t0, 3)}
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    conn.send(("ready", info))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        op = msg[0]
        try:
            if op == "output":
                conn.send(("output", np.asarray(runner(x))))
            elif op == "predict":  # outputs on a stack of input batches (accuracy columns)
                conn.send(("predictions", np.stack([np.asarray(runner(xb)) for xb in msg[1]])))
            elif op == "warmup":
                for _ in range(msg[1]):
                    runner(x)
                conn.send(("ok", None))
            elif op == "time":
                lead_in_calls(lambda: runner(x), msg[1], msg[2])
                t = time.perf_counter()
                runner(x)
                conn.send(("sample", time.perf_counter() - t))
            else:  # "stop"
                conn.close()
                return
        except Exception as e:
            conn.send(("error", f"failed: {_describe(e)}"))
            conn.close()
            return


def _set_torch_threads(threads: int) -> None:
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(threads)


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# -- the parent's view of a row -----------------------------------------------------------------------

class _Worker:
    """A runner in its own spawned process, driven over a pipe."""

    isolation = "process"

    def __init__(self, name: str, spec: RunnerSpec, x: np.ndarray, threads: int, timeout_s: float,
                 builtin: bool) -> None:
        self.name, self.threads, self.timeout_s, self.builtin = name, threads, timeout_s, builtin
        self.info: dict[str, Any] = {"isolation": self.isolation, "threads": threads}
        try:
            payload = pickle.dumps(spec)
        except Exception as e:
            self.proc = None
            raise _RowFailed(f"failed: runner spec cannot be sent to a worker process: {_describe(e)}") from e
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, payload, x, threads),
                                name=f"qcompile-bench:{name}", daemon=True)
        with _thread_env(threads):
            self.proc.start()
        child.close()  # only the worker holds its end: EOF here when it dies
        self.pid = self.proc.pid
        self.info["pid"] = self.pid
        self._clock = _cpu_clock(self.pid)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid, self._clock)

    def runnable_threads(self) -> int:
        return runnable_threads(self.pid)

    def _request(self, msg: tuple, expect: str, timeout_s: float | None = None) -> Any:
        if msg:
            try:
                self.conn.send(msg)
            except (BrokenPipeError, OSError):
                raise _RowFailed(self._exit_text()) from None
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while not self.conn.poll(0.05):
            if not self.proc.is_alive() and not self.conn.poll(0):
                raise _RowFailed(self._exit_text())
            if time.monotonic() > deadline:
                raise _RowFailed(f"failed: worker did not answer {msg[0] if msg else 'start'!r} within "
                                 f"{timeout_s or self.timeout_s:g} s (raise BenchOptions.worker_timeout_s)")
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            raise _RowFailed(self._exit_text()) from None
        if reply[0] == "build_error":
            kind, text = reply[1], reply[2]
            prefix = "unavailable" if (kind == "missing" or self.builtin) else "failed"
            raise _RowFailed(f"{prefix}: {text}")
        if reply[0] == "error":
            raise _RowFailed(reply[1])
        if reply[0] != expect:
            raise _RowFailed(f"failed: worker protocol: expected {expect!r}, got {reply[0]!r}")
        return reply[1]

    def _exit_text(self) -> str:
        self.proc.join(1.0)
        code = self.proc.exitcode
        if code is None:
            return "failed: worker closed its pipe but is still running"
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return f"failed: worker exited with code {code} ({sig})"
        return f"failed: worker exited with code {code}"

    def wait_ready(self) -> None:
        self.info.update(self._request((), "ready"))

    def output(self) -> np.ndarray:
        return self._request(("output",), "output")

    def predict(self, xs: np.ndarray) -> np.ndarray:
        return self._request(("predict", xs), "predictions")

    def warmup(self, n: int) -> None:
        if n > 0:
            self._request(("warmup", n), "ok")

    def timed(self, lead_in: int, lead_in_s: float = 0.0) -> float:
        return float(self._request(("time", lead_in, lead_in_s), "sample"))

    def close(self) -> None:
        """Stop the worker: ask, then SIGTERM, then SIGKILL; always reaped (no zombie)."""
        if self.proc is None:
            return
        try:
            if self.proc.is_alive():
                with suppress(BrokenPipeError, OSError):
                    self.conn.send(("stop",))
                self.proc.join(2.0)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(2.0)
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
        finally:
            self.conn.close()
            self.proc.close()
            self.proc = None


class _InProcess:
    """A plain callable, timed in the parent process (it cannot cross a process boundary)."""

    isolation = "in-process"

    def __init__(self, name: str, fn: Runner, x: np.ndarray, threads: int) -> None:
        self.name, self.fn, self.x = name, fn, x
        self.pid = os.getpid()
        self.info: dict[str, Any] = {"isolation": self.isolation, "pid": self.pid, "threads": threads}

    def cpu_seconds(self) -> float:
        return 0.0  # the parent's own CPU time is counted once, by the group clock

    def runnable_threads(self) -> int:
        return 0  # the parent's threads are counted once, by the group clock

    def wait_ready(self) -> None:
        return None

    def _call(self) -> np.ndarray:
        try:
            return self.fn(self.x)
        except Exception as e:
            raise _RowFailed(f"failed: {_describe(e)}") from e

    def output(self) -> np.ndarray:
        return np.asarray(self._call())

    def predict(self, xs: np.ndarray) -> np.ndarray:
        try:
            return np.stack([np.asarray(self.fn(xb)) for xb in xs])
        except Exception as e:
            raise _RowFailed(f"failed: {_describe(e)}") from e

    def warmup(self, n: int) -> None:
        for _ in range(n):
            self._call()

    def timed(self, lead_in: int, lead_in_s: float = 0.0) -> float:
        lead_in_calls(self._call, lead_in, lead_in_s)
        t = time.perf_counter()
        self._call()
        return time.perf_counter() - t

    def close(self) -> None:
        return None


# -- CPU clocks ------------------------------------------------------------------------------------

def _cpu_clock(pid: int) -> int | None:
    """Linux's process-wide CPU-time clock id of `pid` (MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)), or None."""
    if not sys.platform.startswith("linux"):
        return None
    clk = ((~pid) << 3) | 2
    try:
        time.clock_gettime(clk)
    except OSError:
        return None
    return clk


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int, clock: int | None = None) -> float:
    """CPU seconds used so far by all threads of process `pid`: its CPU clock (ns resolution) when readable,
    else utime + stime of /proc/<pid>/stat (clock-tick resolution); 0 when the process is gone."""
    if clock is not None:
        try:
            return time.clock_gettime(clock)
        except OSError:
            pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of stat(5)


class _GroupCpu:
    """CPU seconds of the parent plus every live worker, not counting the parent's own reading of them
    (about 20 us per worker, which would otherwise look like a spinning thread)."""

    def __init__(self, rows: Mapping[str, Any]) -> None:
        self.rows = rows  # the live rows, by name: a dropped worker stops counting
        self.overhead = 0.0

    def __call__(self) -> float:
        p0 = time.process_time()
        total = sum(r.cpu_seconds() for r in self.rows.values())
        p1 = time.process_time()
        self.overhead += p1 - p0
        return total + p1 - self.overhead

    def runnable(self) -> int:
        """Runnable threads of every live worker and of this process, the probing thread aside."""
        return own_runnable_threads() + sum(r.runnable_threads() for r in self.rows.values())


@contextmanager
def _thread_env(threads: int) -> Iterator[None]:
    """Thread-count variables for a child started inside the block (spawn copies the environment)."""
    old = {k: os.environ.get(k) for k in THREAD_ENV}
    os.environ.update({k: str(threads) for k in THREAD_ENV})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- the driver -------------------------------------------------------------------------------------

def time_isolated(
    runners: Mapping[str, RunnerSpec | Runner],
    x: np.ndarray,
    repeats: int,
    warmup: int,
    hook: Hook | None = None,
    *,
    threads: int = 1,
    settle_s: float = 0.0,
    lead_in: int = 0,
    lead_in_s: float = 0.0,
    probe_s: float = 0.002,
    idle_fraction: float = 0.05,
    timeout_s: float = 300.0,
    builtin: frozenset[str] | set[str] = frozenset(),
    eval_inputs: np.ndarray | None = None,
    before_round: Callable[[int], object] | None = None,
) -> IsolatedRun:
    """Interleaved timing with one worker process per `RunnerSpec` (plain callables run in this process).

    Same schedule as `timing.time_runners`: `warmup` untimed calls per row (the first one returns the
    output kept for fidelity; at least that one is made), then `repeats` rounds over the live rows, order
    rotated by one per round; per visit: settle (every worker and this process idle, at most `settle_s`),
    untimed calls (`timing.lead_in_calls`: at least `lead_in`, for at least `lead_in_s`) and one timed call, then
    `hook(name, round, seconds)`. `threads` sets each
    worker's OMP/MKL/TVM_NUM_THREADS and torch's thread count. A row whose worker fails to build (status
    "unavailable: ..." for a missing package or a name in `builtin`, else "failed: ..."), raises, exits or
    does not answer within `timeout_s` is dropped from the rounds with that status; the others go on.
    `eval_inputs` (a stack of input batches shaped like `x`): after the rounds, every live row's outputs on
    them go to `predictions` (a row failing there keeps its timings and gets no predictions).
    `before_round(r)` (the harness's host memory probe) runs in this process at the start of every round, after
    a settle step of its own (every worker idle), so it overlaps no runner's call.
    """
    names = list(runners)
    status: dict[str, str] = {}
    rows: dict[str, Any] = {}
    infos: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[float] | str] = {}
    outputs: dict[str, np.ndarray] = {}
    predictions: dict[str, np.ndarray] = {}
    waits: list[float] = []
    x = np.ascontiguousarray(x) if x is not None else x
    try:
        for n in names:  # start every worker first: their builds overlap
            r = runners[n]
            try:
                rows[n] = (_Worker(n, r, x, threads, timeout_s, n in builtin) if isinstance(r, RunnerSpec)
                           else _InProcess(n, r, x, threads))
                infos[n] = rows[n].info
            except _RowFailed as e:
                status[n] = str(e)
        for n, row in list(rows.items()):
            try:
                row.wait_ready()
                outputs[n] = row.output()
                row.warmup(warmup - 1)
            except _RowFailed as e:
                _drop(n, rows, status, str(e))
        live = [n for n in names if n in rows]
        for n in live:
            samples[n] = []
        group = _GroupCpu(rows)
        clocks = Clocks(cpu=group, runnable=group.runnable)
        for r in range(repeats):
            if before_round is not None:
                settle(settle_s, probe_s, idle_fraction, clocks)
                before_round(r)
            order = [n for n in live if n in rows]
            k = r % max(1, len(order))
            for n in order[k:] + order[:k]:
                if n not in rows:
                    continue
                waits.append(settle(settle_s, probe_s, idle_fraction, clocks))
                try:
                    dt = rows[n].timed(lead_in, lead_in_s)
                except _RowFailed as e:
                    _drop(n, rows, status, str(e))
                    continue
                samples[n].append(dt)  # type: ignore[union-attr]
                if hook is not None:
                    hook(n, r, dt)
        if eval_inputs is not None:
            for n, row in rows.items():
                try:
                    predictions[n] = row.predict(eval_inputs)
                except _RowFailed as e:
                    log.warning("runner %s: no predictions on the evaluation set: %s", n, e)
    finally:
        for row in list(rows.values()):
            row.close()
    for n in names:
        if n in status:
            samples[n] = status[n]
            outputs.pop(n, None)
            log.warning("runner %s: %s", n, status[n])
    return IsolatedRun(
        {n: samples[n] for n in names}, outputs, {n: dict(i) for n, i in infos.items()}, waits, predictions
    )


def _drop(name: str, rows: dict[str, Any], status: dict[str, str], text: str) -> None:
    status[name] = text
    row = rows.pop(name)
    try:
        row.close()
    except Exception as e:  # closing a dead worker must not hide its status
        log.warning("closing worker %s: %s", name, e)
