"""Per-kernel times inside the network: the native driver's profiling twin, against each kernel timed alone.

`Lowered.benchmark` times every kernel alone, back to back on the same warm buffers; the network is slower than
the sum of those times (MobileNetV2 at 2 threads on Zen 4: 1444 us against 1348 us, docs/peers.md) because each
kernel there reads an input the previous kernel just wrote (part of it in the other core's cache), weights the
previous kernels evicted, and joins a thread pool the previous kernel left. `profile` says which kernels pay it:
every x86 library with a native driver also holds `driver.PROFILE_NAME`, the driver with a cycle-counter stamp
(`rdtsc`) before every call and after the last; it runs the very kernels of `qc_driver` on the same arena and
blob, so stamp differences are the in-network times. The TSC ticks at a constant rate here (`constant_tsc
nonstop_tsc`), calibrated against `time.perf_counter` over a 50 ms sleep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompile.errors import LoweringError

__all__ = ["ProfileRow", "NetworkProfile", "Stamper", "profile_network"]

#: seconds between the two calibration calls: the stamps' error (the call's entry, ~1 us) is 2e-5 of it
_CALIBRATION_S = 0.05


@dataclass(frozen=True)
class ProfileRow:
    """One driver call: its position, kernel symbol, in-network time (min and median over the profiled runs) and
    the kernel's time alone (`Lowered.benchmark`'s minimum; None for the driver's input check, timed nowhere
    else), all in us."""

    index: int
    symbol: str
    network_min_us: float
    network_median_us: float
    isolated_us: float | None

    @property
    def delta_us(self) -> float | None:
        """In-network minimum minus the isolated minimum (what the network adds to this call)."""
        return None if self.isolated_us is None else self.network_min_us - self.isolated_us


@dataclass(frozen=True)
class NetworkProfile:
    """`rows`: every driver call in order; `stamped_min_us` / `stamped_median_us`: first stamp to last over the
    profiled runs; `call_min_us`: the plain driver (`qc_driver`, no stamps) timed from Python in the same runs,
    interleaved; `tsc_hz`: the calibrated counter rate; `threads`: TVM's pool size during the runs."""

    rows: tuple[ProfileRow, ...]
    stamped_min_us: float
    stamped_median_us: float
    call_min_us: float
    tsc_hz: float
    threads: int
    repeat: int

    @property
    def isolated_sum_us(self) -> float:
        return sum(r.isolated_us for r in self.rows if r.isolated_us is not None)

    def table(self, top: int | None = None) -> str:
        """Markdown table, the calls in network order (or the `top` of them by delta, largest first)."""
        rows = list(self.rows)
        if top is not None:
            rows = sorted(rows, key=lambda r: -(r.delta_us if r.delta_us is not None else -1e9))[:top]
        lines = ["| # | kernel | in network min us | median us | alone min us | delta us |",
                 "|---:|---|---:|---:|---:|---:|"]
        for r in rows:
            alone = "-" if r.isolated_us is None else f"{r.isolated_us:.1f}"
            delta = "-" if r.delta_us is None else f"{r.delta_us:+.1f}"
            lines.append(f"| {r.index} | {r.symbol} | {r.network_min_us:.1f} | {r.network_median_us:.1f} | {alone} "
                         f"| {delta} |")
        net_sum = sum(r.network_min_us for r in self.rows)
        lines.append(f"\n{self.threads} thread(s), {self.repeat} runs; sum of in-network minima {net_sum:.0f} us, "
                     f"stamped network min {self.stamped_min_us:.0f} us (median {self.stamped_median_us:.0f}), "
                     f"plain driver min {self.call_min_us:.0f} us, kernels alone {self.isolated_sum_us:.0f} us; "
                     f"TSC {self.tsc_hz / 1e9:.3f} GHz")
        return "\n".join(lines)


def _twin(low: Any) -> Any:
    """The library's profiling driver (`driver.PROFILE_NAME`); `LoweringError` where there is none."""
    from qcompile.backends.tvm.driver import PROFILE_NAME

    info = low.meta.get("driver")
    if info is None or not info.get("profile"):
        why = "it has no native driver (a dynamic batch or a non-straight-line program runs on the VM)" \
            if info is None else "it was built without the profiling driver (before it existed, or not for x86)"
        raise LoweringError(str(low), f"cannot profile: {why}", "lower the network again for an x86 target")
    vm = low._native_vm()
    lib = next((m for m in vm.module.imports if m.implements_function(PROFILE_NAME)), None)
    if lib is None:
        raise LoweringError(str(low), f"cannot profile: the library has no {PROFILE_NAME}",
                            "lower the network again for an x86 target")
    return lib.get_function(PROFILE_NAME)


