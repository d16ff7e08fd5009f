"""Where MobileNetV2 224 loses its second thread (issue 20): per-kernel minima at 1 and at 2 threads, joined.

    TVM_NUM_THREADS=1 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.mbv2_threads time DIR --out t1.json
    TVM_NUM_THREADS=2 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.mbv2_threads time DIR --out t2.json
    .venv/bin/python -m benchmarks.mbv2_threads table t1.json t2.json

`time` loads an exported `Lowered` (e.g. `runs/peers/lowered3/mobilenet_v2/host_untuned`) and times every PrimFunc
with TVM's `time_evaluator` (single calls) in `--rounds` interleaved rounds, each round visiting every kernel in
rotating order, then the whole network (`Lowered.__call__`, the native driver); it keeps each kernel's minimum.
TVM sizes its thread pool once per process, so 1 and 2 threads are two processes (`TVM_NUM_THREADS`). `table`
multiplies each kernel by its calls per inference (`mbv2_profile.calls_per_primfunc`) and ranks by the time lost
at 2 threads, `calls x (t2 - t1/2)`: the part of a kernel's 2-thread time that a perfect split would not spend.
A kernel timed back to back keeps TVM's workers spinning, so its `t2` is the warm fork/join; the gap between the
sum of `calls x t2` and the network's 2-thread minimum is what the network loses between kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.mbv2_profile import calls_per_primfunc, layer_type
from qcompile.backends.tvm.lowered import kernel_timing_args, program_requant_operands

#: the requantize operands of a timed kernel are those of `Lowered.benchmark`'s per-kernel table
timing_args = kernel_timing_args

#: name of the empty parallel kernel timed beside the network's (`_fork_join_kernel`)
FORK_JOIN = "fork_join"


def _fork_join_kernel() -> Any:
    """A kernel that is one parallel region of 2 iterations doing one add each: its time is TVM's fork/join."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def fork_join(a: T.Buffer((64,), "int32")) -> None:
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in T.parallel(2):
            a[i * 32] = a[i * 32] + 1  # one cache line per iteration: no false sharing

    lib = tvm.compile(fork_join, target="llvm")
    return lib.mod if hasattr(lib, "mod") else lib


def primfunc_evaluators(low: Any, per_round: int, rng: np.random.Generator) -> dict[str, tuple[Any, list]]:
    """PrimFunc name -> (TVM `time_evaluator` of `per_round` single calls, `timing_args`) for every PrimFunc of a
    loaded `Lowered` (a loaded export keeps only its library's path, so the library is opened again). The requantize
    operands are the program's own where the export has it (`lowered.program_requant_operands`: the network's shifts,
    e.g. the depthwise layers' channels below 32), else `kernel_timing_args`' defaults."""
    import tvm

    from qcompile.backends.tvm.lowered import _find_function_module, load_library

    dev = tvm.cpu()
    lib = low._exec if low._lib_path is None else load_library(low._lib_path)  # noqa: SLF001
    evs = {}
    requant = program_requant_operands(low.meta, low.program)
    for name, sig in low.meta["signatures"].items():
        mod = _find_function_module(lib, name)
        if mod is None:
            continue
        args = [tvm.runtime.tensor(a, dev) for a in timing_args(sig, rng, requant=requant.get(name))]
        evs[name] = (mod.time_evaluator(name, dev, number=1, repeat=per_round), args)
    return evs


