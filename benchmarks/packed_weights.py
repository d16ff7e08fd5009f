"""Per-layer: the batch-1 `linear` GEMV and the pointwise GEMV (1x1 convs on 1-4 pixels) with int8 weights against
4-bit and 2-bit packed weights (issue 20's stretch, `backends/tvm/schedules/x86/packed_gemv.py`), warm and with the
weights evicted between calls.

    TVM_NUM_THREADS=1 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.packed_weights --out t1.json
    TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.packed_weights --out t2.json

Each layer's kernel is emitted by the x86 `linear_requant` / `conv2d_requant` strategy with `weight_bits` forced (8,
4, 2: the same random 2-bit codes for all three, so the outputs must agree, which is checked), its PrimFunc compiled
alone for the host and called with the strategy's own constants. Timing: `--rounds` rounds, each visiting every
(layer, width) in rotating order; per visit the fastest of `--number` back-to-back calls ("warm": the weights stay
in L1/L2 as when the harness times a kernel alone) and the fastest of `--cold` calls each after writing a 64 MiB
buffer ("cold": a network streams the other layers' weights through the caches between two calls of a layer). Minima
over rounds. Single calls through the FFI: `null_us` / `null_cold_us` is an empty PrimFunc's call, warm / after the
flush (what every cold figure pays besides its weights: the runtime's own code and data evicted too). TVM sizes its
pool once per process, so 1 and 2 threads are two processes.
"""

from __future__ import annotations

import json
import platform
import time
from typing import Any

import numpy as np

#: (name, op, K, O, pixels): MobileNetV2's classifier (also the largest `mobilenet_v3` subnet's last linear), that
#: subnet's 960->1280 head (a 1x1 conv on the pooled pixel: the pointwise GEMV), smaller linears whose weights stay
#: in L1 / L2, the pointwise GEMV on 4 pixels (2x2 maps of MobileNetV3 at 32 px) and on one pixel at the demo's width
#: (0.35: 96->336, 56->336)
LAYERS = (("fc_1280x1000", "linear", 1280, 1000, 1), ("pw_960x1280_1px", "pointwise", 960, 1280, 1),
          ("fc_256x512", "linear", 256, 512, 1), ("fc_256x256", "linear", 256, 256, 1),
          ("fc_128x128", "linear", 128, 128, 1), ("pw_160x960_4px", "pointwise", 160, 960, 4),
          ("pw_96x576_1px", "pointwise", 96, 576, 1), ("pw_96x336_1px", "pointwise", 96, 336, 1),
          ("pw_56x336_1px", "pointwise", 56, 336, 1))
BITS = (8, 4, 2)
FLUSH_BYTES = 64 << 20


