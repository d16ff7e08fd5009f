"""When a kernel gets a parallel region: only where its estimated serial time pays for waking and joining the pool.

Every `sch.parallel` loop makes each call of the kernel a fork/join of TVM's thread pool. A network of ~200
kernels of ~2 us each (the demo's 32 px subnet) then pays ~200 joins per inference; when the worker thread
is asleep or descheduled (a loaded machine), one join costs up to a scheduler tick, so the whole network ran
slower at 2 threads than at 1. A kernel therefore runs serially on the calling thread unless its estimated
serial time reaches `DEFAULT_MIN_US`.

The estimate is `work x UNIT_COST_NS[kind]`: `work` is the kernel's scalar inner-loop iterations (multiply-
accumulates for convs and GEMMs, taps for depthwise convs, elements for element-wise kernels, input elements for
reductions), known at every schedule call site before any loop is transformed; `kind` says what one iteration
costs. Raw iterations are not comparable across kinds: a depthwise tap or an element-wise element costs 10-50x
a VNNI MAC, so a rule on raw iterations left MobileNetV2's mid-sized depthwise kernels (576 x 14 x 14 x 9 taps,
~200 us) serial while it parallelised GEMMs of a few microseconds.

`UNIT_COST_NS` is measured once per CPU by `python -m benchmarks.parallel_costs` (serial kernels of each kind
at two sizes, 1 thread; the cost is the slope, so call overhead drops out). Every `sch.parallel` site of the
schedules (x86, ARM, the default schedule in `pipeline.py`) goes through `parallel_if_worth` with its kind.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from qcompile.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MIN_US",
    "ENV_MIN_US",
    "ENV_MIN_WORK",
    "KINDS",
    "UNIT_COST_NS",
    "estimated_us",
    "min_parallel_us",
    "parallel_if_worth",
]

#: Serial nanoseconds per unit of `work`, by kernel kind. Measured by `python -m benchmarks.parallel_costs` on
#: "Intel(R) Xeon(R) Processor" (LLVM mcpu emeraldrapids: AVX-512 VNNI, AVX-VNNI, AMX-INT8), 1 thread, untuned
#: default schedules, minimum of 300 single calls, 2026-12-06 19:45 UTC, load average 10-11 from other jobs
#: (docs/benchmarks_demo.md, "Parallel regions"); rounded to two digits. ARM kernels use the kind of the same
#: instruction class (`sdot` GEMM = "gemm_dot", the NEON fallback = "gemm_int16"); those costs were not measured
#: on an ARM core.
UNIT_COST_NS: dict[str, float] = {
    # packed-GEMM conv (pointwise or im2col), per MAC, packing and requantize epilogue included:
    "gemm_dot": 0.0080,  # int8 dot-product intrinsic: AVX-512 VNNI / AVX-VNNI vpdpbusd, ARM sdot
    "gemm_amx": 0.0039,  # AMX-INT8 tdpbusd tiles (MobileNetV2-sized 1x1 convs, 20:16 UTC, load 9)
    "gemm_int16": 0.023,  # int16 multiply-add: AVX2 vpmaddwd / vpmaddubsw, ARM smull/saddlp
    "gemv": 0.023,  # linear layer (batch rows x K x O), per MAC: weight-load bound
    "depthwise": 0.042,  # depthwise conv, per tap (x86 row and tap-pair kernels, ARM NHWC kernel)
    "elementwise": 0.21,  # flat uint8 element-wise kernel (add, rescale; int64 arithmetic), per element
    "reduce": 0.075,  # global mean, per input element
    "naive": 0.47,  # default schedule (`pipeline.schedule_primfunc`), spatial block, per element
    "naive_reduce": 0.052,  # default schedule, reduction block, per loop iteration
}

#: The kinds `parallel_if_worth` accepts.
KINDS = frozenset(UNIT_COST_NS)

#: Estimated serial time (us) from which a kernel gets a parallel region. On 2 threads a kernel of t us takes about
#: t/2 + J, J the fork/join: a few us on a quiet machine, up to a scheduler tick when the worker thread is asleep
#: or descheduled (a loaded machine). Chosen on a quiet machine (docs/benchmarks_demo.md, "Parallel regions",
#: quiet window): at 2 threads MobileNetV2 224 took 2459 us at 10 us, 2580 us at 25 us and 2483 us with every
#: kernel parallel (at 25 us five AMX convs of 10-23 us stay serial); the demo's 32 px subnet took 812 / 810 /
#: 921 us (never parallel: 775 us), so 10 us costs the small network nothing measurable when quiet. Under heavy
#: load the one demo kernel above 10 us (a 19 us VNNI 1x1 conv) waits for a descheduled worker; raise the
#: threshold with `QCOMPILE_PARALLEL_MIN_US` on a machine shared with other jobs.
DEFAULT_MIN_US = 10.0

#: Environment variable overriding `DEFAULT_MIN_US` (a number >= 0; 0 parallelises every kernel), read at schedule
#: time so a benchmark can build the same network several ways in one process.
ENV_MIN_US = "QCOMPILE_PARALLEL_MIN_US"

#: Environment variable selecting the unweighted rule instead: parallel when the raw inner iterations reach this
#: integer, whatever the kind. Kept so that `benchmarks.parallel_regions` can time both rules in one process.
ENV_MIN_WORK = "QCOMPILE_PARALLEL_MIN_WORK"


def _env_number(name: str, cast: type, allowed: str) -> float | int | None:
    """The non-negative number in environment variable `name` (None when unset or empty); `ConfigError` naming the
    variable, its value and `allowed` otherwise."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = cast(raw)
    except ValueError:
        value = -1
    if not value >= 0:  # also rejects nan
        raise ConfigError(f"{name}={raw!r}: expected {allowed}")
    return value


