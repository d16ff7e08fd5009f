"""Parallel regions only where they pay: one network built with several `parallel_if_worth` thresholds.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m benchmarks.parallel_regions --threads 2 \\
        --models demo mbv2 --thresholds 0 raw default never --out runs/parallel_regions

Each model is lowered untuned for x86 once per threshold, every build in this one process (the thresholds are
environment variables read at schedule time): a number is `QCOMPILE_PARALLEL_MIN_US`, the estimated serial time
(us) from which a kernel is parallel; `0` = every kernel parallel (as before any rule), `never` = none,
`default` = `schedules/parallel.py`'s `DEFAULT_MIN_US`; `raw` = the earlier unweighted rule (raw inner
iterations >= 2**20, whatever the kernel kind) and `raw:N` the same with N iterations
(`QCOMPILE_PARALLEL_MIN_WORK`). TVM sizes its pool once per process, so 1 and 2 threads are two runs of this
script. Timed in interleaved rounds (each round calls every build `--calls`
times, in rotating order, so the machine's load hits all alike): the median per round of the VM's `main`
called from Python on a prepared tensor, and the median over rounds. With `--kernels`, the per-kernel medians
(`Lowered.benchmark`) of the `0` and `never` builds, joined by PrimFunc name: which kernels a parallel
region speeds up, and from what serial time on.

Models: `demo`, the demo-sized subnet (largest `mobilenet_v3` at width 0.35, 32 px, 8-bit; `overhead.py`'s);
`mbv2`, MobileNetV2 1.0 at 224 (`qcompile.bench`'s synthetic integer graph).
"""

from __future__ import annotations

import argparse
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

from benchmarks._common import environment, median_us, rotating_rounds

log = logging.getLogger(__name__)

NEVER_US = "1e30"
#: the unweighted rule's threshold before kernel kinds were weighted (raw inner iterations)
RAW_DEFAULT = 1 << 20


def integer_graph(model: str) -> Any:
    """The integer graph of `demo` or `mbv2` (seeded)."""
    import qcompile as qc

    if model == "demo":
        from qcompile.bench.models import space_model

        return qc.to_integer(space_model("demo"))
    if model == "mbv2":
        from qcompile.bench.models import mobilenet_v2, synthetic_integer_graph

        return synthetic_integer_graph(mobilenet_v2(), 224)
    raise qc.ConfigError(f"--models: {model!r} is not one of 'demo', 'mbv2'")


def _threshold_env(name: str) -> dict[str, str | None]:
    """The environment of threshold `name` (`QCOMPILE_PARALLEL_MIN_US` / `_MIN_WORK`; None = unset)."""
    from qcompile.backends.tvm.schedules.parallel import ENV_MIN_US, ENV_MIN_WORK

    if name == "raw" or name.startswith("raw:"):
        return {ENV_MIN_US: None, ENV_MIN_WORK: str(int(name[4:]) if name != "raw" else RAW_DEFAULT)}
    us = {"default": None, "never": NEVER_US}.get(name, name)
    if us is not None:
        float(us)  # a malformed threshold fails here, before any build
    return {ENV_MIN_US: us, ENV_MIN_WORK: None}


def build(ig: Any, threads: int, threshold: str) -> Any:
    """`ig` lowered untuned for x86 with the parallel rule of `threshold` (`_threshold_env`); the environment
    restored."""
    import qcompile as qc

    # untuned: default schedules, no database records
    with tempfile.TemporaryDirectory() as empty, environment({**_threshold_env(threshold), "QCOMPILE_CACHE": empty}):
        return qc.lower(ig, target="x86", num_threads=threads)


