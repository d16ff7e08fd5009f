"""The x86 GEMM's requantize epilogue, widening form against the even/odd-lane form, per MobileNetV2 layer.

`python -m benchmarks.epilogue [--rounds R] [--number N] [--shift S] [--layers SUBSTR ...]` compiles every
distinct groups=1 conv of MobileNetV2 1.0 at 224 (stem im2col, expand and project 1x1, head; `mbv2.mbv2_layers`)
twice with `pointwise_conv_x86(..., pairs=False)` and `pairs=True` (`requant.requant_expr`), checks that both
kernels write the same codes, and times them interleaved in `R` rounds of `N` calls in this process
(`kernels.time_min`), printing each variant's minimum over all rounds, and the sums weighted by how often the
network runs each layer. Run it with `OMP_NUM_THREADS=1 TVM_NUM_THREADS=1` for 1-thread figures; it names the
host's CPU and load. Speed does not depend on the values (random codes, one multiplier and shift per channel).
"""

from __future__ import annotations

import argparse
import collections
import os
from typing import Any

import numpy as np

from benchmarks.kernels import qc_layer_kernel, time_min
from benchmarks.mbv2 import ConvLayer, mbv2_layers
from qcompile.bench.harness import _cpu_info


def gemm_layers(resolution: int = 224) -> list[tuple[str, ConvLayer, int]]:
    """Distinct groups=1 conv layers of MobileNetV2 as `(first name, layer, calls per network)`."""
    count: collections.Counter = collections.Counter()
    first: dict[ConvLayer, str] = {}
    for name, ly, _res, _start in mbv2_layers(resolution):
        if ly.groups == 1:
            count[ly] += 1
            first.setdefault(ly, name)
    return [(first[ly], ly, n) for ly, n in count.items()]


def host_target_and_layers(args: argparse.Namespace, what: str = "") -> tuple[Any, list]:
    """This host's TVM target (`TVM_NUM_THREADS` threads) and the layers of `gemm_layers` that `args.layers`
    selects; prints the header line (CPU, mcpu, load, `what`, rounds x calls) every figure needs."""
    import tvm

    from qcompile.backends.tvm.targets import host_x86_target

    target = tvm.target.Target(host_x86_target(int(os.environ.get("TVM_NUM_THREADS", "1"))))
    every = gemm_layers()
    layers = [t for t in every if not args.layers or any(s in t[0] for s in args.layers)]
    if not layers:
        raise SystemExit(f"--layers {' '.join(args.layers)}: no layer name contains these; the names: "
                         + " ".join(t[0] for t in every))
    cpu = _cpu_info("model name") or "unknown CPU"
    print(f"CPU {cpu}, mcpu {target.attrs.get('mcpu')}, load {os.getloadavg()[0]:.1f}, "
          f"{what}{args.rounds} rounds x {args.number} calls, interleaved, minima")
    return target, layers


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=40)
    ap.add_argument("--shift", type=int, default=40, help="every channel's shift (< 32: the int64 tail)")
    ap.add_argument("--layers", nargs="*", default=None, help="only layers whose name contains one of these")
    args = ap.parse_args(argv)
    target, layers = host_target_and_layers(args, f"shift {args.shift}, ")
    kernels = []
    for name, ly, calls in layers:
        variants = {}
        for pairs in (False, True):
            run, mode, out = qc_layer_kernel(ly, target, pairs=pairs, shift=args.shift, with_out=True)
            run()
            variants[pairs] = (run, out())
        if not np.array_equal(variants[False][1], variants[True][1]):
            raise SystemExit(f"{name}: the two epilogues disagree")
        kernels.append((name, ly, calls, mode, variants))
    best = {(name, p): float("inf") for name, *_ in kernels for p in (False, True)}
    for _ in range(args.rounds):
        for name, _ly, _calls, _mode, variants in kernels:
            for p, (run, _) in variants.items():
                best[name, p] = min(best[name, p], time_min(run, args.number, warmup=2))
    tot = {False: 0.0, True: 0.0}
    print(f"{'layer':16} {'C->O @px (K)':22} {'calls':>5} {'mode':8} {'widen us':>9} {'pairs us':>9} {'ratio':>6}")
    for name, ly, calls, mode, _ in kernels:
        a, b = best[name, False] * 1e6, best[name, True] * 1e6
        tot[False] += a * calls
        tot[True] += b * calls
        shape = f"{ly.c}->{ly.o} @{ly.ho} ({ly.c * ly.k * ly.k})"
        print(f"{name:16} {shape:22} {calls:5d} {mode:8} {a:9.1f} {b:9.1f} {b / a:6.2f}")
    print(f"{'sum x calls':16} {'':22} {'':5} {'':8} {tot[False]:9.1f} {tot[True]:9.1f} {tot[True] / tot[False]:6.2f}")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
