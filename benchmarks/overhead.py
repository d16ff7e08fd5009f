"""Per-call overhead of a lowered subnet: end-to-end time against the sum of its kernel times.

    OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 .venv/bin/python -m benchmarks.overhead --threads 1 --rounds 15 \\
        --out runs/overhead

Workload: the demo-sized subnet (largest `mobilenet_v3` at width 0.35, 32 px, every layer 8-bit; random weights,
calibrated on random images; `qcompile.bench.models.space_model("demo")`, the subnet of
`python -m qcompile.bench --model demo`), lowered untuned for x86 (`qc.lower`, empty tuning database). Measured in
interleaved rounds (each round times every quantity once, in rotating order, so the machine's load hits all alike):

- `Lowered.__call__` (what a user calls: input check, copy in, VM, output), and the same with the call path before
  the bound input buffer (`tvm.runtime.tensor(x)` per call, `.numpy()` copy of the output): the wrapper fix;
- the VM's `main` called from Python on a prepared TVM tensor, and timed by TVM's `time_evaluator` (C++ loop);
- `Lowered.__call__` and the VM's `main` again in thread CPU time (`median_cpu_us`, only with `--threads 1`): on
  a loaded machine wall time also counts the waits of a descheduled ~1 ms call, which kernels of a few us timed
  alone rarely see;
- every kernel alone (`Lowered.benchmark` per-PrimFunc timing), summed over the calls `main` makes (a PrimFunc
  used by several nodes counts once per call);
- the VM instructions per call (counted with the VM's instrument hook): kernel calls, `reshape` views,
  `alloc_tensor` / `alloc_storage`, `null_value` (register kills).

`--keep-views` builds without `AbsorbReshapeViews` (backends/tvm/views.py), for the before figure: the reshape
views between kernels then stay VM instructions. `--unfused` builds without the emitter's fusions (elementwise ops
in conv epilogues, `emitter.FUSED_EPILOGUE_OPS`; float islands as one kernel, `emitter.FUSE_FLOAT_ISLANDS`): each
of those ops is then its own kernel.

The excess of end-to-end over the kernel sum is split into: Python wrapper (`__call__` minus the VM called from
Python), Python-to-VM call (VM from Python minus `time_evaluator`), and VM dispatch + builtins (`time_evaluator`
minus the kernel sum; also holds the cache effects of running kernels back to back instead of alone).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def vm_instructions(low: Any, x: np.ndarray) -> dict[str, Any]:
    """Calls per `main` by symbol, from the VM's instrument hook (timings of the hook itself are not used:
    the Python callback dominates them)."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(low._exec, tvm.cpu())
    counts: collections.Counter = collections.Counter()

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            counts[symbol] += 1
        return 0

    vm.set_instrument(instrument)
    vm["main"](tvm.runtime.tensor(x))
    builtins = {s: n for s, n in counts.items() if s.startswith("vm.")}
    kernels = {s: n for s, n in counts.items() if not s.startswith("vm.")}
    return {"builtins": builtins, "kernel_calls": kernels}


def _legacy_call(low: Any):
    """`Lowered.__call__` as it was before the bound input buffer: a TVM tensor per call, output copied."""
    import tvm

    vm = low._native_vm()

    def call(x: np.ndarray) -> np.ndarray:
        arr = low._check_input(x)
        return vm["main"](tvm.runtime.tensor(arr)).numpy()

    return call


def median_us(fn, n: int) -> float:
    """Median wall time (us) of `n` back-to-back calls of `fn`."""
    ts = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn()
        ts[i] = time.perf_counter() - t
    return float(np.median(ts) * 1e6)


def median_cpu_us(fn, n: int) -> float:
    """Median CPU time of this thread (us) over `n` back-to-back calls of `fn` (1 thread only: TVM's pool
    workers are not counted). Unlike wall time it leaves out the time the thread waits descheduled, which on a
    loaded machine hits a ~1 ms call far more often than a ~5 us kernel timed alone."""
    ts = np.empty(n)
    for i in range(n):
        t = time.thread_time_ns()
        fn()
        ts[i] = time.thread_time_ns() - t
    return float(np.median(ts) / 1e3)


