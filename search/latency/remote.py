"""Timing a latency table's kernels on boards through TVM RPC: one server, or several behind a tracker.

OFA/APQ tables and nn-Meter predictors are built on the device itself; for `arm_cpu` qcompile cross-compiles
each subnet here and times the library on the board (`tvm.rpc`: upload, `load_module`, `time_evaluator`).
Timings under qemu are emulation and never enter a table. The board's CPU cannot be read through a stock
TVM runtime server (no LLVM, no host functions), so its model is recorded by the caller (`cpu_model`). An x86
board with AMX-INT8 needs a server that requests the AMX tile permission before it serves
(`python -m qcompile.backends.tvm.rpc_server`, or TVM's server started as `backends/tvm/rpc.py` says).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.errors import ConfigError, LoweringError

log = logging.getLogger(__name__)

__all__ = ["Boards", "Recorded", "RemoteTimer", "LocalTimer", "network_samples", "primfunc_samples",
           "network_evaluator", "kernel_evaluator"]


@dataclass(frozen=True)
class Recorded:
    """The boards of a table timed through RPC, as its keys recorded them (for checks away from the boards)."""

    cpu_model: str
    where: str


@dataclass(frozen=True)
class Boards:
    """Where kernels are timed: `remote="host:port"` (one RPC server) or `tracker="host:port"` + `key` (every
    free server of that key). `cpu_model` names the boards' CPU for the table keys (all boards the same)."""

    remote: str | None = None
    tracker: str | None = None
    key: str | None = None
    cpu_model: str | None = None
    timeout: float = 120.0

    def __post_init__(self) -> None:
        from qcompile.backends.tvm.rpc import parse_remote

        if (self.remote is None) == (self.tracker is None):
            raise ConfigError("remote/tracker", f"remote={self.remote!r}, tracker={self.tracker!r}",
                              "exactly one of remote='host:port' or tracker='host:port' (with key=...)")
        parse_remote(self.remote or self.tracker)  # type: ignore[arg-type]
        if self.tracker is not None and not self.key:
            raise ConfigError("key", self.key, "the device key the boards registered with the tracker, e.g. 'rk3399'")
        if not self.cpu_model:
            raise ConfigError("cpu_model", self.cpu_model,
                              "the boards' CPU model, e.g. 'ARM Cortex-A72' (a stock TVM RPC server cannot report "
                              "it, and a table must say what it measured)")

    @property
    def where(self) -> str:
        return f"rpc {self.remote}" if self.remote else f"tracker {self.tracker} key {self.key}"

    def sessions(self) -> list[Any]:
        """One RPC session per board: the server, or every server the tracker has free for `key`."""
        from tvm import rpc

        from qcompile.backends.tvm.rpc import parse_remote

        host, port = parse_remote(self.remote or self.tracker)  # type: ignore[arg-type]
        try:
            if self.remote is not None:
                return _boards_only([rpc.connect(host, port, session_timeout=self.timeout)], self.where)
            tracker = rpc.connect_tracker(host, port)
            n = _free_servers(tracker.summary(), self.key)  # type: ignore[arg-type]
            if n == 0:
                raise LoweringError(f"tracker={self.tracker!r}", f"no server registered under key {self.key!r}",
                                    "start `python -m qcompile.backends.tvm.rpc_server "
                                    f"--tracker {self.tracker} --key {self.key}` on each board")
            return _boards_only([tracker.request(self.key, session_timeout=self.timeout) for _ in range(n)],
                                self.where)
        except (LoweringError, ConfigError):
            raise
        except Exception as e:  # connection refused / timed out surface as TVM errors
            raise LoweringError(self.where, f"cannot reach the TVM RPC service ({e})",
                                "start `python -m qcompile.backends.tvm.rpc_server` (and the tracker) and check the "
                                "address") from e


def _boards_only(sessions: list[Any], where: str) -> list[Any]:
    """`sessions`, or ConfigError when one is an emulator (qcompile's aarch64 server under qemu,
    `rpc.remote_emulation`): timings under qemu never enter a table."""
    from qcompile.backends.tvm.rpc import remote_emulation

    for sess in sessions:
        emulated = remote_emulation(sess)
        if emulated:
            raise ConfigError("boards", where, "RPC servers on real boards",
                              f"the server runs under {emulated}: emulated timings are not latency and never enter "
                              "a latency table")
    return sessions


