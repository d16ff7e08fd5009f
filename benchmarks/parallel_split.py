"""Per-kernel parallel split of MobileNetV2 224 at N threads, from the TIR (issue 20): no timing.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.parallel_split [--threads 2] [--resolution 224]

The network (`qcompile.bench`'s synthetic integer graph of MobileNetV2 1.0) is emitted for this host's x86 target
(`emitter.emit_relax`, the kernels `qc.lower` builds, untuned) and every PrimFunc's `T.parallel` loops are read
from its TVMScript. TVM's CPU codegen runs a parallel loop of extent n on N threads as N contiguous chunks of
ceil(n/N) iterations (`CodeGenCPU::CreateParallelLaunch`), so with uniform iterations (padded tiles compute the
full tile) the slowest thread does ceil(n/N) / (n/N) of the ideal share. Per kernel and loop the script prints
the loop variable, its extent, that ratio (max/mean work per thread) and the estimated loss at N threads,
`t1 * (ratio - 1) / N` per call, times the calls of the network: `t1` is the serial estimate
`parallel.estimated_us(work, kind)` of the kernel (MACs for GEMM convs, taps for depthwise convs), given to the
kernel's last parallel loop (its main loop; an earlier one is the GEMM's activation packing, O(K*P) copies,
whose loss is not estimated). Kernels emitted unscheduled (quantize, dequantize: `pipeline.schedule_primfunc`
schedules them later) are listed as such. `regions` counts the fork/joins per network inference.
`--pack-in-tiles` analyses the one-region pointwise GEMM (`gemm.schedule_gemm_pack_in_tiles`, default off);
`--time-gemm` times the GEMMs it changes both ways at 1 thread (interleaved, minima; `TVM_NUM_THREADS=1`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
from dataclasses import dataclass
from typing import Any

_PARALLEL = re.compile(r"for (\S+) in T\.parallel\((\d+)\)")


@dataclass(frozen=True)
class ParallelLoop:
    """One `T.parallel` loop of a PrimFunc: its loop variable and (static) extent."""

    var: str
    extent: int

    def ratio(self, threads: int) -> float:
        """Slowest thread's share over the ideal `extent / threads` (1.0 = balanced)."""
        return split_ratio(self.extent, threads)


