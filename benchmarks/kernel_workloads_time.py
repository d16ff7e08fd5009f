"""Time `kernel_workloads` on the demo's space and on `mobilenet_v2` at 224: first call, unseen blocks, memo hits.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.kernel_workloads_time --space demo --n 8
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.kernel_workloads_time --space mobilenet_v2 --n 8
    (add --baseline for the same run without the round-10 savings)

Run in a fresh process. `first_s`: the first call of the process (qcompile imported; the per-space setup
that `kernel_workloads` caches, e.g. a skeleton supernet, included). `cold_s`: each of `--n` random configs
(bits {2, 3, 4, 8, 32}) with the per-block memo cleared first, so every block is unseen. `warm`: the same
config right after, every block in the memo. `one_block_s`: then the config with one block's kernel size
changed (its other blocks in the memo, so only that block is planned, on a window of the supernet graph).
Each time is given as wall time (`*_s`) and as this process's CPU time (`*_cpu_s`, `time.process_time`): on a
shared, loaded host the wall time of a single-threaded call is mostly waiting for a core, the CPU time is not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="demo", help="demo, or a qcompile space name at 224 px (1000 classes)")
    ap.add_argument("--n", type=int, default=8, help="configs timed")
    ap.add_argument("--seed", type=int, default=7000, help="seed of the first config")
    ap.add_argument("--baseline", action="store_true",
                    help="time the planning as before round 10: no target-feature or signature cache, every "
                         "config planned at its own resolution")
    args = ap.parse_args(argv)
    from benchmarks.latency_table import get_space
    from qcompile.search.latency import workloads

    if args.baseline:
        _baseline(workloads)
    space = get_space(args.space, 224)
    bits = (2, 3, 4, 8, 32)
    cfgs = [space.sample(seed=args.seed + i, bits=bits) for i in range(args.n)]
    def timed(cfg) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        workloads.kernel_workloads(space, cfg, "x86", 1)
        return time.perf_counter() - t0, time.process_time() - c0

    first, first_cpu = timed(space.sample(seed=999, bits=bits))
    cold, warm, one, cold_cpu, one_cpu = [], [], [], [], []
    for i, cfg in enumerate(cfgs):
        workloads._MEMO.clear()  # noqa: SLF001 - every block unseen
        t, c = timed(cfg)
        cold.append(t)
        cold_cpu.append(c)
        warm.append(timed(cfg)[0])
        bs = [j for j, (si, b) in enumerate(space._block_slots) if b < space.stage_depth(cfg, si)]  # noqa: SLF001
        j = bs[(7 * i) % len(bs)]
        choices = [k for k in space.stages[space._block_slots[j][0]].kernels if k != cfg.kernels[j]]  # noqa: SLF001
        if choices:
            ks = list(cfg.kernels)
            ks[j] = choices[0]
            t, c = timed(dataclasses.replace(cfg, kernels=tuple(ks)))
            one.append(t)
            one_cpu.append(c)
    # configs with a kernel holding nodes of two blocks (a float island across a block boundary): the memo
    # refused these before kernels were owned by the block of their last node
    spans = sum(
        any(len({m.groups() for m in map(workloads._BLOCK_RE.match, r.nodes) if m}) > 1  # noqa: SLF001
            for r in workloads.plan_config(space, cfg, "x86", 1))
        for cfg in cfgs
    )
    print(
        json.dumps(
            {
                "space": args.space,
                "first_s": round(first, 4),
                "first_cpu_s": round(first_cpu, 4),
                "cold_s": [round(t, 4) for t in cold],
                "cold_median_s": round(statistics.median(cold), 4),
                "cold_cpu_s": [round(t, 4) for t in cold_cpu],
                "cold_cpu_median_s": round(statistics.median(cold_cpu), 4),
                "warm_median_ms": round(statistics.median(warm) * 1e3, 3),
                "warm_max_ms": round(max(warm) * 1e3, 3),
                "one_block_s": [round(t, 4) for t in one],
                "configs_with_a_kernel_across_blocks": spans,
                "one_block_median_s": round(statistics.median(one), 4) if one else None,
                "one_block_cpu_median_s": round(statistics.median(one_cpu), 4) if one_cpu else None,
                "baseline": args.baseline,
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "load": os.getloadavg(),
            }
        )
    )
    return 0


def _baseline(workloads) -> None:
    """Undo the round-10 savings in this process (the kernel lists are the same either way)."""
    import inspect

    from qcompile.backends.tvm.intrin import common
    from qcompile.ops import table

    class _Forget(dict):
        def __setitem__(self, k, v) -> None:
            pass

    common._FEATURES = _Forget()  # noqa: SLF001
    table._signature = inspect.signature  # noqa: SLF001
    workloads.PLAN_RESOLUTION = 1 << 30


if __name__ == "__main__":
    raise SystemExit(main())
