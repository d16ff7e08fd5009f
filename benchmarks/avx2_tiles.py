"""The AVX2 (no VNNI) int16 GEMM's tile, per MobileNetV2 layer (session 17, engineer C, issue 20).

`python -m benchmarks.avx2_tiles [--rounds R] [--number N] [--layers SUBSTR ...] [--tiles TOxTP ...]` compiles
every distinct groups=1 conv of MobileNetV2 1.0 at 224 (`epilogue.gemm_layers`) once per tile (`GemmKnobs(to,
tp)`; "default" is `gemm.default_knobs(mode, K, P, O, threads)`, the untuned kernel), checks that all write the
same codes, and times them interleaved in `R` rounds of `N` calls in this process (`kernels.time_min`), printing
each tile's minimum over all rounds and the sums weighted by how often the network runs each layer. AVX2 has 16
ymm registers: a `to x tp` tile holds `to * tp / 8` accumulators, plus the broadcast weight and (unless the
`vpmaddwd` reads it from memory) the activation vectors. Needs an AVX2 host without VNNI (mode "i16" or "u8s8");
run it with `OMP_NUM_THREADS=1 TVM_NUM_THREADS=1` for 1-thread figures; it names the host's CPU and load.
`--clock thread` (1 thread only) times each call by this thread's CPU time (`time.thread_time`) instead of wall
time: on a shared, oversubscribed host the minima then leave out the time the kernel waited for a core.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.epilogue import host_target_and_layers
from benchmarks.kernels import qc_layer_kernel, time_min


def _knobs(spec: str):
    from qcompile.backends.tvm.schedules.x86.gemm import GemmKnobs

    to, tp = (int(v) for v in spec.split("x"))
    return GemmKnobs(to, tp)


def _thread_time_min(fn, number: int, warmup: int = 2) -> float:
    """Smallest CPU time (seconds) of this thread over `number` calls of `fn` (a 1-thread kernel runs in it)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(number):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=30)
    ap.add_argument("--layers", nargs="*", default=None, help="only layers whose name contains one of these")
    ap.add_argument("--tiles", nargs="*", default=["8x16", "6x16", "4x24", "4x16", "3x32"],
                    help="tiles TOxTP to compare with the default")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="time calls by wall time or (1 thread) by this thread's CPU time")
    args = ap.parse_args(argv)
    if args.clock == "thread" and os.environ.get("TVM_NUM_THREADS") != "1":
        raise SystemExit("--clock thread: set TVM_NUM_THREADS=1 (other threads' CPU time is not counted)")
    timer = _thread_time_min if args.clock == "thread" else time_min
    target, layers = host_target_and_layers(args)
    labels = ["default", *args.tiles]
    kernels = []
    for name, ly, calls in layers:
        variants = {}
        for label in labels:
            run, mode, out = qc_layer_kernel(ly, target, knobs=None if label == "default" else _knobs(label),
                                             with_out=True)
            run()
            variants[label] = (run, out())
        if mode not in ("i16", "u8s8"):
            raise SystemExit(f"{name}: mode {mode}, this comparison needs an AVX2 host without VNNI")
        ref = variants["default"][1]
        if any(not np.array_equal(ref, v[1]) for v in variants.values()):
            raise SystemExit(f"{name}: the kernels disagree")
        kernels.append((name, ly, calls, mode, variants))
    best = {(name, v): float("inf") for name, *_ in kernels for v in labels}
    for _ in range(args.rounds):
        for name, _ly, _calls, _mode, variants in kernels:
            for v, (run, _) in variants.items():
                best[name, v] = min(best[name, v], timer(run, args.number, warmup=2))
    tot = {v: 0.0 for v in labels}
    print(f"{'layer':16} {'C->O @px (K)':22} {'calls':>5} {'mode':5} " + " ".join(f"{v:>8}" for v in labels))
    for name, ly, calls, mode, _ in kernels:
        us = {v: best[name, v] * 1e6 for v in labels}
        for v in tot:
            tot[v] += us[v] * calls
        shape = f"{ly.c}->{ly.o} @{ly.ho} ({ly.c * ly.k * ly.k})"
        print(f"{name:16} {shape:22} {calls:5d} {mode:5} " + " ".join(f"{us[v]:8.1f}" for v in labels))
    print(f"{'sum x calls':16} {'':22} {'':5} {'':5} " + " ".join(f"{tot[v]:8.1f}" for v in labels))
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