def min_parallel_us() -> float:
    """The threshold in force (us of estimated serial time): `QCOMPILE_PARALLEL_MIN_US` if set, else the default."""
    value = _env_number(ENV_MIN_US, float, "a number >= 0 (microseconds; 0 = always parallel)")
    return DEFAULT_MIN_US if value is None else float(value)


def _min_raw_work() -> int | None:
    value = _env_number(ENV_MIN_WORK, int, "an integer >= 0 (raw inner iterations; 0 = always parallel), or unset "
                        f"for the rule on estimated time ({ENV_MIN_US})")
    return None if value is None else int(value)


def estimated_us(work: int, kind: str) -> float:
    """Estimated serial time (us) of a kernel of `kind` doing `work` units: `work * UNIT_COST_NS[kind] / 1000`."""
    if kind not in UNIT_COST_NS:
        raise ConfigError(f"parallel kernel kind {kind!r}: expected one of {sorted(UNIT_COST_NS)}")
    return int(work) * UNIT_COST_NS[kind] * 1e-3


def parallel_if_worth(sch: Any, loop: Any, work: int, kind: str, threshold_us: float | None = None) -> bool:
    """Annotate `loop` parallel when the kernel's estimated serial time (`estimated_us(work, kind)`) reaches the
    threshold (`threshold_us`, default `min_parallel_us()`); with `QCOMPILE_PARALLEL_MIN_WORK` set and no
    `threshold_us`, when the raw `work` reaches that instead.

    Only the loop annotation depends on it: the kernel's arithmetic, and so its bit-exact result, is the same
    either way. Returns whether the loop was annotated.
    """
    est = estimated_us(work, kind)  # validates `kind` on every path
    raw_limit = _min_raw_work() if threshold_us is None else None
    if raw_limit is not None:
        worth = int(work) >= raw_limit
    else:
        worth = est >= (min_parallel_us() if threshold_us is None else threshold_us)
    log.debug("%s kernel: work %d, est. %.1f us serial -> %s", kind, int(work), est, "parallel" if worth else "serial")
    if worth:
        sch.parallel(loop)
    return worth
