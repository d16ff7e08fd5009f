"""Per-call overhead of a lowered subnet: end-to-end time against the sum of its kernel times.

    OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 .venv/bin/python -m benchmarks.overhead --threads 1 --rounds 15 \\
        --out runs/overhead

Workload: the demo-sized subnet (largest `mobilenet_v3` at width 0.35, 32 px, every layer 8-bit; random weights,
calibrated on random images; `qcompile.bench.models.space_model("demo")`, the subnet of
`python -m qcompile.bench --model demo`), lowered untuned for x86 (`qc.lower`, empty tuning database). Measured in
interleaved rounds (each round times every quantity once, in rotating order, so the machine's load hits all alike):

- `Lowered.__call__` (what a user calls: input check, copy in, the native driver called directly or the VM's
  `main`, output);
- for a build with a native driver: `__call__` as it was before it called the driver directly (input checked
  from Python, VM `main`, output from DLPack), and the driver alone called from Python on prepared tensors;
- the VM's `main` called from Python on a prepared TVM tensor, and timed by TVM's `time_evaluator` (C++ loop);
- `Lowered.__call__` and the VM's `main` again in thread CPU time (`median_cpu_us`, only with `--threads 1`): on
  a loaded machine wall time also counts the waits of a descheduled ~1 ms call, which kernels of a few us timed
  alone rarely see;
- every kernel alone (`Lowered.benchmark` per-PrimFunc timing), summed over the calls `main` makes (a PrimFunc
  used by several nodes counts once per call);
- the VM instructions per call (counted with the VM's instrument hook): kernel calls, `reshape` views,
  `alloc_tensor` / `alloc_storage`, `null_value` (register kills).

Each build of `--builds` (default all three) is measured in the same rounds: `driver`, the default lowering,
where `main` calls one native function that calls every kernel's body directly (`backends/tvm/driver.py`),
`packed`, the same driver calling each kernel through its packed API (`finalize_passes(direct_calls=False)`, the
figure before direct calls), and `vm`, the same kernels with one Relax VM instruction per kernel call
(`finalize_passes(native_driver=False)`, the figure before the driver).

`--probe DIR` measures instead what `Lowered.__call__` adds to the native driver of an exported lowering
(`call_minus_driver`: `__call__`, the driver on its prepared tensors and the input copy alone, interleaved rounds),
e.g. MobileNetV2 224 at 2 threads.

`--keep-views` builds without `AbsorbReshapeViews` (backends/tvm/views.py), for the before figure: the reshape
views between kernels then stay VM instructions. `--unfused` builds without the emitter's fusions (elementwise ops
in conv epilogues, `emitter.FUSED_EPILOGUE_OPS`; float islands as one kernel, `emitter.FUSE_FLOAT_ISLANDS`): each
of those ops is then its own kernel.

Each cell gives the median over rounds (and p10-p90) and the minimum over rounds, each against the kernel sum's.
The excess of end-to-end over the kernel sum is split into: Python wrapper (`__call__` minus what it calls: the
driver or the VM, called from Python), Python-to-VM call (VM from Python minus `time_evaluator`), and VM dispatch +
builtins (`time_evaluator` minus the kernel sum; also holds the cache effects of running kernels back to back
instead of alone).
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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import median_us, rotating_rounds

log = logging.getLogger(__name__)


def vm_instructions(low: Any, x: np.ndarray) -> dict[str, Any]:
    """Calls per `main` by symbol, from the VM's instrument hook (timings of the hook itself are not used:
    the Python callback dominates them). With a native driver (`meta["driver"]`) the hook sees one call, the
    driver's; its kernel calls are the driver's list."""
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
    driver = low.meta.get("driver")
    if driver:
        builtins |= {f"driver {s}": n for s, n in kernels.items()}
        kernels = dict(collections.Counter(driver["calls"]))
    return {"builtins": builtins, "kernel_calls": kernels}


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


#: quantities timed per build, each round (label, key); a build without a native driver has no `driver_*` rows
ROWS = (
    ("`Lowered.__call__` (numpy in, numpy out)", "lowered_call"),
    ("`__call__` through VM `main` (input check from Python, output from DLPack: before the direct driver)",
     "lowered_call_via_main"),
    ("the driver from Python, prepared tensors", "driver_from_python"),
    ("`main` from Python, prepared TVM tensor", "vm_from_python"),
    ("`main`, `time_evaluator` (C++ loop)", "vm_time_evaluator"),
    ("`Lowered.__call__`, thread CPU time", "lowered_call_cpu"),
    ("`main` from Python, thread CPU time", "vm_from_python_cpu"),
)


def measure(builds: dict[str, Any], rounds: int, calls: int, kernel_repeat: int) -> dict[str, Any]:
    """Interleaved rounds over every build and quantity (rotating order); per round and quantity the median of
    `calls` calls (us); kernels: `Lowered.benchmark` of each build, summed over the calls its `main` makes."""
    import tvm

    any_low = next(iter(builds.values()))
    x = np.random.default_rng(0).standard_normal(any_low.input_shape).astype(np.float32)
    xt = tvm.runtime.tensor(x)
    quantities: dict[tuple[str, str], Any] = {}
    instr = {}
    for label, low in builds.items():
        instr[label] = vm_instructions(low, x)
        vm = low._native_vm()
        main = vm["main"]
        # number=1: with number > 1 this VM's evaluator reported ~7x the per-call time (6.4 ms vs 0.82 ms)
        ev = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=calls)
        quantities |= {
            (label, "lowered_call"): lambda low=low: median_us(lambda: low(x), calls),
            (label, "vm_from_python"): lambda main=main: median_us(lambda: main(xt), calls),
            (label, "vm_time_evaluator"): lambda ev=ev: float(np.median(ev(xt).results) * 1e6),
            (label, "lowered_call_cpu"): lambda low=low: median_cpu_us(lambda: low(x), calls),
            (label, "vm_from_python_cpu"): lambda main=main: median_cpu_us(lambda: main(xt), calls),
        }
        low(x)  # binds the input buffer and, where the library has one, the directly called driver
        if low._driver is not None:
            quantities |= {
                (label, "lowered_call_via_main"): lambda low=low, main=main: median_us(
                    lambda: _call_via_main(low, main, x), calls),
                (label, "driver_from_python"): lambda low=low: median_us(
                    lambda: low._driver(*low._driver_args), calls),
            }
    for f in quantities.values():  # warm every path
        f()
    kernel_sums: dict[str, list[float]] = {label: [] for label in builds}
    untimed: dict[str, list[str]] = {}

    def kernels_round(r: int, _: object) -> None:  # after each round's quantities: every build's kernel sum
        for label, low in builds.items():
            b = low.benchmark(repeat=kernel_repeat, kernels=True)
            per = {row["name"]: row["median_ms"] * 1e3 for row in b.kernels}
            calls_ = instr[label]["kernel_calls"]
            kernel_sums[label].append(sum(per.get(s, 0.0) * n for s, n in calls_.items()))
            untimed[label] = sorted(s for s in calls_ if s not in per)

    # step 7: rotate the start, builds and quantities alike
    samples = rotating_rounds(quantities, rounds, step=7, on_round=kernels_round)
    out: dict[str, Any] = {}
    for label, low in builds.items():
        rows = [q for _, q in ROWS if (label, q) in samples]
        med = {q: float(np.median(samples[(label, q)])) for q in rows}
        spread = {q: (float(np.percentile(samples[(label, q)], 10)), float(np.percentile(samples[(label, q)], 90)))
                  for q in rows}
        low_ = {q: float(np.min(samples[(label, q)])) for q in rows}
        ks = float(np.median(kernel_sums[label]))
        out[label] = {"median_us": med, "p10_p90_us": spread, "min_us": low_, "kernel_sum_us": ks,
                      "kernel_sum_min_us": float(np.min(kernel_sums[label])),
                      "kernel_sum_p10_p90_us": (float(np.percentile(kernel_sums[label], 10)),
                                                float(np.percentile(kernel_sums[label], 90))),
                      "instructions": instr[label], "untimed_kernels": untimed[label],
                      "driver": low.meta.get("driver") is not None,
                      "excess_pct": 100 * (med["lowered_call"] / ks - 1)}
    y = any_low._native_vm()["main"](xt)
    out["wrapper_parts_us"] = {
        "check_input": median_us(lambda: any_low._check_input(x), 200),
        "ready_input (short check from Python)": median_us(lambda: any_low._ready_input(x, any_low._in_array), 200),
        "copy_into_bound_input": median_us(lambda: np.copyto(any_low._in_array, x), 200),
        "output_from_dlpack": median_us(lambda: np.from_dlpack(y), 200),
        "output_copy": median_us(lambda: np.from_dlpack(y).copy(), 200),
    }
    return out


def _call_via_main(low: Any, main: Any, x: np.ndarray) -> np.ndarray:
    """`Lowered.__call__` as it was before the driver was called directly: the input checked from Python
    (`_ready_input`), copied into the bound buffer, VM `main` (output and arena tensors allocated per call), the
    output from DLPack."""
    if not low._ready_input(x, low._in_array):
        raise ValueError("the benchmark input must take the short path")
    np.copyto(low._in_array, x)
    return np.from_dlpack(main(low._in_tensor))


def to_markdown(res: dict[str, Any], threads: int, meta: dict[str, Any]) -> str:
    labels = [k for k in res if k != "wrapper_parts_us"]
    lines = [f"{threads} thread(s), {meta['cpu']}, load average before/after {meta['load_before']} / "
             f"{meta['load_after']}, {meta['timestamp']}; builds measured in the same interleaved rounds:", "",
             "| quantity | " + " | ".join(f"{lb}: median us (p10-p90), x kernel sum" for lb in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for text, q in ROWS:
        cells = []
        for lb in labels:
            if q not in res[lb]["median_us"]:
                cells.append("-")
                continue
            m, s, ks = res[lb]["median_us"][q], res[lb]["p10_p90_us"][q], res[lb]["kernel_sum_us"]
            mn, ksmin = res[lb]["min_us"][q], res[lb]["kernel_sum_min_us"]
            cells.append(f"{m:.1f} ({s[0]:.0f}-{s[1]:.0f}), **{m / ks:.3f}**; min {mn:.1f}, {mn / ksmin:.3f}")
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    cells = []
    for lb in labels:
        lo, hi = res[lb]["kernel_sum_p10_p90_us"]
        n = sum(res[lb]["instructions"]["kernel_calls"].values())
        cells.append(f"{res[lb]['kernel_sum_us']:.1f} ({lo:.0f}-{hi:.0f}); min {res[lb]['kernel_sum_min_us']:.1f}; "
                     f"{n} calls")
    lines.append("| sum of the kernel calls, each timed alone | " + " | ".join(cells) + " |")
    lines += ["", "Cells: median over rounds of the per-round medians (p10-p90 over rounds), its ratio to the median "
              "kernel sum; the minimum over rounds and its ratio to the minimum kernel sum."]
    lines.append("")
    for lb in labels:
        m, ks = res[lb]["median_us"], res[lb]["kernel_sum_us"]
        b = res[lb]["instructions"]["builtins"]
        via = "the driver" if "driver_from_python" in m else "the VM"
        lines += [f"{lb}: excess over the kernel sum (medians, us per call): Python wrapper "
                  f"{m['lowered_call'] - m.get('driver_from_python', m['vm_from_python']):.1f} (around {via} "
                  f"called from Python); Python-to-VM call "
                  f"{m['vm_from_python'] - m['vm_time_evaluator']:.0f}; VM dispatch, builtins, driver and "
                  f"back-to-back cache effects {m['vm_time_evaluator'] - ks:.0f}. VM instructions per call: "
                  + ", ".join(f"{n} `{k.removeprefix('vm.builtin.')}`" for k, n in sorted(b.items(),
                                                                                        key=lambda kv: -kv[1]))
                  + ".", ""]
    lines.append("Wrapper parts (us, median of 200): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                    res["wrapper_parts_us"].items()) + ".")
    return "\n".join(lines) + "\n"


#: the builds `--builds` names: the default native driver (direct kernel calls), the native driver calling the
#: kernels through their packed API, and one VM instruction per kernel (the figures before)
BUILDS = {"driver": "native driver", "packed": "native driver, packed kernel calls", "vm": "Relax VM per kernel"}


def _pipeline(keep_views: bool, kind: str) -> Any:
    """The default lowering pipeline for build `kind` (a key of `BUILDS`), without `AbsorbReshapeViews` if
    `keep_views`."""
    import dataclasses
    import functools

    from qcompile.backends.tvm.pipeline import default_pipeline, finalize_passes

    return dataclasses.replace(default_pipeline(), finalize=functools.partial(
        finalize_passes, absorb_views=not keep_views, native_driver=kind != "vm", direct_calls=kind != "packed"))


def call_minus_driver(low: Any, rounds: int, calls: int, seed: int = 0) -> dict[str, Any]:
    """What `Lowered.__call__` adds to its native driver on an exported lowering (`--probe DIR`, e.g. MobileNetV2
    224): per round (interleaved, rotating order) the median of `calls` calls of `__call__` on a float input as
    numpy makes it, of the driver called from Python on its prepared tensors, and of the input copy into the bound
    buffer alone (us); minima and medians over rounds. ValueError for a lowering whose `__call__` does not call the
    driver directly (no driver, a dynamic batch, or an output above `lowered._COPY_OUT_MAX` bytes).

    Where `__call__` hands the driver the caller's array (`lowered.ZERO_COPY_MIN_BYTES`, `zero_copy` in the
    result) also `call_copy`, `__call__` on a read-only view of the same array (the copy path), and
    `driver_zero_copy`, the driver on the DLPack import of the caller's array."""
    x = np.random.default_rng(seed).standard_normal(low.input_shape).astype(low.input_dtype)
    low(x)
    if low._driver is None or low._ready is None:
        raise ValueError(f"{low}: __call__ does not call the native driver directly here")
    quantities = {"call": lambda: low(x), "driver": lambda: low._driver(*low._driver_args),
                  "input_copy": lambda: np.copyto(low._in_array, x)}
    zc = low._ready[6] if len(low._ready) > 6 else None
    if zc is not None:
        frozen = x.view()
        frozen.flags.writeable = False  # numpy exports no read-only array through DLPack: the copy path
        quantities["call_copy"] = lambda: low(frozen)
        quantities["driver_zero_copy"] = lambda: zc[1](zc[0](x), *zc[2:])
    samples = rotating_rounds({k: partial(median_us, f, calls) for k, f in quantities.items()}, rounds)
    mins = {k: float(np.min(v)) for k, v in samples.items()}
    meds = {k: float(np.median(v)) for k, v in samples.items()}
    return {"min_us": mins, "median_us": meds, "call_minus_driver_min_us": mins["call"] - mins["driver"],
            "call_minus_driver_median_us": meds["call"] - meds["driver"], "input_bytes": int(x.nbytes),
            "input_mod_64": int(x.ctypes.data % 64), "zero_copy": zc is not None}


