"""The x86 depthwise kernels of MobileNetV2 224 with `depthwise.DW_PAIRS` off and on, interleaved in one process.

`OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 python -m benchmarks.dw_pairs [--rounds 5 --number 30]`: every depthwise layer
shape of the network is built twice (the widening requantize epilogue and `requant_expr`'s even/odd-lane form), the
two outputs are compared equal, and each kernel's time is the minimum over `rounds` interleaved rounds of
`time_min(number)` calls; the last line is the sum over the network, weighted by how often it calls each shape.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from benchmarks.kernels import qc_layer_kernel, time_min
from benchmarks.mbv2 import mbv2_depthwise_layers

log = logging.getLogger("benchmarks.dw_pairs")


def main(argv: list[str] | None = None) -> dict:
    import tvm

    import qcompile.backends.tvm.schedules.x86.depthwise as dwmod
    from qcompile.backends.tvm.targets import host_x86_target

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=30)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = tvm.target.Target(host_x86_target(1))
    calls, shapes = mbv2_depthwise_layers()
    runs = {}
    saved = dwmod.DW_PAIRS
    try:
        for key, ly in shapes.items():
            for pairs in (False, True):
                dwmod.DW_PAIRS = pairs
                run, mode, out = qc_layer_kernel(ly, target, with_out=True)
                run()
                runs[key, pairs] = (run, out, mode)
            if not np.array_equal(runs[key, False][1](), runs[key, True][1]()):
                raise AssertionError(f"depthwise {key}: outputs differ between the two epilogues")
    finally:
        dwmod.DW_PAIRS = saved
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for k, (run, _, _) in runs.items():
            best[k] = min(best[k], time_min(run, number=args.number))
    total = {False: 0.0, True: 0.0}
    rows = []
    for key in shapes:
        before, after = best[key, False] * 1e6, best[key, True] * 1e6
        total[False] += before * calls[key]
        total[True] += after * calls[key]
        rows.append({"layer": key, "calls": calls[key], "mode": runs[key, True][2], "before_us": before,
                     "after_us": after})
        log.info("%s x%d %s: %.1f -> %.1f us (%.2f)", key, calls[key], runs[key, True][2], before, after,
                 after / before)
    log.info("depthwise sum: %.0f -> %.0f us (%.3f)", total[False], total[True], total[True] / total[False])
    return {"rows": rows, "sum_before_us": total[False], "sum_after_us": total[True]}


if __name__ == "__main__":
    main()