def build(op: str, k: int, o: int, pixels: int, bits: int, target: Any, seed: int = 0) -> tuple[Any, list, int]:
    """(compiled function, its tensors with the output last, bytes of weights) of the requantizing `op`
    ("linear": K -> O at batch 1; "pointwise": a 1x1 conv K -> O on `pixels` pixels, a square map) emitted by the
    x86 strategy with `weight_bits=bits` on 2-bit codes."""
    import tvm
    from tvm import relax

    from qcompile.backends.tvm.schedules.conv import const_value
    from qcompile.backends.tvm.strategy import OpCall, select_strategy

    rng = np.random.default_rng(seed)
    w = rng.integers(-2, 2, (o, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, o).astype(np.int32)
    mult = np.full(o, 1 << 26, np.int32)
    shift = np.full(o, 34, np.int32)
    if op == "linear":
        x = rng.integers(0, 256, (1, k)).astype(np.uint8)
        params = {"x_shape": (1, k), "w_shape": (o, k), "out_shape": (1, o), "node": "fc", "lo": 0, "hi": 255}
        call = OpCall("linear_requant", {**params, "weight_bits": bits}, target)
    else:
        h = int(round(pixels ** 0.5))
        x = rng.integers(0, 256, (1, k, h, h)).astype(np.uint8)
        w = w[:, :, None, None]
        params = {"x_shape": x.shape, "w_shape": w.shape, "out_shape": (1, o, h, h), "stride": (1, 1),
                  "padding": (0, 0), "dilation": (1, 1), "groups": 1, "pad_value": 0, "node": "pw", "lo": 0,
                  "hi": 255}
        call = OpCall("conv2d_requant", {**params, "weight_bits": bits}, target)
    strat = select_strategy(call)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = strat.emit(bb, call, [xv, *(relax.const(c) for c in (w, bias, mult, shift))])
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    gv = next(g for g in mod.functions if g.name_hint.startswith(("qc_linear", "qc_gemv")))
    ctir = next(b.value for blk in mod["main"].body.blocks for b in blk.bindings
                if isinstance(b.value, relax.Call) and "call_tir" in str(b.value.op))
    consts = [const_value(a, "operand", "layer") for a in ctir.args[1].fields[1:]]
    lib = tvm.compile(mod[gv].with_attr("global_symbol", "main"), target=target)
    xk, out_shape = ((x, (1, o)) if op == "linear" else (x.reshape(k, pixels), (o, pixels)))
    tensors = [tvm.runtime.tensor(a) for a in (xk, *consts, np.zeros(out_shape, np.uint8))]
    return lib["main"], tensors, int(consts[0].nbytes)


def _null(target: Any) -> tuple[Any, list]:
    import tvm
    from tvm import te

    a = te.placeholder((16,), "int32", name="a")
    b = te.compute((16,), lambda i: a[i], name="b")
    lib = tvm.compile(te.create_prim_func([a, b]).with_attr("global_symbol", "main"), target=target)
    return lib["main"], [tvm.runtime.tensor(np.zeros(16, np.int32)) for _ in range(2)]


def _warm(fn: Any, args: list, number: int) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(number):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def _cold(fn: Any, args: list, number: int, buf: np.ndarray) -> float:
    best = float("inf")
    for _ in range(number):
        np.add(buf, 1, out=buf)  # evicts L1/L2 and (64 MiB > 32 MiB) the L3 of the weights
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    import tvm

    from benchmarks._common import rounds_parser
    from qcompile.backends.tvm.targets import host_x86_target

    ap = rounds_parser(__doc__, rounds=7, number=50, cold=10)
    ap.add_argument("--out", default=None)
    ap.add_argument("--layers", nargs="*", default=None, help="names of LAYERS to time (default: all)")
    a = ap.parse_args(argv)
    target = tvm.target.Target(host_x86_target())
    kernels = {}
    for name, op, k, o, pixels in LAYERS:
        if a.layers and name not in a.layers:
            continue
        outs = []
        for bits in BITS:
            fn, args, nbytes = build(op, k, o, pixels, bits, target)
            kernels[(name, bits)] = (fn, args, nbytes)
            fn(*args)
            outs.append(args[-1].numpy())
        if not all(np.array_equal(outs[0], y) for y in outs[1:]):
            raise AssertionError(f"{name}: the packed kernels disagree with the int8 one")
    null_fn, null_args = _null(target)
    buf = np.zeros(FLUSH_BYTES, np.uint8)
    keys = list(kernels)
    warm = {key: float("inf") for key in keys}
    cold = dict(warm)
    null = null_cold = float("inf")
    for r in range(a.rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            fn, args, _ = kernels[key]
            warm[key] = min(warm[key], _warm(fn, args, a.number))
            cold[key] = min(cold[key], _cold(fn, args, a.cold, buf))
        null = min(null, _warm(null_fn, null_args, a.number))
        null_cold = min(null_cold, _cold(null_fn, null_args, a.cold, buf))
    threads = int(tvm.get_global_func("runtime.NumThreads")())
    rows = [{"layer": name, "bits": bits, "weight_bytes": kernels[(name, bits)][2],
             "warm_us": round(warm[(name, bits)] * 1e6, 2), "cold_us": round(cold[(name, bits)] * 1e6, 2)}
            for name, bits in keys]
    res = {"threads": threads, "cpu": platform.processor() or platform.machine(), "null_us": round(null * 1e6, 2),
           "null_cold_us": round(null_cold * 1e6, 2),
           "rounds": a.rounds, "number": a.number, "cold": a.cold, "rows": rows}
    print(f"threads {threads}, null call {res['null_us']} us warm, {res['null_cold_us']} us cold")
    print(f"{'layer':22s} {'bits':>4s} {'bytes':>9s} {'warm us':>8s} {'cold us':>8s}")
    for row in rows:
        print(f"{row['layer']:22s} {row['bits']:4d} {row['weight_bytes']:9d} {row['warm_us']:8.2f} "
              f"{row['cold_us']:8.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
