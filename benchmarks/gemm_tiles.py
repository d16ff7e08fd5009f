"""The x86 GEMM's untuned kernel before and after sessions 12 and 13 (issue 20), per MobileNetV2 layer.

`python -m benchmarks.gemm_tiles [--rounds R] [--number N] [--layers SUBSTR ...]` compiles every distinct groups=1
conv of MobileNetV2 1.0 at 224 (`epilogue.gemm_layers`) three times: "old", `GemmKnobs(12, 16)` without the
unrolled epilogue and the split packing (the "vnni512" kernel before session 12); "s12", session 12's default,
the shape-aware `gemm.default_knobs(mode, K, P)` (a whole-row 8-lane tile at 7x7, 6x32 for K <= 24) with the
unrolled epilogue and the packing of pixel-padded GEMMs split from its zero fill (`split_pack_padding`); "new",
today's default `gemm.default_knobs(mode, K, P, O)` (session 13: 2 x 64 tiles storing 64 codes at a time for
K <= 24, `GemmKnobs.store64`, and the packing over pixel-tile chunks of the large K > O layers,
`GemmKnobs.pack_tiles`). It checks that all
three write the same codes and times them interleaved in `R` rounds of `N` calls in this process
(`kernels.time_min`), printing each variant's minimum over all rounds and the sums weighted by how often the
network runs each layer. Run it with `OMP_NUM_THREADS=1 TVM_NUM_THREADS=1` for 1-thread figures on an
AVX-512 VNNI host; it names the host's CPU and load.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.epilogue import host_target_and_layers
from benchmarks.kernels import qc_layer_kernel, time_min


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=30)
    ap.add_argument("--layers", nargs="*", default=None, help="only layers whose name contains one of these")
    args = ap.parse_args(argv)
    from qcompile.backends.tvm.schedules.x86.gemm import GemmKnobs, default_knobs

    target, layers = host_target_and_layers(args)
    VARIANTS = ("old", "s12", "new")
    kernels = []
    for name, ly, calls in layers:
        k, p = ly.c * ly.k * ly.k, ly.ho * ly.ho
        new = default_knobs("vnni512", k, p, ly.o)
        s12 = default_knobs("vnni512", k, p)
        s12 = GemmKnobs(6, 32) if s12.store64 else s12  # session 12's tile where session 13 took 2 x 64 stores
        knobs = {"old": GemmKnobs(12, 16), "s12": s12, "new": new}
        variants = {}
        for label in VARIANTS:
            run, mode, out = qc_layer_kernel(ly, target, knobs=knobs[label], with_out=True,
                                             unroll_epilogue=label != "old", split_pack_padding=label != "old")
            run()
            variants[label] = (run, out())
        if mode != "vnni512":
            raise SystemExit(f"{name}: mode {mode}, this comparison needs an AVX-512 VNNI host")
        if any(not np.array_equal(variants["old"][1], v[1]) for v in variants.values()):
            raise SystemExit(f"{name}: the kernels disagree")
        kernels.append((name, ly, calls, new, variants))
    best = {(name, v): float("inf") for name, *_ in kernels for v in VARIANTS}
    for _ in range(args.rounds):
        for name, _ly, _calls, _kn, variants in kernels:
            for v, (run, _) in variants.items():
                best[name, v] = min(best[name, v], time_min(run, args.number, warmup=2))
    tot = {v: 0.0 for v in VARIANTS}
    print(f"{'layer':16} {'C->O @px (K)':22} {'calls':>5} {'new tile':14} {'old us':>8} {'s12 us':>8} {'new us':>8} "
          f"{'new/old':>7} {'new/s12':>7}")
    for name, ly, calls, kn, _ in kernels:
        us = {v: best[name, v] * 1e6 for v in VARIANTS}
        for v in tot:
            tot[v] += us[v] * calls
        shape = f"{ly.c}->{ly.o} @{ly.ho} ({ly.c * ly.k * ly.k})"
        tile = f"{kn.to}x{kn.tp}" + (f" l{kn.lanes}" if kn.lanes else "")
        tile += (f" pk{kn.pack_tiles}" if kn.pack_tiles else "") + (" st64" if kn.store64 else "")
        print(f"{name:16} {shape:22} {calls:5d} {tile:14} {us['old']:8.1f} {us['s12']:8.1f} {us['new']:8.1f} "
              f"{us['new'] / us['old']:7.2f} {us['new'] / us['s12']:7.3f}")
    print(f"{'sum x calls':16} {'':22} {'':5} {'':14} {tot['old']:8.1f} {tot['s12']:8.1f} {tot['new']:8.1f} "
          f"{tot['new'] / tot['old']:7.2f} {tot['new'] / tot['s12']:7.3f}")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