def _free_servers(summary: dict, key: str) -> int:
    """Servers registered under `key` in a tracker summary (`queue_info[key]["free"]`)."""
    info = summary.get("queue_info", {}).get(key, {})
    return int(info.get("free", 0))


class LocalTimer:
    """Times a lowered library in this process (the native target)."""

    where = "local"

    def __init__(self, low: Any) -> None:
        import tvm

        self.low = low
        self.dev = tvm.cpu()
        self.vm = low._native_vm()  # noqa: SLF001 - the lowered library's VM, thread pool configured
        lib = low._exec  # noqa: SLF001
        self.mod = lib.mod if hasattr(lib, "mod") else lib

    def function(self, name: str) -> Any:
        from qcompile.backends.tvm.lowered import _find_function_module

        return _find_function_module(self.mod, name)


class RemoteTimer:
    """Times a lowered (cross-compiled) library on the board behind an RPC session: upload, load, VM.

    The kernels are timed from a second library holding only the compiled PrimFuncs: an RPC module answers
    `time_evaluator` only for functions it defines itself, and the Relax library keeps them in an import that
    a remote client cannot reach.
    """

    def __init__(self, low: Any, sess: Any, where: str) -> None:
        from tvm import relax

        self.low = low
        self.where = where
        self.kernels: Any = None
        tag = f"qcompile_{id(low):x}"
        with tempfile.TemporaryDirectory(prefix="qcompile-latency-") as tmp:
            lib = Path(tmp) / "lib.so"
            low._export_library(lib)  # noqa: SLF001 - the library as `export` writes it (cross compiler for arm)
            sess.upload(str(lib), f"{tag}.so")
            kmod = _kernel_module(low)
            if kmod is not None:
                klib = Path(tmp) / "kernels.so"
                kmod.export_library(str(klib), **({"cc": low.spec.cross_cxx} if low.spec.cross_cxx else {}))
                sess.upload(str(klib), f"{tag}_kernels.so")
        self.lib = sess.load_module(f"{tag}.so")
        if kmod is not None:
            self.kernels = sess.load_module(f"{tag}_kernels.so")
        self.dev = sess.cpu()
        if low.num_threads:
            try:  # the board's thread pool: the table's thread count
                sess.get_function("runtime.config_threadpool")(1, int(low.num_threads))
            except Exception as e:  # noqa: BLE001 - a runtime without the hook keeps its default
                log.warning("%s: cannot set %s threads (%s): the board's default is timed", where, low.num_threads, e)
        self.vm = relax.VirtualMachine(self.lib, self.dev)

    def function(self, name: str) -> Any:
        for cand in [m for m in (self.kernels, self.lib) if m is not None]:
            try:
                cand.time_evaluator(name, self.dev, number=1, repeat=1)
                return cand
            except Exception:  # noqa: BLE001, S112 - an RPC module answers only for the symbols it defines
                continue
        return None


def _kernel_module(low: Any) -> Any:
    """The compiled-kernel module of a freshly lowered library (exportable on its own), else None."""
    from qcompile.backends.tvm.lowered import _find_function_module

    names = [f for k in low.meta["kernels"] for f in k["primfuncs"]]
    lib = low._exec  # noqa: SLF001
    if not names or getattr(low, "_lib_path", None) is not None:  # a loaded library cannot be re-exported
        log.warning("kernels of a loaded library are not timed on the board (lower the subnet again)")
        return None
    return _find_function_module(lib.mod if hasattr(lib, "mod") else lib, names[0])


