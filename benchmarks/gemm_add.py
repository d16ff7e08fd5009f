"""MobileNetV2 224's 19 pointwise GEMMs, their residual add fused as in the network, before and after session 15's
contiguous skip reads and int32 add (issue 20), at 1 and 2 threads.

    TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.gemm_add [--rounds 40]

Each GEMM of `benchmarks.pack_axis.MBV2_GEMMS` is built as the network's kernel: the five project layers followed by
a residual add (`ADD_LAYERS`) carry the add in their epilogue, with the synthetic MobileNetV2's add constants
(`qcompile.bench.models`: both multipliers 2^30, shift 31), or `--multipliers` that are not powers of two. Variants:

- `old`: `pointwise_conv_x86(..., pad_skip=False, add32=False)`, the kernel before session 15: where the pixels are
  padded to whole tiles (14 px and 7 px), every vector of the skip tensor is read at `min(j, P - 1)` (16 scalar
  loads), and the add runs on int64 lanes;
- `new`: the default, contiguous skip loads (`conv.gemm_requant_stages`' `pad_skip`) and the add in int32
  (`requant.add_int32`);
- `bare` (the add layers): the same GEMM without the add, what the add costs on top.

At each thread count the tile is that thread count's default (`gemm.default_knobs(mode, K, P, O, threads)`), the
kernel built for this host at that count. Outputs are compared equal, then every kernel is timed in interleaved rounds
(`benchmarks._common.clean_minima`: order reversed every other round, a sample counts only when no thread of the
process waited on a run queue more than `--max-delay-us`; minima over those, `*` where none was clean). Layers
without an add, and the 28 and 56 px layers (no padded pixels), build the same kernel in both variants.
"""

from __future__ import annotations

import os
import time

import numpy as np

#: (K, P, O) of MobileNetV2 224's project layers whose output a residual add takes (`benchmarks.mbv2_vs_openvino`)
ADD_LAYERS = frozenset({(144, 3136, 24), (192, 784, 32), (384, 196, 64), (576, 196, 96), (960, 49, 160)})
VARIANTS = ("old", "new")


def build(shapes: list[tuple[int, int, int, int]], per_sample: int, multipliers: tuple[int, int, int, int]) -> list:
    """(shape, variant + thread count, evaluator, args) for every GEMM, variant and thread count (the tile and the
    target of that count), outputs checked equal between the variants."""
    import tvm

    from qcompile.backends.tvm.schedules.conv import GemmConv, pack_weights
    from qcompile.backends.tvm.schedules.requant import EpilogueStep, bias_term
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs, pointwise_conv_x86
    from qcompile.backends.tvm.targets import host_x86_target

    rng = np.random.default_rng(0)
    ma, mb, off, s = multipliers
    add = (EpilogueStep("add", (ma, mb, off, s, 0, 255)),)
    jobs = []
    for k, p, o, n in shapes:
        post = add if (k, p, o) in ADD_LAYERS else ()
        w = rng.integers(-128, 128, (o, k), dtype=np.int8)
        mult = rng.integers(1 << 29, 1 << 30, o).astype(np.int32)
        shift = rng.integers(33, 40, o).astype(np.int32)  # >= 32: the int32 tail, as MobileNetV2's layers
        host = [rng.integers(0, 256, (k, p), dtype=np.uint8), pack_weights(w, 4, "int8"),
                bias_term(rng.integers(-5000, 5000, o), mult, shift), mult, shift]
        if post:
            host.append(rng.integers(0, 256, (o, p), dtype=np.uint8))
        args = [tvm.runtime.tensor(a) for a in host]
        for t in (1, 2):
            target = tvm.target.Target(host_x86_target(t))
            knobs = default_knobs("vnni512", k, p, o, t)
            ref = None
            for v in VARIANTS + (("bare",) if post else ()):
                func = pointwise_conv_x86(GemmConv(k, p, o, shift_min=33, post=() if v == "bare" else post),
                                          "vnni512", knobs, pad_skip=v != "old", add32=v != "old")
                lib = tvm.compile(func, target=target)
                mod = getattr(lib, "mod", lib)
                out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
                call = [*(args[:5] if v == "bare" else args), out]
                mod["main"](*call)
                if v == "bare":
                    pass
                elif ref is None:
                    ref = out.numpy()
                elif not np.array_equal(ref, out.numpy()):
                    raise AssertionError(f"{k}x{p}->{o} at {t} threads: variant {v} differs from {VARIANTS[0]}")
                ev = mod.time_evaluator("main", tvm.cpu(), number=1, repeat=per_sample)
                jobs.append(((k, p, o, n), f"{v}{t}", ev, call))
    return jobs


