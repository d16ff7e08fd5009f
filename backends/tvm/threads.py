"""How many threads TVM's runtime pool uses, decided before the pool exists.

TVM sizes its thread pool once, at the first parallel kernel, from `TVM_NUM_THREADS` or else from half the
logical CPUs (it assumes two hyper-threads per core). On machines without SMT (most VMs, this 2-vCPU one) that
is half the cores: every "2-thread" lowering here silently ran one worker (measured: the largest mobilenet_v2
subnet 9.0 ms, 5.6 ms with TVM_NUM_THREADS=2). Resizing later with `runtime.config_threadpool` did not bring the
second worker into play and pinned the calling thread to core 0, which every thread created afterwards in the
process (onnxruntime's, torch's) inherited. So qcompile sets the variable, from the real core count, when the
backend is imported, unless the user already did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["physical_cores", "ensure_thread_default", "pool_threads", "target_threads"]


def physical_cores() -> int:
    """CPUs this process may use, counting SMT siblings once (sysfs topology; 1 sibling if unknown)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    siblings = 1
    try:
        with open("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list") as f:
            text = f.read().strip()
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            siblings += (int(hi) - int(lo) + 1) if hi else 1
        siblings -= 1
    except (OSError, ValueError):
        siblings = 1
    return max(1, logical // max(1, siblings))


def ensure_thread_default(num_threads: int | None = None) -> int:
    """Set `TVM_NUM_THREADS` (to `num_threads`, else the physical core count) unless it is set; returns it.

    Effective only before TVM's pool is created (the first parallel kernel run in the process).
    """
    if "TVM_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(num_threads or physical_cores())
        log.debug("TVM_NUM_THREADS=%s", os.environ["TVM_NUM_THREADS"])
    return int(os.environ["TVM_NUM_THREADS"])


def target_threads(target: Any) -> int | None:
    """The thread count a lowering for `target` runs at: its `num-cores` attribute (`targets.resolve_target` sets it
    from `num_threads`), or None where the target does not say."""
    n = int(target.attrs.get("num-cores", 0) or 0) if hasattr(target, "attrs") else 0
    return n or None


@contextlib.contextmanager
def pool_threads(n: int | None) -> Iterator[int]:
    """Run the block with TVM's thread pool at `n` workers (None: as it is); yields the count in effect and restores
    the previous count and this thread's CPU set afterwards.

    The pool can shrink and grow back (`runtime.config_threadpool`), but never beyond the size it was created with
    (`TVM_NUM_THREADS`, `ensure_thread_default`): asked for more, the block runs with that many and a
    `RuntimeWarning` says so (the tuner's timings are then for fewer threads than the lowering's)."""
    import tvm

    ensure_thread_default()  # before the pool exists: its size is fixed at creation
    num = tvm.get_global_func("runtime.NumThreads")
    before = int(num())
    if n is None or int(n) == before:
        yield before
        return
    config = tvm.get_global_func("runtime.config_threadpool")
    aff = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        config(1, int(n))
        got = int(num())
        if aff is not None:  # config_threadpool may pin the calling thread to one core
            os.sched_setaffinity(0, aff)
        if got < int(n):
            warnings.warn(f"TVM's thread pool runs {got} thread(s), not the {int(n)} asked for: it was created with "
                          f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}; unset it or set it to at least "
                          f"{int(n)} before the first TVM kernel runs", RuntimeWarning, stacklevel=3)
        yield got
    finally:
        config(1, before)
        if aff is not None:
            os.sched_setaffinity(0, aff)