def split_ratio(extent: int, threads: int) -> float:
    """max/mean iterations per thread when `extent` uniform iterations run as `threads` contiguous chunks of
    ceil(extent/threads) (TVM's static parallel launch); 1.0 when balanced."""
    if extent <= 0 or threads <= 0:
        return 1.0
    busy = min(threads, extent)  # chunks beyond the extent stay idle
    return -(-extent // busy) / (extent / threads)


def parallel_loops(func: Any) -> list[ParallelLoop]:
    """The `T.parallel` loops of PrimFunc `func`, in program order (from its TVMScript)."""
    return [ParallelLoop(v, int(n)) for v, n in _PARALLEL.findall(func.script())]


def kernel_estimate_us(workload: dict) -> float | None:
    """Serial estimate (us) of a conv / linear kernel from its workload (`parallel.estimated_us`), None otherwise."""
    from qcompile.backends.tvm.schedules.parallel import estimated_us

    shapes, kind = workload.get("shapes"), workload.get("kind")
    out = workload.get("out_shape")
    if workload.get("op", "").startswith("conv2d") and shapes and out:
        o, cg, kh, kw = shapes[1]
        pixels = out[2] * out[3]
        if kind == "depthwise":
            return estimated_us(o * pixels * kh * kw, "depthwise")
        return estimated_us(o * cg * kh * kw * pixels, "gemm_dot")
    if workload.get("op", "").startswith("linear") and shapes:
        return estimated_us(shapes[0][0] * shapes[1][0] * shapes[1][1], "gemv")
    return None


def analyse(threads: int = 2, resolution: int = 224) -> list[dict]:
    """One row per emitted PrimFunc of MobileNetV2: name, calls, parallel loops, ratio, est. serial and loss (us)."""
    import tvm
    from tvm import tirx

    from qcompile.backends.tvm.emitter import emit_relax
    from qcompile.backends.tvm.targets import host_x86_target
    from qcompile.bench.models import mobilenet_v2, synthetic_integer_graph

    ig = synthetic_integer_graph(mobilenet_v2(), resolution)
    res = emit_relax(ig, tvm.target.Target(host_x86_target(threads)))
    by_wl = {json.dumps(k.workload, sort_keys=True): k.primfuncs[0] for k in res.kernels if k.primfuncs}
    calls: collections.Counter = collections.Counter()
    workload: dict[str, dict] = {}
    for k in res.kernels:
        name = k.primfuncs[0] if k.primfuncs else by_wl.get(json.dumps(k.workload, sort_keys=True))
        if name is not None:
            calls[name] += 1
            workload.setdefault(name, k.workload)
    rows = []
    for gv, func in res.mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = gv.name_hint
        wl = workload.get(name, {})
        loops = parallel_loops(func)
        t1 = kernel_estimate_us(wl)
        ratio = loops[-1].ratio(threads) if loops else 1.0
        loss = None if t1 is None or not loops else t1 * (ratio - 1) / threads
        default = func.attrs is not None and "qcompile.schedule" in func.attrs
        rows.append({"name": wl.get("op", name) if default else name, "calls": calls.get(name, 1), "loops": loops,
                     "ratio": ratio, "t1_us": t1, "loss_us": loss, "unscheduled": default})
    return rows


#: MobileNetV2 224's pointwise GEMMs (K, P, O, calls) with evenly split pixel tiles (`--pack-in-tiles` candidates)
MBV2_PACK_SHAPES = ((32, 12544, 16, 1), (16, 12544, 96, 1), (96, 3136, 24, 1), (24, 3136, 144, 2),
                    (32, 784, 192, 3), (192, 784, 32, 2), (160, 49, 960, 3), (960, 49, 160, 2), (320, 49, 1280, 1))


def time_pack_variants(rounds: int = 40, calls: int = 5) -> list[tuple[tuple[int, int, int, int], float, float]]:
    """Serial minima (us) of each `MBV2_PACK_SHAPES` GEMM built with the separate packing region and with
    `--pack-in-tiles`, both for this host, timed interleaved (alternating order per round) in this process; the
    two outputs are checked equal first. Run with `TVM_NUM_THREADS=1`."""
    import time

    import numpy as np
    import tvm

    from qcompile.backends.tvm.schedules.conv import GemmConv, pack_weights
    from qcompile.backends.tvm.schedules.requant import bias_term
    from qcompile.backends.tvm.schedules.x86.gemm import ENV_PACK_IN_TILES, default_knobs, pointwise_conv_x86
    from qcompile.backends.tvm.targets import host_x86_target

    target = tvm.target.Target(host_x86_target(2))
    rng = np.random.default_rng(0)
    jobs = []
    for k, p, o, n in MBV2_PACK_SHAPES:
        libs = []
        for flag in ("0", "1"):
            os.environ[ENV_PACK_IN_TILES] = flag
            func = pointwise_conv_x86(GemmConv(k, p, o, shift_min=20), "vnni512", default_knobs("vnni512"))
            libs.append(tvm.compile(func, target=target))
        os.environ[ENV_PACK_IN_TILES] = "0"
        x = rng.integers(0, 256, (k, p), dtype=np.uint8)
        w = rng.integers(-128, 128, (o, k), dtype=np.int8)
        bias = rng.integers(-5000, 5000, o).astype(np.int32)
        mult = rng.integers(1 << 29, 1 << 30, o).astype(np.int32)
        shift = rng.integers(20, 30, o).astype(np.int32)
        args = [tvm.runtime.tensor(a) for a in (x, pack_weights(w, 4, "int8"), bias_term(bias, mult, shift), mult,
                                                shift)]
        outs = [tvm.runtime.tensor(np.zeros((o, p), np.uint8)) for _ in libs]
        for lib, out in zip(libs, outs):
            lib(*args, out)
        if not np.array_equal(outs[0].numpy(), outs[1].numpy()):
            raise AssertionError(f"pack-in-tiles GEMM {k}x{p}->{o} differs from the separate packing")
        jobs.append(((k, p, o, n), libs, args, outs))
    best = {shape: [float("inf")] * 2 for shape, *_ in jobs}
    for r in range(rounds):
        for shape, libs, args, outs in jobs:
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                t = time.perf_counter()
                for _ in range(calls):
                    libs[i](*args, outs[i])
                best[shape][i] = min(best[shape][i], (time.perf_counter() - t) / calls * 1e6)
    return [(shape, a, b) for shape, (a, b) in best.items()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--pack-in-tiles", action="store_true",
                    help="with the one-region pointwise GEMM (gemm.ENV_PACK_IN_TILES=1, default off)")
    ap.add_argument("--time-gemm", action="store_true",
                    help="instead: 1-thread minima of the GEMMs --pack-in-tiles changes, both ways, interleaved")
    args = ap.parse_args(argv)
    if args.time_gemm:
        tot = [0.0, 0.0]
        for (k, p, o, n), a, b in time_pack_variants():
            tot[0] += n * a
            tot[1] += n * b
            print(f"{k:4d}x{p:5d}->{o:4d} x{n}: separate packing {a:7.1f} us, pack in tiles {b:7.1f} us ({b / a:.3f})")
        print(f"weighted by calls: {tot[0]:.0f} -> {tot[1]:.0f} us")
        return
    from qcompile.backends.tvm.schedules.x86.gemm import ENV_PACK_IN_TILES

    os.environ[ENV_PACK_IN_TILES] = "1" if args.pack_in_tiles else "0"
    rows = analyse(args.threads, args.resolution)
    print(f"{'kernel':46} {'calls':>5} {'parallel loops (var:extent max/mean)':44} {'t1 est':>7} {'loss':>6}")
    total_loss = total_t1 = 0.0
    regions = 0
    for r in rows:
        loops = " ".join(f"{lp.var}:{lp.extent} {lp.ratio(args.threads):.3f}" for lp in r["loops"])
        if r["unscheduled"]:
            loops = "(default schedule, applied after emission)"
        regions += len(r["loops"]) * r["calls"]
        t1 = "" if r["t1_us"] is None else f"{r['t1_us'] * r['calls']:7.1f}"
        loss = "" if r["loss_us"] is None else f"{r['loss_us'] * r['calls']:6.2f}"
        total_t1 += (r["t1_us"] or 0.0) * r["calls"]
        total_loss += (r["loss_us"] or 0.0) * r["calls"]
        print(f"{r['name'][:46]:46} {r['calls']:5d} {loops[:44]:44} {t1:>7} {loss:>6}")
    print(f"\nestimated serial sum {total_t1:.0f} us; split loss at {args.threads} threads {total_loss:.2f} us; "
          f"{regions} parallel regions (fork/joins) per inference")


if __name__ == "__main__":
    main()
