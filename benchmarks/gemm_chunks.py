"""MobileNetV2 224's pointwise GEMMs with one parallel region or two, at 1 and 2 threads (issue 20, session 14).

    TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.gemm_chunks [--rounds 40]

Variants of each GEMM (`benchmarks.pack_axis.MBV2_GEMMS`), all the tile of `gemm.default_knobs(mode, K, P, O)`:

- `two`: the kernel before session 14: the activation packing parallel over reduction blocks, then the tiles
  parallel over pixel tiles x channel tiles (a pointwise GEMM's two fork/joins);
- `chan`: the same two regions, channel tiles outside pixel tiles (`p_outer=False`), so each thread writes a
  contiguous block of output rows and reads only its channels' weights (the false-sharing hypothesis);
- `one`: `default_knobs(..., threads=2)`: where it applies (<= `CHUNK_MAX_P` px) one region of 2 channel-tile blocks,
  each packing all activations itself (`GemmKnobs.chunks`), else the same as `two`.

All are built for this host at 2 threads, their outputs compared equal, then timed in interleaved rounds (order
reversed every other round) at 1 and 2 threads of TVM's pool (`threads.pool_threads`) with `time_evaluator`
(single calls, `--per-sample` per sample). A sample counts only when no thread of this process waited on a run
queue for more than `--max-delay-us` during it (/proc/self/task/*/schedstat: the worker of a 2-thread kernel
descheduled by another job); each variant keeps its minimum over those samples (over all of its samples, marked
`*`, where none was clean).

`--produce`: before every timed call (`time_evaluator`'s `f_preproc`, outside the timer) a 2-thread copy rewrites the
GEMM's input split over channel halves, as the depthwise kernel before each GEMM does in the network: the two-region
kernel's packing then reads its rows from the core that wrote them, the one-region kernel half of them remotely.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

VARIANTS = ("two", "chan", "one")


def knobs_of(variant: str, k: int, p: int, o: int) -> Any:
    from qcompile.backends.tvm.schedules.x86.gemm import default_knobs

    base = default_knobs("vnni512", k, p, o)
    if variant == "two":
        return base
    if variant == "chan":
        return dataclasses.replace(base, p_outer=False)
    return default_knobs("vnni512", k, p, o, 2)


def producer(k: int, p: int, target: Any) -> Any:
    """A 2-thread copy `x[c, :] = src[c, :]` parallel over channel halves: what MobileNetV2's depthwise kernel before
    each GEMM does to its input (thread t writes channels [t K/2, (t+1) K/2))."""
    import tvm
    from tvm import s_tir, te

    src = te.placeholder((k, p), "uint8", name="src")
    x = te.compute((k, p), lambda c, j: src[c, j], name="x")
    sch = s_tir.Schedule(te.create_prim_func([src, x]).with_attr("global_symbol", "main"))
    c, j = sch.get_loops(sch.get_sblock("x"))
    co, _ = sch.split(c, [2, None]) if k % 2 == 0 else (c, None)
    sch.parallel(co)
    lib = tvm.compile(sch.mod["main"], target=target)
    return getattr(lib, "mod", lib)["main"]


_PRODUCERS: dict[int, Any] = {}


def _run_producer(*args: Any) -> None:
    """`time_evaluator`'s `f_preproc`: rewrite the GEMM's input (its first argument) from the other core's half."""
    call, src = _PRODUCERS[args[0].data_ptr()]
    call(src, args[0])


