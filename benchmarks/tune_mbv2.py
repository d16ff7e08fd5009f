"""Tune every GEMM workload of MobileNetV2 into the persistent tuning database (once per machine).

    .venv/bin/python -m benchmarks.tune_mbv2 --family avx2      # or avx512-vnni, host

Later lowerings of any subnet with these layer shapes pick the records up (`schedules.x86.tune.lookup_knobs`).
"""

from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger(__name__)


def tune_network(target, resolution: int = 224, x_max: int = 255, w_bits: int = 8) -> dict:
    """Tune each distinct depthwise conv and conv GEMM of `mbv2_layers(resolution)`; {workload key: (knobs, us)}."""
    import numpy as np

    from benchmarks.mbv2 import mbv2_layers
    from qcompile.backends.tvm.schedules.x86 import depthwise_workload, gemm_workload
    from qcompile.backends.tvm.schedules.x86.gemm import choose_mode
    from qcompile.backends.tvm.schedules.x86.tune import tune_depthwise, tune_gemm
    from qcompile.backends.tvm.tuning import TuningDB, workload_key

    rng = np.random.default_rng(0)
    done: dict = {}
    for _name, ly, _res, _start in mbv2_layers(resolution):
        if ly.kind == "depthwise":
            dwl = depthwise_workload({"x_shape": (1, ly.c, ly.h, ly.h), "w_shape": (ly.o, 1, ly.k, ly.k),
                                      "stride": ly.stride, "padding": ly.k // 2, "dilation": 1})
            key = workload_key(dwl)
            if key not in done:
                rec = TuningDB(target).get(dwl)
                done[key] = (rec["knobs"], rec["latency_us"]) if rec is not None else tune_depthwise(dwl, target)
            continue
        hw = 2 ** (w_bits - 1)
        w = rng.integers(-hw, hw, (ly.o, ly.c, ly.k, ly.k)).astype(np.int8)
        mode = choose_mode(target, w, x_max)
        wl = gemm_workload({"x_shape": (1, ly.c, ly.h, ly.h), "w_shape": (ly.o, ly.c, ly.k, ly.k),
                             "out_shape": (1, ly.o, ly.ho, ly.ho)})  # the strategy's own tuning key
        wl["mode"] = mode
        key = workload_key(wl)
        if key in done:
            continue
        rec = TuningDB(target).get(wl)
        if rec is not None:  # tuned before (by any earlier run): tune once for all
            done[key] = (rec["knobs"], rec["latency_us"])
            continue
        t0 = time.perf_counter()
        knobs, secs = tune_gemm(wl, target)
        done[key] = (knobs, secs * 1e6)
        log.info("%s -> %s %.1f us (%.0f s)", key, knobs, secs * 1e6, time.perf_counter() - t0)
    return done


def main() -> None:
    import tvm

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="avx2", help="kernel family (avx2, avx512, avx-vnni, avx512-vnni) or host")
    ap.add_argument("--resolution", type=int, default=224)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from qcompile.backends.tvm.targets import family_target, host_x86_target, runs_on_host

    tgt = host_x86_target(2) if args.family == "host" else family_target(args.family, 2)
    if not runs_on_host(tgt):
        ap.error(f"--family {args.family}: this CPU cannot execute it (tuning times kernels here)")
    target = tvm.target.Target(tgt)
    t0 = time.perf_counter()
    res = tune_network(target, args.resolution)
    log.info("tuned %d workloads in %.0f s", len(res), time.perf_counter() - t0)


if __name__ == "__main__":
    main()