def measure(builds: dict[str, Any], rounds: int, calls: int) -> dict[str, Any]:
    """Median (us) of `calls` VM calls per build per round, interleaved; median and p10/p90 over rounds."""
    import tvm

    mains = {}
    for name, low in builds.items():
        x = np.random.default_rng(0).standard_normal(low.input_shape).astype(np.float32)
        main, xt = low._native_vm()["main"], tvm.runtime.tensor(x)
        mains[name] = lambda m=main, t=xt: m(t)
        median_us(mains[name], 5)  # warm
    samples = rotating_rounds(
        {k: partial(median_us, m, calls) for k, m in mains.items()}, rounds,
        on_round=lambda r, got: log.info("round %d/%d: %s", r + 1, rounds,
                                         ", ".join(f"{n} {v[-1]:.0f} us" for n, v in got.items())))
    return {
        n: {
            "median_us": float(np.median(v)),
            "p10_us": float(np.percentile(v, 10)),
            "p90_us": float(np.percentile(v, 90)),
            "rounds": v,
        }
        for n, v in samples.items()
    }


def kernel_table(par: Any, ser: Any, repeat: int) -> list[dict[str, Any]]:
    """Per-PrimFunc medians (us) of the all-parallel and the serial build, joined by name."""
    a = {r["name"]: r["median_ms"] * 1e3 for r in par.benchmark(repeat=repeat, kernels=True).kernels}
    b = {r["name"]: r["median_ms"] * 1e3 for r in ser.benchmark(repeat=repeat, kernels=True).kernels}
    rows = [{"name": n, "parallel_us": a[n], "serial_us": b[n]} for n in a if n in b]
    return sorted(rows, key=lambda r: r["serial_us"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["demo", "mbv2"])
    ap.add_argument(
        "--thresholds",
        nargs="+",
        default=["0", "raw", "default", "never"],
        help="estimated serial us (QCOMPILE_PARALLEL_MIN_US), 'default', 'never', 'raw' or 'raw:N' (module doc)",
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=50, help="calls per build per round (their median is kept)")
    ap.add_argument("--kernels", action="store_true", help="also the per-kernel table of the 0 and never builds")
    ap.add_argument("--kernel-repeat", type=int, default=30)
    ap.add_argument("--out", default="runs/parallel_regions")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from qcompile.backends.tvm.threads import ensure_thread_default
    from qcompile.bench.harness import _cpu_info
    from qcompile.utils.io import atomic_write_text

    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads))
    ensure_thread_default(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in a.models:
        path = out / f"{model}_t{a.threads}.json"
        if path.exists():  # resumable: one file per model and thread count
            log.info("%s exists, skipped", path)
            continue
        ig = integer_graph(model)
        t0 = time.perf_counter()
        thresholds = list(dict.fromkeys(a.thresholds + (["0", "never"] if a.kernels else [])))
        builds = {t: build(ig, a.threads, t) for t in thresholds}
        log.info("%s: %d builds in %.0f s", model, len(builds), time.perf_counter() - t0)
        load_before = "/".join(f"{v:.1f}" for v in os.getloadavg())
        res: dict[str, Any] = {"e2e": measure(builds, a.rounds, a.calls)}
        if a.kernels:
            res["kernels"] = kernel_table(builds["0"], builds["never"], a.kernel_repeat)
        res["meta"] = {
            "cpu": _cpu_info("model name") or platform.processor(),
            "threads": a.threads,
            "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"),
            "load_before": load_before,
            "load_after": "/".join(f"{v:.1f}" for v in os.getloadavg()),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "rounds": a.rounds,
            "calls": a.calls,
            "thresholds": {t: _threshold_env(t) for t in thresholds},
        }
        atomic_write_text(path, json.dumps(res, indent=1))
        e2e = res["e2e"]
        log.info(
            "%s, %d thread(s), load %s / %s: %s",
            model,
            a.threads,
            load_before,
            res["meta"]["load_after"],
            ", ".join(
                f"{t}: {e2e[t]['median_us']:.0f} us ({e2e[t]['p10_us']:.0f}-{e2e[t]['p90_us']:.0f})" for t in e2e
            ),
        )


if __name__ == "__main__":
    main()
