"""A host memory probe for the peer harness: is the memory side of the host quiet in this round?

Why: on this project's VM the host under it has slowed every runtime 1.5-1.8x for tens of minutes (sessions 15
and 16: MobileNetV2's driver 2.5 ms at 2 threads against 1.46 quiet) while a register-only `vpdpbusd` loop ran
at full speed, hypervisor steal read 0-3 % and the harness's others-load figure (CPU use inside this VM) read
~0: what slowed was the host's shared L3/DRAM, which nothing inside the VM counts. A timed pass over a buffer
larger than the L2 does see it, so the harness runs this probe between rounds (in its own process, outside
every runner's timed call, after the settle wait) and labels each round by it.

The probe: `passes` timed streaming reads (`np.bitwise_or.reduce` over int64: one OR per 8 bytes, far below
what the core can do, so the read bandwidth decides) of an `mb`-MiB buffer, giving the best pass's GB/s, and
`passes` timed gathers of `lines` random 64-byte lines of the same buffer (`np.take`: independent loads, so
the misses' throughput, not one miss's latency), giving the best pass's ns per line. Best of passes, because
one pass can lose its core to an interrupt; the host's state lasts minutes, far longer than a round.

Quiet rounds (`quiet_rounds`): round i is quiet when its stream bandwidth b_i >= (1 - pct / 100) * max_j b_j,
i.e. within `pct` % of the run's best probe. The harness reports every runner's median over the quiet rounds
*beside* its median over all rounds; no round is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcompile.errors import ConfigError

__all__ = ["HostProbe", "ProbeReading", "quiet_rounds", "summary"]

_LINE = 64  # bytes of a cache line on x86 and the Arm cores this project targets


@dataclass(frozen=True)
class ProbeReading:
    """One probe: best streaming-read bandwidth (GB/s, 1e9 bytes) and best random-line gather (ns per line)."""

    stream_gbs: float
    line_ns: float
    #: wall time of the whole probe (all passes), milliseconds
    probe_ms: float


class HostProbe:
    """A streaming read and a random-line gather over one `mb`-MiB buffer, timed `passes` times each.

    The buffer is allocated and written once here (so its pages exist before the first probe). 32 MiB is the
    L3 of this project's VM and 16x its L2, so a pass reads from L3 and DRAM, the side other VMs share."""

    def __init__(self, mb: float = 32.0, passes: int = 3, lines: int = 16384, seed: int = 0) -> None:
        if not mb > 0:
            raise ConfigError("host_probe_mb", mb, "> 0 (MiB read per pass; 0 in BenchOptions turns the probe off)")
        if passes < 1:
            raise ConfigError("passes", passes, ">= 1")
        n = max(_LINE // 8, int(mb * 2**20) // 8)
        nlines = n * 8 // _LINE
        if not 1 <= lines <= nlines:
            raise ConfigError("lines", lines, f"1..{nlines} (the buffer's 64-byte lines)")
        self.mb, self.passes, self.lines = float(mb), passes, lines
        self.buf = np.ones(n, np.int64)
        rng = np.random.default_rng(seed)
        # the first int64 of each chosen line, in random order: no two loads share a line, no prefetchable stride
        self.idx = rng.choice(nlines, size=lines, replace=False).astype(np.intp) * (_LINE // 8)

    def __call__(self) -> ProbeReading:
        t_start = time.perf_counter()
        stream = gather = float("inf")
        for _ in range(self.passes):
            t0 = time.perf_counter()
            np.bitwise_or.reduce(self.buf)
            t1 = time.perf_counter()
            np.take(self.buf, self.idx)
            t2 = time.perf_counter()
            stream, gather = min(stream, t1 - t0), min(gather, t2 - t1)
        return ProbeReading(self.buf.nbytes / stream / 1e9, gather / self.lines * 1e9,
                            (time.perf_counter() - t_start) * 1e3)


def quiet_rounds(stream_gbs: Sequence[float], pct: float) -> list[bool]:
    """Which rounds were quiet: b_i >= (1 - pct / 100) * max(b) (within `pct` % of the best probe).

    An empty sequence gives an empty list; pct must lie in [0, 100)."""
    if not 0 <= pct < 100:
        raise ConfigError("quiet_pct", pct, "0 <= pct < 100 (% below the run's best probe a quiet round may read)")
    if not len(stream_gbs):
        return []
    floor = (1 - pct / 100) * max(stream_gbs)
    return [b >= floor for b in stream_gbs]


def summary(readings: Sequence[ProbeReading], pct: float, mb: float) -> dict:
    """The probe's meta entry of a run: per-round values, the quiet flags, median / minimum / best bandwidth."""
    gbs = [r.stream_gbs for r in readings]
    quiet = quiet_rounds(gbs, pct)
    out: dict = {"mb": mb, "quiet_pct": pct, "stream_gbs": [round(v, 3) for v in gbs],
                 "line_ns": [round(r.line_ns, 3) for r in readings],
                 "probe_ms": [round(r.probe_ms, 3) for r in readings], "quiet": quiet, "n_quiet": int(sum(quiet))}
    if gbs:
        out.update(median_gbs=float(np.median(gbs)), min_gbs=float(min(gbs)), best_gbs=float(max(gbs)),
                   median_line_ns=float(np.median(out["line_ns"])))
    return out
