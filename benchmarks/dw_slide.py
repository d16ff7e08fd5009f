"""The x86 depthwise kernels of MobileNetV2 224: the default before the sliding tap quads and with them.

`OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 python -m benchmarks.dw_slide [--rounds 5 --number 30]`: every depthwise layer
shape of the network is built with `default_dw_knobs(..., vbmi=False)` (the choice before `depthwise_conv_slide_x86`:
tap quads, vertical quads or rows) and with this target's default (the sliding quads where it has AVX512-VBMI),
the two outputs are compared equal, and each kernel's time is the minimum over `rounds` interleaved rounds of
`time_min(number)` calls; the last line is the sum over the network, weighted by how often it calls each shape.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from benchmarks.kernels import qc_layer_kernel, time_min
from benchmarks.mbv2 import mbv2_depthwise_layers

log = logging.getLogger("benchmarks.dw_slide")


def _kind(knobs) -> str:
    if knobs.slide:
        return f"slide{knobs.vec}x{knobs.rows}" + ("-chan" if knobs.plane == "channel" else "")
    if knobs.vquads:
        return f"vquads{knobs.vec}x{knobs.rows}"
    return (f"{'quads' if knobs.taps == 4 else 'pairs'}" if knobs.pairs else "rows") + f"{knobs.vec}x{knobs.rows}"


def main(argv: list[str] | None = None) -> dict:
    import tvm

    from qcompile.backends.tvm.intrin.x86 import has_avx512, has_vnni
    from qcompile.backends.tvm.schedules.x86.depthwise import default_dw_knobs, target_dw_knobs
    from qcompile.backends.tvm.targets import host_x86_target

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=30)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = tvm.target.Target(host_x86_target(1))
    calls, shapes = mbv2_depthwise_layers()
    runs, knobs = {}, {}
    for key, ly in shapes.items():
        knobs[key, "before"] = default_dw_knobs(ly.ho, has_avx512(target), vnni=has_vnni(target), kw=ly.k,
                                                stride=ly.stride)
        knobs[key, "after"] = target_dw_knobs(ly.ho, target, ly.k, ly.stride)
        for which in ("before", "after"):
            run, _, out = qc_layer_kernel(ly, target, knobs=knobs[key, which], with_out=True)
            run()
            runs[key, which] = (run, out)
        if not np.array_equal(runs[key, "before"][1](), runs[key, "after"][1]()):
            raise AssertionError(f"depthwise {key}: outputs differ between the two kernels")
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for k, (run, _) in runs.items():
            best[k] = min(best[k], time_min(run, number=args.number))
    total = {"before": 0.0, "after": 0.0}
    rows = []
    for key in shapes:
        before, after = best[key, "before"] * 1e6, best[key, "after"] * 1e6
        total["before"] += before * calls[key]
        total["after"] += after * calls[key]
        rows.append({"layer": key, "calls": calls[key], "before": _kind(knobs[key, "before"]),
                     "after": _kind(knobs[key, "after"]), "before_us": before, "after_us": after})
        log.info("| %d, %d, %d | x%d | %s | %s | %.1f | %.1f | %.2f |", *key, calls[key], rows[-1]["before"],
                 rows[-1]["after"], before, after, after / before)
    log.info("depthwise sum over the network: %.0f -> %.0f us (%.3f)", total["before"], total["after"],
             total["after"] / total["before"])
    return {"rows": rows, "sum_before_us": total["before"], "sum_after_us": total["after"]}


if __name__ == "__main__":
    main()