def measure(low: Any, rounds: int, calls: int, kernel_repeat: int) -> dict[str, Any]:
    """Interleaved rounds; per round and quantity the median of `calls` calls (us); kernels: Lowered.benchmark."""
    import tvm

    x = np.random.default_rng(0).standard_normal(low.input_shape).astype(np.float32)
    instr = vm_instructions(low, x)
    vm = low._native_vm()
    main = vm["main"]
    xt = tvm.runtime.tensor(x)
    # number=1: with number > 1 this VM's evaluator reported ~7x the per-call time (6.4 ms vs 0.82 ms)
    ev = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=calls)
    legacy = _legacy_call(low)
    quantities = {
        "lowered_call": lambda: median_us(lambda: low(x), calls),
        "lowered_call_before_fix": lambda: median_us(lambda: legacy(x), calls),
        "vm_from_python": lambda: median_us(lambda: main(xt), calls),
        "vm_time_evaluator": lambda: float(np.median(ev(xt).results) * 1e6),
        "lowered_call_cpu": lambda: median_cpu_us(lambda: low(x), calls),
        "vm_from_python_cpu": lambda: median_cpu_us(lambda: main(xt), calls),
    }
    for f in quantities.values():  # warm every path
        f()
    samples: dict[str, list[float]] = {k: [] for k in quantities}
    kernel_sums: list[float] = []
    names = list(quantities)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(quantities[name]())
        b = low.benchmark(repeat=kernel_repeat, kernels=True)
        per = {row["name"]: row["median_ms"] * 1e3 for row in b.kernels}
        kernel_sums.append(sum(per.get(s, 0.0) * n for s, n in instr["kernel_calls"].items()))
    untimed = sorted(s for s in instr["kernel_calls"] if s not in per)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    spread = {k: (float(np.percentile(v, 10)), float(np.percentile(v, 90))) for k, v in samples.items()}
    ks = float(np.median(kernel_sums))
    y = main(xt)
    wrapper = {
        "check_input": median_us(lambda: low._check_input(x), 200),
        "copy_into_bound_input": median_us(lambda: np.copyto(low._in_array, x), 200),
        "tvm_tensor_per_call (before)": median_us(lambda: tvm.runtime.tensor(x), 200),
        "output_numpy_copy (before)": median_us(lambda: y.numpy(), 200),
        "output_from_dlpack": median_us(lambda: np.from_dlpack(y), 200),
    }
    return {"median_us": med, "p10_p90_us": spread, "kernel_sum_us": ks,
            "kernel_sum_p10_p90_us": (float(np.percentile(kernel_sums, 10)), float(np.percentile(kernel_sums, 90))),
            "instructions": instr, "untimed_kernels": untimed, "wrapper_parts_us": wrapper,
            "excess_pct": 100 * (med["lowered_call"] / ks - 1), "excess_pct_before_fix": 100 * (
                med["lowered_call_before_fix"] / ks - 1)}


