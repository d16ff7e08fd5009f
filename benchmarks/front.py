"""MobileNetV2's front (issue 20, sessions 15-16): the input quantize and the stem, before and after, interleaved.

`python -m benchmarks.front [--rounds R] [--number N]` builds, for this host (2-core target):

- the input quantize of 1x3x224x224 float32 (`kernels.quantize`, default schedule), in its floor-and-clamp form
  (`product_bounds=False`, the kernel before session 15) and its clamped-product form (today's), for the peer
  harness's quantizer (inv_scale 32, offset 128.5) and a calibrated one (1/0.018712, 114.5);
- the stem (3x3 s2, 3->32, 224 px in: the im2col GEMM, K = 27) with the 12 x 16 tile (the default before session
  15), the 2 x 64 tile with `store64` and `vshift` (session 15's `default_knobs`, `gemm.SMALL_K_MAX` = 28) and that
  tile in one parallel region over chunks of 8 output rows (`GemmKnobs.conv_rows`, session 16);
- with `--front`, the whole front: session 15's (the driver's serial NaN/inf check, the quantize, the stem in
  separate regions) against session 16's (the quantize with the check folded in, the stem in one region over chunks
  of output rows), each timed as its kernels called back to back (`front_runs`).

Each pair's outputs are compared equal, then every variant is timed once per round, in turn (R rounds), and the
minimum over all rounds is printed (us): on a shared machine the fastest call is the kernel's own speed, and
interleaving keeps a change of load from favouring one variant. The quantize is timed by TVM's `time_evaluator`
(N single calls per round), the stem by `time.perf_counter` around N single calls (`benchmarks._common.time_min`;
both variants pay the same Python call). Run it once per thread count (`TVM_NUM_THREADS=1` and `=2`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np

from benchmarks._common import rotating_rounds, rounds_parser, time_min

SHAPE = (1, 3, 224, 224)
#: (label, inv_scale, offset): the peer harness's MobileNetV2 input quantizer, and a calibrated-looking one
QUANTIZERS = (("harness", 32.0, 128.5), ("calibrated", 1 / 0.018712, 114.5))


def quantize_runs(number: int) -> dict[str, Callable[[], float]]:
    """Name -> one round (the minimum of `number` calls, seconds) of each quantize variant."""
    import tvm
    from tvm import te

    from qcompile.backends.tvm import kernels as K
    from qcompile.backends.tvm.pipeline import schedule_primfunc
    from qcompile.backends.tvm.targets import host_x86_target

    target = tvm.target.Target(host_x86_target(2))
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    x = tvm.runtime.tensor((rng.standard_normal(SHAPE) * 2.5).astype(np.float32), dev)
    runs: dict[str, Callable[[], float]] = {}
    for label, inv, off in QUANTIZERS:
        outs = {}
        for form, bounds in (("floor", False), ("clamp", True)):
            xt = te.placeholder(SHAPE, "float32", name="x")
            func = te.create_prim_func([xt, K.quantize(xt, inv, off, 255, product_bounds=bounds)])
            lib = tvm.compile(schedule_primfunc(func, "quantize"), target=target)
            out = tvm.runtime.tensor(np.zeros(SHAPE, np.uint8), dev)
            lib["main"](x, out)
            outs[form] = out.numpy()
            ev = lib.mod.time_evaluator("main", dev, number=1, repeat=number)
            runs[f"quantize {label} {form}"] = (lambda ev=ev, out=out: min(ev(x, out).results))
        if not (outs["floor"] == outs["clamp"]).all():
            raise AssertionError(f"quantize {label}: the two forms differ")
    return runs


def stem_runs(number: int) -> dict[str, Callable[[], float]]:
    """Name -> one round of each stem tile (the minimum of `number` single calls, seconds)."""
    import tvm

    from benchmarks.kernels import qc_layer_kernel
    from benchmarks.mbv2 import ConvLayer
    from qcompile.backends.tvm.schedules.x86.gemm import GemmKnobs
    from qcompile.backends.tvm.targets import host_x86_target

    target = tvm.target.Target(host_x86_target(2))
    s15 = GemmKnobs(2, 64, store64=True, vshift=True, conv_rows=0)  # separate padding, packing and tile regions
    tiles = {"stem 12x16 (session 14)": GemmKnobs(12, 16, conv_rows=0), "stem 2x64 store64 vshift (session 15)": s15,
             "stem 2x64, rows of 8 (session 16)": replace(s15, conv_rows=8)}
    runs: dict[str, Callable[[], float]] = {}
    outs = []
    for name, knobs in tiles.items():
        run, _, out = qc_layer_kernel(ConvLayer(3, 224, 32, 3, 2, 1), target, knobs=knobs, with_out=True)
        run()
        outs.append(out())
        runs[name] = partial(time_min, run, number, warmup=0)
    if not all((o == outs[0]).all() for o in outs[1:]):
        raise AssertionError("stem: the tiles differ")
    return runs


def front_runs(number: int) -> dict[str, Callable[[], float]]:
    """Name -> one round (the minimum of `number` runs, seconds) of MobileNetV2's whole front, session 15's against
    session 16's: the driver's serial NaN/inf check (`driver.finite_check`), the quantize (default schedule) and
    the stem with its separate padding, packing and tile regions (`conv_rows=0`); against the quantize with the
    check folded in (`kernels.quantize_checked`, one chunk per thread of the 2-core target) and the stem in one
    region over chunks of 8 output rows (`GemmKnobs.conv_rows`). The stem reads the quantize's codes (the same
    bytes), as in the network; the two fronts' stem outputs are compared equal."""
    import tvm
    from tvm import te

    from qcompile.backends.tvm import kernels as K
    from qcompile.backends.tvm.driver import finite_check
    from qcompile.backends.tvm.pipeline import schedule_primfunc
    from qcompile.backends.tvm.schedules.conv import ConvGeometry, GemmConv, pack_weights
    from qcompile.backends.tvm.schedules.requant import bias_term
    from qcompile.backends.tvm.schedules.x86.gemm import GemmKnobs, pointwise_conv_x86
    from qcompile.backends.tvm.targets import host_x86_target

    target = tvm.target.Target(host_x86_target(2))
    inv, off = QUANTIZERS[1][1:]
    rng = np.random.default_rng(0)
    n = int(np.prod(SHAPE))
    x = tvm.runtime.tensor((rng.standard_normal(SHAPE) * 2.5).astype(np.float32))
    xf = x._create_view((n,))
    xt = te.placeholder(SHAPE, "float32", name="x")
    quant = tvm.compile(schedule_primfunc(te.create_prim_func([xt, K.quantize(xt, inv, off, 255)]), "quantize"),
                        target=target)["main"]
    check = tvm.compile(tvm.IRModule({"chk": finite_check(n, "float32", "chk")}), target=target)["chk"]
    checked = tvm.compile(K.quantize_checked(SHAPE, "float32", inv, off, 255, 2), target=target)["main"]
    geom = ConvGeometry(3, 224, 224, 3, 3, (2, 2), (1, 1))
    gc = GemmConv(27, 112 * 112, 32, shift_min=40, conv=geom)
    w = rng.integers(-128, 128, (32, 3, 3, 3)).astype(np.int8)
    mult = np.full(32, 1 << 28, np.int32)
    shift = np.full(32, 40, np.int32)
    consts = [tvm.runtime.tensor(a) for a in (pack_weights(w, 4, "int8"), bias_term(rng.integers(-1000, 1000, 32),
                                                                                     mult, shift), mult, shift)]
    tile = GemmKnobs(2, 64, store64=True, vshift=True)
    runs: dict[str, Callable[[], float]] = {}
    outs = []
    for name, rows, folded in (("front session 15 (check, quantize, stem)", 0, False),
                               ("front session 16 (quantize+check, stem in rows)", 8, True)):
        stem = tvm.compile(pointwise_conv_x86(gc, "vnni512", replace(tile, conv_rows=rows)), target=target)["main"]
        q = tvm.runtime.tensor(np.zeros(SHAPE, np.uint8))
        out = tvm.runtime.tensor(np.zeros((32, 112 * 112), np.uint8))
        qv = q._create_view((3, 224, 224))
        if folded:
            def front(checked=checked, q=q, qv=qv, stem=stem, out=out) -> None:
                checked(x, q)
                stem(qv, *consts, out)
        else:
            def front(q=q, qv=qv, stem=stem, out=out) -> None:
                check(xf)
                quant(x, q)
                stem(qv, *consts, out)
        front()
        outs.append(out.numpy())
        runs[name] = partial(time_min, front, number, warmup=0)
    if not (outs[0] == outs[1]).all():
        raise AssertionError("front: the two stems' outputs differ")
    return runs


def main(argv: list[str] | None = None) -> None:
    ap = rounds_parser(__doc__, rounds=20, number=20)
    ap.add_argument("--front", action="store_true", help="also the whole front, session 15's against 16's")
    args = ap.parse_args(argv)
    runs = {**quantize_runs(args.number), **stem_runs(args.number),
            **(front_runs(args.number) if args.front else {})}
    load0 = os.getloadavg()[0]
    # step 0: every round in the same order, as before the shared helper
    best = {name: min(v) for name, v in rotating_rounds(runs, args.rounds, step=0).items()}
    print(f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}, {args.rounds} rounds x {args.number} calls, "
          f"load {load0:.2f} -> {os.getloadavg()[0]:.2f}; minima in us:")
    for name, sec in best.items():
        print(f"  {name:36s} {sec * 1e6:8.1f}")


if __name__ == "__main__":
    main()
