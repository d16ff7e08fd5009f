"""Window plans (`workloads.window_workloads`, one group at a time) against the whole config's plan, per group.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.workload_windows --space demo --n 2
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.workload_windows --space mobilenet_v2 --n 1

For `--n` random configs (bits {2, 3, 4, 8, 32}) of the space (`demo`, or a qcompile space at 224 px), every
group but the stem is planned on its own window and compared with that group's kernels in the whole config's
plan (`plan_config`, split by `_split`). Prints one line per config (times) and the number of differences.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="demo")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--seed", type=int, default=500)
    args = ap.parse_args(argv)
    from benchmarks.latency_table import get_space
    from qcompile.search.latency import workloads as W

    space = get_space(args.space, 224)
    bad = 0
    for i in range(args.n):
        cfg = space.sample(seed=args.seed + i, bits=(2, 3, 4, 8, 32))
        order = list(W.block_keys(space, cfg))
        t0 = time.perf_counter()
        exact = W._split(W.plan_config(space, cfg, "x86", 1))  # noqa: SLF001
        t_whole = time.perf_counter() - t0
        tw = []
        for g in order[1:]:
            t0 = time.perf_counter()
            got = W.window_workloads(space, cfg, [g], order, "x86", 1)
            tw.append(time.perf_counter() - t0)
            bad += sum(ws != exact.get(gg) for gg, ws in got.items())
        print(json.dumps({"config": i, "groups": len(order), "whole_s": round(t_whole, 3),
                          "window_median_s": round(statistics.median(tw), 3), "window_max_s": round(max(tw), 3)}))
    print(json.dumps({"differences": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
