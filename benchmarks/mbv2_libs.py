"""Exported lowerings of the same network against each other: outputs compared equal, network and kernel minima.

    TVM_NUM_THREADS=1 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.mbv2_libs \\
        old=/work/main/runs/peers/lowered4/mobilenet_v2/host_untuned new=runs/lowered/host_untuned --rounds 30

Every library's output on the same input must equal its own integer program's (the export's `program`, run by
the reference executor; bit for bit); then, in `--rounds` rounds
(the libraries' order reversed every other round, a `--settle-ms` pause before each), each library's PrimFuncs are
timed with TVM's `time_evaluator` (`mbv2_threads.primfunc_evaluators`: requantize operands with shift 36) and the
network is called `--net-calls` times (`Lowered.__call__` with the real constants). Printed per library: the
network's minimum and median of per-round minima, the kernel sum (each PrimFunc's minimum x its calls per
inference, `mbv2_profile.calls_per_primfunc`) and its depthwise part; and how many rounds were quiet (others
<= 0.2 cores, `harness._other_load`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("libs", nargs="+", help="NAME=DIR of an exported lowering")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TVM_NUM_THREADS", "1")))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--net-calls", type=int, default=20)
    ap.add_argument("--settle-ms", type=float, default=50.0)
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's pool exists
    from benchmarks.mbv2_profile import calls_per_primfunc
    from benchmarks.mbv2_threads import primfunc_evaluators
    from qcompile import api as qc
    from qcompile.bench.harness import _cpu_snapshot, _other_load

    libs = {}
    for spec in args.libs:
        name, _, path = spec.partition("=")
        libs[name] = qc.load(Path(path))
    x = np.random.default_rng(0).standard_normal(next(iter(libs.values())).input_shape).astype(np.float32)
    for k, low in libs.items():  # each library against the reference executor on its own integer program
        ref = low.program(torch.from_numpy(x)) if low.program is not None else None
        if ref is None:
            raise AssertionError(f"{k}: the export has no integer program to check the library against")
        if not np.array_equal(low(x), np.asarray(ref)):
            raise AssertionError(f"{k}: the library's output differs from its integer program's")
    for low in libs.values():
        low.num_threads = args.threads
    evs = {k: primfunc_evaluators(low, 10, np.random.default_rng(0)) for k, low in libs.items()}
    calls = {k: calls_per_primfunc(low.meta) for k, low in libs.items()}
    net: dict[str, list[float]] = {k: [] for k in libs}
    kmin = {k: dict.fromkeys(evs[k], float("inf")) for k in libs}
    quiet = 0
    for r in range(args.rounds):
        a = _cpu_snapshot()
        for k in (list(libs) if r % 2 == 0 else list(libs)[::-1]):
            time.sleep(args.settle_ms / 1e3)
            for n, (ev, ev_args) in evs[k].items():
                kmin[k][n] = min(kmin[k][n], min(ev(*ev_args).results) * 1e6)
            best = float("inf")
            for _ in range(args.net_calls):
                t = time.perf_counter()
                libs[k](x)
                best = min(best, time.perf_counter() - t)
            net[k].append(best * 1e6)
        quiet += _other_load(a, _cpu_snapshot()).get("other_load_cores", 0.0) <= 0.2
    res = {}
    for k in libs:
        ks = sum(kmin[k][n] * calls[k][n] for n in kmin[k])
        dws = sum(kmin[k][n] * calls[k][n] for n in kmin[k] if n.startswith("qc_dw"))
        res[k] = {"net_min_us": min(net[k]), "net_median_us": float(np.median(net[k])), "kernel_sum_us": ks,
                  "depthwise_us": dws}
        print(f"{k}: network min {min(net[k]):.0f} us, median of round minima {np.median(net[k]):.0f} us; "
              f"kernel sum {ks:.0f} us, depthwise {dws:.0f} us")
    print(f"outputs exact; {args.threads} thread(s); quiet rounds {quiet} of {args.rounds}; load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return res


if __name__ == "__main__":
    main()
