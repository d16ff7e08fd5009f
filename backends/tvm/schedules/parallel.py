"""When a kernel gets a parallel region: only where its work pays for waking and joining the thread pool.

Every `sch.parallel` loop makes each call of the kernel a fork/join of TVM's thread pool. A network of ~200
kernels of ~2 us each (the demo's 32 px subnet) then pays ~200 joins per inference; when the worker thread
is asleep or descheduled (a loaded machine), one join costs up to a scheduler tick, so the whole network ran
slower at 2 threads than at 1. Kernels below `DEFAULT_MIN_WORK` therefore run serially on the calling
thread; large layers (MobileNetV2 at 224) stay parallel.

`work` is the kernel's scalar inner-loop iterations: multiply-accumulates for convs and GEMMs (output
elements x taps / reduction length), elements for element-wise kernels, input elements for reductions. It
is known at every schedule call site before any loop is transformed.

The threshold was chosen from per-kernel medians of the same kernels built with every loop parallel and
with none, in one process with a 2-thread pool (`python -m benchmarks.parallel_regions`, docs/performance.md
"Parallel regions"): see `DEFAULT_MIN_WORK`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MIN_WORK", "ENV_MIN_WORK", "min_parallel_work", "parallel_if_worth"]

#: Below this many inner iterations (about 1 MMAC: ~20 us serial for a VNNI conv) a kernel runs on one thread.
#: Measured on the demo-sized subnet (Intel Xeon, AVX-512 VNNI, 2-thread pool, load average 7-8 from other
#: jobs; median of 5 rounds x 10 `main` calls, `benchmarks/parallel_regions.py`): every kernel parallel 2.1 s per call,
#: threshold 65536 0.49 s, 262144 26 ms, no parallel kernel 1.34 ms. Under load each parallel region costs
#: up to a scheduler tick waiting for the worker, which no kernel of a few hundred kMAC can win back, so the
#: threshold sits above the demo's kernels; MobileNetV2's 224 px layers (1.6-20 MMAC pointwise, 3.6 MMAC
#: depthwise at 112 px) stay parallel, its depthwise layers at 7 px (0.4-0.5 MMAC) do not.
DEFAULT_MIN_WORK = 1 << 20

#: Environment variable overriding `DEFAULT_MIN_WORK` (an integer >= 0; 0 parallelises every kernel), read at
#: schedule time so a benchmark can build the same network both ways in one process.
ENV_MIN_WORK = "QCOMPILE_PARALLEL_MIN_WORK"


def min_parallel_work() -> int:
    """The threshold in force: `QCOMPILE_PARALLEL_MIN_WORK` if set, else `DEFAULT_MIN_WORK`."""
    raw = os.environ.get(ENV_MIN_WORK)
    if raw is None or raw == "":
        return DEFAULT_MIN_WORK
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{ENV_MIN_WORK}={raw!r}: expected an integer >= 0 (inner iterations; 0 = always parallel)")
    return value


def parallel_if_worth(sch: Any, loop: Any, work: int, threshold: int | None = None) -> bool:
    """Annotate `loop` parallel when `work` (the kernel's inner iterations) reaches the threshold.

    `threshold` defaults to `min_parallel_work()`. Only the loop annotation depends on it: the kernel's
    arithmetic, and so its bit-exact result, is the same either way. Returns whether the loop was annotated.
    """
    limit = min_parallel_work() if threshold is None else threshold
    if int(work) >= limit:
        sch.parallel(loop)
        return True
    return False