def time_kernels(lowered: Path, rounds: int, per_round: int, net_calls: int, max_others: float) -> dict:
    """Per-PrimFunc minimum (us) over `rounds` x `per_round` single calls, and the network's minimum and median of
    per-round minima (us), all interleaved in rounds in this process. Only rounds during which other processes
    used at most `max_others` cores (/proc/stat, `harness._other_load`) count, unless none was that quiet."""
    import tvm

    from qcompile import api as qc
    from qcompile.bench.harness import _cpu_snapshot, _other_load  # others' cores during a round

    low = qc.load(lowered)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    evs = primfunc_evaluators(low, per_round, rng)
    evs[FORK_JOIN] = (_fork_join_kernel().time_evaluator("main", dev, number=1, repeat=per_round),
                      [tvm.runtime.tensor(np.zeros(64, "int32"), dev)])
    x = rng.standard_normal(low.input_shape).astype(low.input_dtype)
    for _ in range(20):
        low(x)
    per_round: list[tuple[float, dict[str, float], float]] = []  # (others' cores, kernel minima, network min)
    names = list(evs)
    for r in range(rounds):
        k = r % len(names)
        a = _cpu_snapshot()
        kmin = {}
        for name in names[k:] + names[:k]:
            ev, args = evs[name]
            kmin[name] = min(ev(*args).results) * 1e6
        rmin = float("inf")
        for _ in range(net_calls):
            t = time.perf_counter()
            low(x)
            rmin = min(rmin, time.perf_counter() - t)
        per_round.append((_other_load(a, _cpu_snapshot()).get("other_load_cores", 0.0), kmin, rmin * 1e6))
    quiet = [p for p in per_round if p[0] <= max_others] or per_round
    best = {n: min(p[1][n] for p in quiet) for n in names}
    net = [p[2] for p in quiet]
    calls = calls_per_primfunc(low.meta)
    calls[FORK_JOIN] = 0  # not part of the network
    return {"threads": os.environ.get("TVM_NUM_THREADS"), "cpu": platform.processor() or platform.machine(),
            "loadavg_end": Path("/proc/loadavg").read_text().split()[:3], "rounds": rounds,
            "rounds_quiet": sum(p[0] <= max_others for p in per_round),
            "max_others_cores": max_others, "others_cores": [round(p[0], 3) for p in per_round],
            "net_min_us": min(net), "net_median_round_min_us": float(np.median(net)),
            "kernels": {n: {"min_us": best[n], "calls": calls.get(n, 1)} for n in names}}


def table(t1: dict, t2: dict) -> str:
    """Markdown table ranked by time lost at 2 threads, `calls x (t2 - t1/2)`, and the totals."""
    rows = []
    for name, a in t1["kernels"].items():
        b = t2["kernels"].get(name)
        if b is None or name == FORK_JOIN:
            continue
        n = a["calls"]
        rows.append((n * (b["min_us"] - a["min_us"] / 2), name, n, a["min_us"], b["min_us"]))
    rows.sort(reverse=True)
    out = ["| kernel | layer | calls | t1 us | t2 us | t1/t2 | lost x calls, us |",
           "|---|---|---:|---:|---:|---:|---:|"]
    s1 = s2 = lost = 0.0
    for loss, name, n, a, b in rows:
        s1, s2, lost = s1 + n * a, s2 + n * b, lost + loss
        out.append(f"| `{name}` | {layer_type(name)} | {n} | {a:.1f} | {b:.1f} | {a / b:.2f} | {loss:.1f} |")
    out.append(f"| **sum x calls** | | | {s1:.0f} | {s2:.0f} | {s1 / s2:.2f} | {lost:.0f} |")
    out.append(f"\nnetwork minimum: 1 thread {t1['net_min_us']:.0f} us, 2 threads {t2['net_min_us']:.0f} us (median of "
               f"per-round minima {t1['net_median_round_min_us']:.0f} / {t2['net_median_round_min_us']:.0f}); network"
               f" - kernel sum: {t1['net_min_us'] - s1:.0f} us at 1 thread, {t2['net_min_us'] - s2:.0f} us at 2; "
               f"quiet rounds {t1.get('rounds_quiet')} / {t2.get('rounds_quiet')}")
    if FORK_JOIN in t2["kernels"]:
        out.append(f"empty parallel region (fork/join): {t1['kernels'][FORK_JOIN]['min_us']:.2f} us at 1 thread, "
                   f"{t2['kernels'][FORK_JOIN]['min_us']:.2f} us at 2")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tp = sub.add_parser("time")
    tp.add_argument("lowered", type=Path)
    tp.add_argument("--rounds", type=int, default=30)
    tp.add_argument("--per-round", type=int, default=10)
    tp.add_argument("--net-calls", type=int, default=5)
    tp.add_argument("--max-others", type=float, default=0.2,
                    help="count only rounds where other processes used at most this many cores")
    tp.add_argument("--out", type=Path, required=True)
    tb = sub.add_parser("table")
    tb.add_argument("t1", type=Path)
    tb.add_argument("t2", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "time":
        res = time_kernels(args.lowered, args.rounds, args.per_round, args.net_calls, args.max_others)
        args.out.write_text(json.dumps(res, indent=1))
        print(f"{args.out}: network min {res['net_min_us']:.0f} us at TVM_NUM_THREADS={res['threads']}, "
              f"{res['rounds_quiet']} of {res['rounds']} rounds quiet")
    else:
        print(table(json.loads(args.t1.read_text()), json.loads(args.t2.read_text())))


if __name__ == "__main__":
    main()