def to_markdown(res: dict[str, Any], threads: int, meta: dict[str, Any]) -> str:
    m, s, ks = res["median_us"], res["p10_p90_us"], res["kernel_sum_us"]
    b = res["instructions"]["builtins"]
    n_kernels = sum(res["instructions"]["kernel_calls"].values())
    rows = [
        ("`Lowered.__call__` (numpy in, numpy out)", "lowered_call"),
        ("`Lowered.__call__` before the fix (TVM tensor per call, output copy)", "lowered_call_before_fix"),
        ("VM `main` from Python, prepared TVM tensor", "vm_from_python"),
        ("VM `main`, `time_evaluator` (C++ loop)", "vm_time_evaluator"),
        ("`Lowered.__call__`, thread CPU time", "lowered_call_cpu"),
        ("VM `main` from Python, thread CPU time", "vm_from_python_cpu"),
    ]
    lines = [f"{threads} thread(s), {meta['cpu']}, load average before/after {meta['load_before']} / "
             f"{meta['load_after']}, {meta['timestamp']}:", "",
             "| quantity | median us | p10-p90 us | x kernel sum |", "|---|---:|---:|---:|"]
    for label, k in rows:
        lines.append(f"| {label} | {m[k]:.0f} | {s[k][0]:.0f}-{s[k][1]:.0f} | {m[k] / ks:.3f} |")
    lo, hi = res["kernel_sum_p10_p90_us"]
    lines.append(f"| sum of the {n_kernels} kernel calls, each timed alone | {ks:.0f} | {lo:.0f}-{hi:.0f} | 1.000 |")
    lines += ["", "Breakdown of the excess (medians, us per call): "
              f"Python wrapper {m['lowered_call'] - m['vm_from_python']:.0f} (before the fix "
              f"{m['lowered_call_before_fix'] - m['vm_from_python']:.0f}); Python-to-VM call "
              f"{m['vm_from_python'] - m['vm_time_evaluator']:.0f}; VM dispatch, builtins and back-to-back cache "
              f"effects {m['vm_time_evaluator'] - ks:.0f}.", "",
              "VM instructions per call: " + ", ".join(f"{n} `{k.removeprefix('vm.builtin.')}`"
                                                       for k, n in sorted(b.items(), key=lambda kv: -kv[1]))
              + f", {n_kernels} kernel calls.", "",
              "Wrapper parts (us, median of 200): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                 res["wrapper_parts_us"].items()) + "."]
    return "\n".join(lines) + "\n"


def _pipeline(keep_views: bool) -> Any:
    """The default lowering pipeline, or the same without `AbsorbReshapeViews`."""
    import dataclasses
    import functools

    from qcompile.backends.tvm.pipeline import default_pipeline, finalize_passes

    pipe = default_pipeline()
    return dataclasses.replace(pipe, finalize=functools.partial(finalize_passes, absorb_views=False)) \
        if keep_views else pipe


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=50, help="calls per quantity per round (their median is kept)")
    ap.add_argument("--kernel-repeat", type=int, default=20)
    ap.add_argument("--out", default="runs/overhead")
    ap.add_argument("--keep-views", action="store_true",
                    help="build without absorbing the reshape views between kernels (the before figure)")
    ap.add_argument("--unfused", action="store_true",
                    help="build without epilogue and float-island fusion (one kernel per elementwise op)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import qcompile as qc
    from qcompile.backends.tvm import lower_integer_graph
    from qcompile.bench.models import space_model
    from qcompile.utils.io import atomic_write_text

    ig = qc.to_integer(space_model("demo"))
    if a.unfused:
        from qcompile.backends.tvm import emitter

        emitter.FUSED_EPILOGUE_OPS = frozenset()
        emitter.FUSE_FLOAT_ISLANDS = False
    warm = os.environ.get("QCOMPILE_CACHE")
    with tempfile.TemporaryDirectory() as empty:  # untuned: our default schedules, no database records
        os.environ["QCOMPILE_CACHE"] = empty
        low = lower_integer_graph(ig, "x86", num_threads=a.threads, pipeline=_pipeline(a.keep_views))
    if warm is None:
        os.environ.pop("QCOMPILE_CACHE")
    else:
        os.environ["QCOMPILE_CACHE"] = warm
    load_before = "/".join(f"{v:.1f}" for v in os.getloadavg())
    res = measure(low, a.rounds, a.calls, a.kernel_repeat)
    from qcompile.bench.harness import _cpu_info

    meta = {"cpu": _cpu_info("model name") or platform.processor(), "load_before": load_before,
            "load_after": "/".join(f"{v:.1f}" for v in os.getloadavg()),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": a.threads, "kernels": len(low.kernels),
            "reshape_views": "kept" if a.keep_views else "absorbed", "fusion": "off" if a.unfused else "on"}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"overhead_t{a.threads}.json", json.dumps(res | {"meta": meta}, indent=1))
    md = to_markdown(res, a.threads, meta)
    atomic_write_text(out / f"overhead_t{a.threads}.md", md)
    log.info("\n%s", md)


if __name__ == "__main__":
    main()
