"""AVX2 (no VNNI) depthwise defaults, old against new, per MobileNetV2 layer (session 17, engineer E, issue 20).

`python -m benchmarks.avx2_dw [--rounds R] [--number N] [--clock wall|thread] [--shift S]` builds each depthwise layer
of MobileNetV2 1.0 at 224 whose untuned knobs `depthwise.default_dw_knobs` changed on AVX2 (stride 2, rows of < 28
outputs: the tap-pair kernel, `AVX2_DW_S2_ROWS` rows per step) twice, with the new default and the row kernel that
was the default before (8 lanes, about 8 row vectors per step), checks both write the same codes, and times them
interleaved in `R` rounds of `N` calls in this process, printing minima and the sums weighted by how often the
network calls each layer. `--shift`: every channel's shift (>= 32: the int32 requantize tail only, below: the int64
one). Needs an AVX2 host without VNNI; `--clock thread` as in `benchmarks.avx2_tiles` (1 thread only).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.avx2_tiles import _thread_time_min
from benchmarks.kernels import qc_layer_kernel, time_min
from benchmarks.mbv2 import mbv2_depthwise_layers
from qcompile.bench.harness import _cpu_info


def main(argv: list[str] | None = None) -> None:
    import tvm

    from qcompile.backends.tvm.schedules.x86.depthwise import DwKnobs, _rows_for, target_dw_knobs
    from qcompile.backends.tvm.targets import host_x86_target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=30)
    ap.add_argument("--shift", type=int, default=36)
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("TVM_NUM_THREADS", "1"))
    if args.clock == "thread" and threads != 1:
        raise SystemExit("--clock thread: set TVM_NUM_THREADS=1 (other threads' CPU time is not counted)")
    timer = _thread_time_min if args.clock == "thread" else time_min
    target = tvm.target.Target(host_x86_target(threads))
    print(f"CPU {_cpu_info('model name')}, mcpu {target.attrs.get('mcpu')}, {threads} thread(s), load "
          f"{os.getloadavg()[0]:.1f}, {args.clock} clock, shift {args.shift}, {args.rounds} rounds x {args.number} "
          "calls, interleaved, minima")
    calls, shapes = mbv2_depthwise_layers()
    runs = {}
    for key, ly in shapes.items():
        new = target_dw_knobs(ly.ho, target, ly.k, ly.stride)
        old = DwKnobs(8, False, _rows_for(ly.ho, 8))
        if new == old or ly.ho >= 28:
            continue
        if not new.pairs or new.taps != 2 or new.vec != 8:
            raise SystemExit(f"{key}: default {new}, this comparison needs an AVX2 host without VNNI")
        built = {}
        for label, kn in (("old", old), ("new", new)):
            run, _, out = qc_layer_kernel(ly, target, knobs=kn, with_out=True, shift=args.shift)
            run()
            built[label] = (run, out())
        if not np.array_equal(built["old"][1], built["new"][1]):
            raise SystemExit(f"{key}: the kernels disagree")
        runs[key] = built
    best = {(k, v): float("inf") for k in runs for v in ("old", "new")}
    for _ in range(args.rounds):
        for k, built in runs.items():
            for v, (run, _) in built.items():
                best[k, v] = min(best[k, v], timer(run, args.number, warmup=2))
    tot = {"old": 0.0, "new": 0.0}
    print(f"{'layer (C, H, stride)':22} {'calls':>5} {'old us':>8} {'new us':>8} {'new/old':>7}")
    for k in runs:
        o, n = best[k, "old"] * 1e6, best[k, "new"] * 1e6
        tot["old"] += o * calls[k]
        tot["new"] += n * calls[k]
        print(f"{str(k):22} {calls[k]:5d} {o:8.1f} {n:8.1f} {n / o:7.2f}")
    print(f"{'sum x calls':22} {'':5} {tot['old']:8.1f} {tot['new']:8.1f} {tot['new'] / tot['old']:7.2f}")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