def main(argv: list[str] | None = None) -> None:
    from benchmarks._common import clean_minima, rounds_parser
    from benchmarks.pack_axis import MBV2_GEMMS

    ap = rounds_parser(__doc__, rounds=40, per_sample=5, max_delay_us=20.0)
    ap.add_argument("--multipliers", action="store_true",
                    help="add constants that are not powers of two (real LLVM multiplies) instead of 2^30")
    ap.add_argument("--add-only", action="store_true", help="only the five GEMMs with a residual add")
    args = ap.parse_args(argv)
    shapes = [s for s in MBV2_GEMMS if s[:3] in ADD_LAYERS or not args.add_only]
    consts = ((1 << 30) - 12345, (3 << 28) + 777, (1 << 30) - (40 << 31), 31) if args.multipliers else \
        (1 << 30, 1 << 30, 1 << 30, 31)
    jobs = build(shapes, args.per_sample, consts)
    load0 = os.getloadavg()
    t0 = time.strftime("%H:%M:%S", time.gmtime())
    best, clean = clean_minima(jobs, args.rounds, args.max_delay_us)
    # a job is timed at both pool sizes; each variant counts at the thread count it was built for
    mine = {key: val for key, val in best.items() if key[2].endswith(str(key[0]))}
    cl = [clean[key] for key in mine]
    print(f"{t0} UTC, {args.rounds} rounds; clean samples per kernel {min(cl)}-{max(cl)} of {args.rounds} "
          f"(run delay <= {args.max_delay_us} us); load average {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print("| K x P -> O | calls | add | 1 thr old us | new us | new / old | 2 thr old us | new us | new / old "
          "| without the add: 1 thr, 2 thr us |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    tot = dict.fromkeys(((t, v) for t in (1, 2) for v in VARIANTS), 0.0)
    for shape in shapes:
        b = {(t, v): best[(t, shape, f"{v}{t}")] for t in (1, 2) for v in VARIANTS}
        for key, val in b.items():
            tot[key] += shape[3] * val
        mark = {(t, v): "" if clean[(t, shape, f"{v}{t}")] else "*" for t in (1, 2) for v in VARIANTS}
        cells = " | ".join(f"{b[(t, 'old')]:.1f}{mark[(t, 'old')]} | {b[(t, 'new')]:.1f}{mark[(t, 'new')]} | "
                           f"{b[(t, 'new')] / b[(t, 'old')]:.3f}" for t in (1, 2))
        bare = ", ".join(f"{best[(t, shape, f'bare{t}')]:.1f}{'' if clean[(t, shape, f'bare{t}')] else '*'}"
                         for t in (1, 2)) if shape[:3] in ADD_LAYERS else ""
        print(f"| {shape[0]} x {shape[1]} -> {shape[2]} | {shape[3]} | "
              f"{'yes' if shape[:3] in ADD_LAYERS else ''} | {cells} | {bare} |")
    print("| **x calls** | | | " + " | ".join(f"{tot[(t, 'old')]:.0f} | {tot[(t, 'new')]:.0f} | "
                                             f"{tot[(t, 'new')] / tot[(t, 'old')]:.3f}" for t in (1, 2)) + " | |")


if __name__ == "__main__":
    main()
