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

import logging
import os

log = logging.getLogger(__name__)

__all__ = ["physical_cores", "ensure_thread_default"]


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