def build(shapes: list[tuple[int, int, int, int]], per_sample: int, produce: bool = False) -> list[tuple]:
    """(shape, variant, evaluator, args) per GEMM and variant, outputs checked equal across variants. `produce`:
    before every timed call, `producer` rewrites the input on both threads (the network's situation)."""
    import tvm

    from qcompile.backends.tvm.schedules.conv import GemmConv, pack_weights
    from qcompile.backends.tvm.schedules.requant import bias_term
    from qcompile.backends.tvm.schedules.x86.gemm import pointwise_conv_x86
    from qcompile.backends.tvm.targets import host_x86_target

    target = tvm.target.Target(host_x86_target(2))
    rng = np.random.default_rng(0)
    jobs = []
    for k, p, o, n in shapes:
        w = rng.integers(-128, 128, (o, k), dtype=np.int8)
        mult = rng.integers(1 << 29, 1 << 30, o).astype(np.int32)
        shift = rng.integers(33, 40, o).astype(np.int32)  # >= 32: the int32 tail, as MobileNetV2's layers
        host = (rng.integers(0, 256, (k, p), dtype=np.uint8), pack_weights(w, 4, "int8"),
                bias_term(rng.integers(-5000, 5000, o), mult, shift), mult, shift)
        args = [tvm.runtime.tensor(a) for a in host]
        if produce:
            _PRODUCERS[args[0].data_ptr()] = (producer(k, p, target), tvm.runtime.tensor(host[0]))
        ref = None
        for v in VARIANTS:
            lib = tvm.compile(pointwise_conv_x86(GemmConv(k, p, o, shift_min=33), "vnni512", knobs_of(v, k, p, o)),
                              target=target)
            mod = getattr(lib, "mod", lib)
            out = tvm.runtime.tensor(np.zeros((o, p), np.uint8))
            mod["main"](*args, out)
            if ref is None:
                ref = out.numpy()
            elif not np.array_equal(ref, out.numpy()):
                raise AssertionError(f"{k}x{p}->{o}: variant {v} differs from {VARIANTS[0]}")
            ev = mod.time_evaluator("main", tvm.cpu(), number=1, repeat=per_sample,
                                    f_preproc="benchmarks.gemm_chunks.producer" if produce else "")
            jobs.append(((k, p, o, n), v, ev, [*args, out]))
    return jobs


def main(argv: list[str] | None = None) -> None:
    from benchmarks._common import clean_minima, rounds_parser
    from benchmarks.pack_axis import MBV2_GEMMS

    ap = rounds_parser(__doc__, rounds=40, per_sample=5, max_delay_us=20.0)
    ap.add_argument("--produce", action="store_true",
                    help="rewrite each GEMM's input on both threads (split over channels) before every timed call")
    args = ap.parse_args(argv)
    if args.produce:
        import tvm

        tvm.register_global_func("benchmarks.gemm_chunks.producer", _run_producer, override=True)
    jobs = build(list(MBV2_GEMMS), args.per_sample, args.produce)
    load0 = os.getloadavg()
    best, clean = clean_minima(jobs, args.rounds, args.max_delay_us)
    print(f"{args.rounds} rounds; clean samples per variant {min(clean.values())}-{max(clean.values())} "
          f"(run delay <= {args.max_delay_us} us); load average {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    print("| K x P -> O | calls | 1 thr two | chan | one | 2 thr two | chan | one | one / two (2 thr) "
          "| scaling two -> one |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    tot = {(t, v): 0.0 for t in (1, 2) for v in VARIANTS}
    for shape in MBV2_GEMMS:
        b = {(t, v): best[(t, shape, v)] for t in (1, 2) for v in VARIANTS}
        for key, val in b.items():
            tot[key] += shape[3] * val
        print(f"| {shape[0]} x {shape[1]} -> {shape[2]} | {shape[3]} | "
              + " | ".join(f"{b[(t, v)]:.1f}{'' if clean[(t, shape, v)] else '*'}" for t in (1, 2) for v in VARIANTS)
              + f" | {b[(2, 'one')] / b[(2, 'two')]:.3f} | {b[(1, 'two')] / b[(2, 'two')]:.2f}x -> "
              f"{b[(1, 'two')] / b[(2, 'one')]:.2f}x |")
    print("| **x calls** | | " + " | ".join(f"{tot[(t, v)]:.0f}" for t in (1, 2) for v in VARIANTS)
          + f" | {tot[(2, 'one')] / tot[(2, 'two')]:.3f} | {tot[(1, 'two')] / tot[(2, 'two')]:.2f}x -> "
          f"{tot[(1, 'two')] / tot[(2, 'one')]:.2f}x |")


if __name__ == "__main__":
    main()
