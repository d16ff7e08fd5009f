"""A host memory probe for the peer harness: is the memory side of the host quiet in this round?

Why: on this project's VM the host under it has slowed every runtime 1.5-1.8x for tens of minutes (sessions 15
and 16: MobileNetV2's driver 2.5 ms at 2 threads against 1.46 quiet) while a register-only `vpdpbusd` loop ran
at full speed, hypervisor steal read 0-3 % and the harness's others-load figure (CPU use inside this VM) read
~0: what slowed was the host's shared L3/DRAM, which nothing inside the VM counts. A timed pass over memory
does see it, so the harness runs this probe between rounds (in its own process, outside every runner's timed
call, after the settle wait) and labels each round by it.

The probe, over one `mb`-MiB buffer (16 MiB: 8x this VM's L2, half its 32 MiB L3), `passes` times each, keeping
the best pass: a gather of `lines` random 64-byte lines (`np.take`: independent loads, so the misses' throughput,
not one miss's latency), in ns per line; and a streaming read (`np.bitwise_or.reduce` over int64: one OR per 8
bytes, far below what the core can do, so the read bandwidth decides), in GB/s. Best of passes, because one pass
can lose its core to an interrupt; the host's state lasts minutes, far longer than a round.

Which figure decides (docs/peers.md, "session 16, engineer D"): beside the MobileNetV2 driver loop, the gather
read 2.5 ns/line (median) in rounds where the driver ran quiet (~1376 us) and 5.5 where it ran >= 2300 us with no
other CPU load in the VM, while a second process busy on the other core left it at 2.65; the 32 MiB stream moved
only 10 % (33.6 -> 30.3 GB/s). The buffer fits the L3 when the host is quiet; neighbours that evict it send the
gather to DRAM.

What it did not see (docs/peers.md, session 16 window): in a harness run on a disturbed host (every runner's
median 1.3-1.8x its minimum), the per-round gather did not correlate with any runner's time (Pearson r -0.53 to
+0.02 over 30 rounds). One probe per round samples a moment; the disturbance moved faster. So its figures are a
report beside the medians, not a filter: the acceptance figures stay the medians over all rounds.

Quiet rounds (`quiet_rounds`): round i is quiet when its gather's line rate is within `pct` % of the run's best,
i.e. ns_i <= min_j ns_j / (1 - pct / 100). The harness reports every runner's median over the quiet rounds
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

    The buffer is allocated and written once here (so its pages exist before the first probe)."""

    def __init__(self, mb: float = 16.0, passes: int = 5, lines: int = 16384, seed: int = 0) -> None:
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


def quiet_rounds(line_ns: Sequence[float], pct: float) -> list[bool]:
    """Which rounds were quiet: their gather's line rate 1 / ns_i is within `pct` % of the best rate,
    i.e. ns_i <= min(ns) / (1 - pct / 100).

    An empty sequence gives an empty list; pct must lie in [0, 100)."""
    if not 0 <= pct < 100:
        raise ConfigError("quiet_pct", pct, "0 <= pct < 100 (% below the run's best probe a quiet round may read)")
    if not len(line_ns):
        return []
    ceiling = min(line_ns) / (1 - pct / 100)
    return [ns <= ceiling for ns in line_ns]


def summary(readings: Sequence[ProbeReading], pct: float, mb: float) -> dict:
    """The probe's meta entry of a run: per-round values, the quiet flags (`quiet_rounds` on the gather), the
    gather's median / best / worst ns per line and the stream's median / minimum / best GB/s."""
    ns = [r.line_ns for r in readings]
    gbs = [r.stream_gbs for r in readings]
    quiet = quiet_rounds(ns, pct)
    out: dict = {"mb": mb, "quiet_pct": pct, "quiet_by": "line_ns", "line_ns": [round(v, 3) for v in ns],
                 "stream_gbs": [round(v, 3) for v in gbs], "probe_ms": [round(r.probe_ms, 3) for r in readings],
                 "quiet": quiet, "n_quiet": int(sum(quiet))}
    if readings:
        out.update(median_line_ns=float(np.median(ns)), best_line_ns=float(min(ns)), worst_line_ns=float(max(ns)),
                   median_gbs=float(np.median(gbs)), min_gbs=float(min(gbs)), best_gbs=float(max(gbs)))
    return out