def _probe(a: argparse.Namespace) -> None:
    """`--probe DIR`: `call_minus_driver` of an exported lowering, printed and written to `--out`."""
    import qcompile as qc
    from qcompile.bench.harness import _cpu_info
    from qcompile.utils.io import atomic_write_text

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    low = qc.load(a.probe)
    load_before = "/".join(f"{v:.1f}" for v in os.getloadavg())
    res = call_minus_driver(low, a.rounds, a.calls)
    res["meta"] = {"lowered": str(a.probe), "cpu": _cpu_info("model name") or platform.processor(),
                   "threads": low.num_threads, "load_before": load_before,
                   "load_after": "/".join(f"{v:.1f}" for v in os.getloadavg()),
                   "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "probe.json", json.dumps(res, indent=1))
    log.info("__call__ minus the driver: %.1f us by minima, %.1f by medians (input copy alone %.1f us; %s)",
             res["call_minus_driver_min_us"], res["call_minus_driver_median_us"], res["min_us"]["input_copy"],
             res["meta"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=50, help="calls per quantity per round (their median is kept)")
    ap.add_argument("--kernel-repeat", type=int, default=20)
    ap.add_argument("--out", default="runs/overhead")
    ap.add_argument("--keep-views", action="store_true",
                    help="build without absorbing the reshape views between kernels (the before figure)")
    ap.add_argument("--builds", default="driver,packed,vm",
                    help="comma-separated builds measured side by side: " + ", ".join(f"{k} ({v})" for k, v in
                                                                                    BUILDS.items()))
    ap.add_argument("--unfused", action="store_true",
                    help="build without epilogue and float-island fusion (one kernel per elementwise op)")
    ap.add_argument("--probe", metavar="DIR",
                    help="instead: what __call__ adds to the native driver of the exported lowering DIR "
                         "(call_minus_driver), e.g. MobileNetV2 224 at --threads 2")
    a = ap.parse_args(argv)
    if a.probe:
        _probe(a)
        return
    kinds = [k.strip() for k in a.builds.split(",") if k.strip()]
    if not kinds or any(k not in BUILDS for k in kinds):
        ap.error(f"--builds {a.builds!r}: a comma-separated list of {', '.join(BUILDS)}")
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
        builds = {BUILDS[k]: lower_integer_graph(ig, "x86", num_threads=a.threads,
                                                 pipeline=_pipeline(a.keep_views, k)) for k in kinds}
    if warm is None:
        os.environ.pop("QCOMPILE_CACHE")
    else:
        os.environ["QCOMPILE_CACHE"] = warm
    load_before = "/".join(f"{v:.1f}" for v in os.getloadavg())
    res = measure(builds, a.rounds, a.calls, a.kernel_repeat)
    from qcompile.bench.harness import _cpu_info

    meta = {"cpu": _cpu_info("model name") or platform.processor(), "load_before": load_before,
            "load_after": "/".join(f"{v:.1f}" for v in os.getloadavg()),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": a.threads,
            "kernels": len(next(iter(builds.values())).kernels),
            "reshape_views": "kept" if a.keep_views else "absorbed", "fusion": "off" if a.unfused else "on"}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"overhead_t{a.threads}.json", json.dumps(res | {"meta": meta}, indent=1))
    md = to_markdown(res, a.threads, meta)
    atomic_write_text(out / f"overhead_t{a.threads}.md", md)
    log.info("\n%s", md)


if __name__ == "__main__":
    main()

