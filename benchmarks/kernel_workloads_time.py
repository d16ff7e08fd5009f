"""Time `kernel_workloads` for configs with unseen blocks (the slow path) on the demo's space.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.kernel_workloads_time --n 8

The skeleton supernet is built and one warm-up config planned first (both cached per process); then each of
`--n` random configs (bits {2, 3, 4, 8, 32}) is planned with an empty per-block memo, so every block is unseen.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    from benchmarks.latency_table import demo_space
    from qcompile.search.latency import workloads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="configs timed")
    ap.add_argument("--seed", type=int, default=7000, help="seed of the first config")
    args = ap.parse_args(argv)
    space = demo_space()
    bits = (2, 3, 4, 8, 32)
    workloads.kernel_workloads(space, space.sample(seed=999, bits=bits), "x86", 1)  # skeleton, imports
    ts = []
    for i in range(args.n):
        workloads._MEMO.clear()  # noqa: SLF001 - every block unseen
        cfg = space.sample(seed=args.seed + i, bits=bits)
        t0 = time.perf_counter()
        workloads.kernel_workloads(space, cfg, "x86", 1)
        ts.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "seconds": [round(t, 3) for t in ts],
                "median_s": round(statistics.median(ts), 3),
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "load": os.getloadavg(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