class Stamper:
    """Runs `low`'s profiling twin and its plain driver on `low`'s bound buffers (bind them first: `low(x)`).

    `run(n)`: `n` back-to-back runs, each a profiled run followed by one plain run timed from Python; returns (the
    per-call spans in TSC ticks, n x calls; the plain runs' seconds). `hz`: the TSC rate, calibrated on
    construction. Benchmarks interleave `run` of several libraries in rounds (`benchmarks.network_profile`)."""

    def __init__(self, low: Any) -> None:
        import tvm

        from qcompile.backends.tvm.driver import DRIVER_NAME, aligned_empty

        twin = _twin(low)
        if low._driver is None:
            low._bind_native()
        if low._driver is None:
            raise LoweringError(str(low), "cannot profile: the driver is not called directly (output too large)",
                                "profile a network with a smaller output")
        info = low.meta["driver"]
        in_kernel = info.get("finite_in_kernel", [])  # checked inside a kernel: no call of its own
        self.names = [f"{DRIVER_NAME}_finite{i}" for i in info.get("finite_checked", []) if i not in in_kernel] \
            + list(info["calls"])
        self._stamps = aligned_empty((len(self.names) + 1,), np.dtype(np.int64))  # DLPack wants 64-byte alignment
        self._twin, self._args = twin, (*low._driver_args, tvm.runtime.from_dlpack(self._stamps))
        self._plain, self._plain_args = low._driver, low._driver_args
        t0 = time.perf_counter()
        twin(*self._args)
        s0 = int(self._stamps[0])
        time.sleep(_CALIBRATION_S)
        t1 = time.perf_counter()
        twin(*self._args)
        self.hz = (int(self._stamps[0]) - s0) / (t1 - t0)

    def run(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        twin, args, plain, plain_args, stamps = self._twin, self._args, self._plain, self._plain_args, self._stamps
        spans = np.empty((int(n), len(self.names)), np.int64)
        secs = np.empty(int(n))
        for r in range(int(n)):
            twin(*args)
            spans[r] = np.diff(stamps)
            t = time.perf_counter()
            plain(*plain_args)
            secs[r] = time.perf_counter() - t
        return spans, secs


def profile_network(low: Any, x: np.ndarray | None = None, repeat: int = 50, *, isolated: bool = True,
                    seed: int = 0) -> NetworkProfile:
    """Time every driver call of `low` inside the network over `repeat` back-to-back runs on input `x` (default: a
    seeded standard normal), each profiled run followed by one plain driver run timed from Python (`Stamper`);
    with `isolated`, each kernel alone too (`Lowered.benchmark(repeat=min(repeat, 20))`). `low`'s output
    afterwards is the plain driver's on `x`."""
    import tvm

    if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
        from qcompile.errors import ConfigError

        raise ConfigError("repeat", repeat, "a positive number of profiled runs")
    _twin(low)  # LoweringError before anything runs
    if x is None:
        x = np.random.default_rng(seed).standard_normal(low.input_shape).astype(low.input_dtype)
    low(x)  # checks and binds x (ConfigError on a bad input), binds the driver's arguments
    st = Stamper(low)
    st.run(3)  # warm: caches and the thread pool as in a benchmark loop
    spans, secs = st.run(int(repeat))
    us = spans * (1e6 / st.hz)
    total = us.sum(axis=1)
    alone: dict[str, float] = {}
    if isolated:
        alone = {k["name"]: k["min_ms"] * 1e3 for k in low.benchmark(repeat=min(int(repeat), 20)).kernels}
    threads = int(tvm.get_global_func("runtime.NumThreads")())
    rows = tuple(ProfileRow(i, n, float(us[:, i].min()), float(np.median(us[:, i])), alone.get(n))
                 for i, n in enumerate(st.names))
    return NetworkProfile(rows, float(total.min()), float(np.median(total)), float(secs.min() * 1e6), st.hz, threads,
                          int(repeat))