def network_samples(timer: Any, repeat: int, *, budget_ms: float | None = None, min_repeat: int = 50) -> list[float]:
    """`repeat` end-to-end calls of `main` (ms each), after 5 warm-up calls (thread pool, caches). With
    `budget_ms`, fewer calls for slow networks: as many as fit the budget (by the fastest warm-up call), at least
    `min_repeat` (e.g. 50 calls of a 30 ms mobilenet_v2@224 network instead of 100, median kept either way)."""
    import tvm

    low = timer.low
    x = np.random.default_rng(0).standard_normal(low.input_shape).astype(low.input_dtype)
    xin = tvm.runtime.tensor(x, timer.dev)
    warm = timer.vm.time_evaluator("main", timer.dev, number=1, repeat=5)(xin).results
    if budget_ms is not None:
        est_ms = max(min(float(t) for t in warm) * 1e3, 1e-6)
        repeat = max(min(int(repeat), int(min_repeat)), min(int(repeat), int(budget_ms / est_ms)))
    ev = timer.vm.time_evaluator("main", timer.dev, number=1, repeat=int(repeat))
    return [float(t) * 1e3 for t in ev(xin).results]


def primfunc_samples(timer: Any, names: Sequence[str], window_us: float, repeat: int) -> dict[str, list[float]]:
    """Per-PrimFunc latency samples (ms per call): `repeat` windows of `number` back-to-back calls, `number` set
    from a first estimate so that a window lasts about `window_us`: long enough for microsecond kernels to be
    measured and not the timer, short enough that on a loaded machine most windows are not preempted (the
    median is kept; a 2 ms window was preempted almost always at load 16 on 2 cores and read 5-10x high)."""
    import tvm

    from qcompile.backends.tvm.lowered import _random_arg

    low = timer.low
    rng = np.random.default_rng(0)
    out: dict[str, list[float]] = {}
    for name in names:
        sig = low.meta["signatures"].get(name)
        m = timer.function(name) if sig is not None else None
        if m is None:
            continue
        args = [tvm.runtime.tensor(_random_arg(s, d, rng), timer.dev) for s, d in sig]
        first = m.time_evaluator(name, timer.dev, number=1, repeat=5)(*args).results
        est = max(min(float(t) for t in first), 1e-8)
        number = int(min(10_000, max(1, round(window_us * 1e-6 / est))))
        ev = m.time_evaluator(name, timer.dev, number=number, repeat=int(repeat))
        out[name] = [float(t) * 1e3 for t in ev(*args).results]
    return out


def network_evaluator(timer: Any, calls: int) -> Any:
    """A callable that makes `calls` end-to-end calls of `main` and returns their times (ms): one round of the
    round-robin protocol (`rounds.py`). TVM's time evaluator makes one untimed call first."""
    import tvm

    low = timer.low
    x = np.random.default_rng(0).standard_normal(low.input_shape).astype(low.input_dtype)
    xin = tvm.runtime.tensor(x, timer.dev)
    ev = timer.vm.time_evaluator("main", timer.dev, number=1, repeat=int(calls))
    return lambda: [float(t) * 1e3 for t in ev(xin).results]


def kernel_evaluator(timer: Any, names: Sequence[str], window_us: float, windows: int,
                     numbers: dict[str, int] | None = None) -> tuple[Any, dict[str, int]] | None:
    """A callable returning `windows` samples (ms) of one kernel workload made of PrimFuncs `names` (window w of
    each PrimFunc summed), and the calls per window of each PrimFunc: from `numbers` when given (a resumed run
    keeps its windows), else set so a window lasts about `window_us` (as `primfunc_samples`). None when a
    PrimFunc is not in the library."""
    import tvm

    from qcompile.backends.tvm.lowered import _random_arg

    low = timer.low
    rng = np.random.default_rng(0)
    evs, used = [], {}
    for name in names:
        sig = low.meta["signatures"].get(name)
        m = timer.function(name) if sig is not None else None
        if m is None:
            return None
        args = [tvm.runtime.tensor(_random_arg(s, d, rng), timer.dev) for s, d in sig]
        number = (numbers or {}).get(name)
        if number is None:
            first = m.time_evaluator(name, timer.dev, number=1, repeat=5)(*args).results
            est = max(min(float(t) for t in first), 1e-8)
            number = int(min(10_000, max(1, round(window_us * 1e-6 / est))))
        used[name] = int(number)
        evs.append((m.time_evaluator(name, timer.dev, number=int(number), repeat=int(windows)), args))

    def run() -> list[float]:
        per = [[float(t) * 1e3 for t in ev(*args).results] for ev, args in evs]
        return [sum(v) for v in zip(*per)]

    return run, used
