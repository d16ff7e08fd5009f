"""Tuned rows for the peer harness (issue 20): warm a tuning database and export the lowerings `qcompile.bench` reuses.

One command warms the database in `--cache` (`QCOMPILE_CACHE`) for the harness's models at `--threads` (the tuner
times at the lowering's thread count) and exports, per model, the untuned and the tuned lowering into
`--lowered/<model>/host_{untuned,tuned}`, made by the harness's own `peers._lowering` from the harness's own program
(`models.harness_program`), so their keys (`peers.lowering_key`) match and the harness only times:

    nice -n 10 .venv/bin/python -m benchmarks.tune_peers --cache runs/peers/cache --lowered runs/peers/tuned --trials 20

then, per model M (in a quiet window),

    QCOMPILE_CACHE=runs/peers/cache python -m qcompile.bench --model M --threads 2 --tvm host --tuned --trials 20 \\
        --lowered runs/peers/tuned/M --repeats 30 --peers ...

The exported lowerings are always rebuilt (kernels may have changed since they were made); the database is kept,
so a rerun tunes only what is missing, unless `--fresh` moves it aside first (do that after kernels changed: a
record is not re-timed). The report (`--out`, JSON, and the log) gives per model the tuning time, and per tuned
workload the winner against the untuned default, both timed interleaved by the tuner (`tuning.pick_fastest`).

`compare DIR/mobilenet_v2` then times the two exported libraries' PrimFuncs against each other in one process,
interleaved in rounds, minima (`time_compare`), and the networks likewise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.tune_peers")

MODELS = ("mobilenet_v2", "mobilenet_v3-largest", "demo")
#: default schedules timed per kernel: the default, the untuned rules' other choices and the closest grid tiles
#: (`gemm_space`, `dw_candidates`), chosen so that the three models tune in about 15 min at 2 threads on the 2-vCPU
#: Zen 4 (docs/peers.md, session 13)
TRIALS = 20
#: other processes' cores (/proc/stat) above which a tuning run is flagged: under that load, 2-thread minima of the same
#: kernel differed by up to 1.6x between runs here (docs/peers.md, session 13)
QUIET_CORES = 0.2


def _threads_env(threads: int) -> None:
    """TVM's pool is sized once per process (`threads.pool_threads` can only shrink it): make it `threads` wide."""
    have = os.environ.get("TVM_NUM_THREADS")
    if have is None:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    elif int(have) < threads:
        raise SystemExit(f"TVM_NUM_THREADS={have}: the tuner must time at --threads {threads}; unset it or set it to "
                         f"at least {threads}")


def _records(target: Any) -> dict:
    from qcompile.backends.tvm import tuning

    tuning._DB_CACHE.clear()  # noqa: SLF001 (re-read what the tuned lowering wrote)
    return dict(tuning.database(target).records)


def warm(models: list[str], cache: Path, lowered: Path, threads: int, trials: int, fresh: bool) -> dict:
    """Tune and export every model (see the module docstring); returns the report."""
    import tvm

    from qcompile.backends.tvm import tuning
    from qcompile.backends.tvm.targets import resolve_target
    from qcompile.bench.harness import _cpu_snapshot, _other_load
    from qcompile.bench.models import SPACE_MODELS, harness_program
    from qcompile.bench.peers import _lowering  # the harness's own: same key, same folder

    os.environ["QCOMPILE_CACHE"] = str(cache)
    if fresh and tuning.cache_dir().exists():
        aside = tuning.cache_dir().with_name(f"tuning.{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(tuning.cache_dir(), aside)
        log.info("moved the old database aside to %s", aside)
    tuning._DB_CACHE.clear()  # noqa: SLF001
    target = tvm.target.Target(resolve_target("x86", threads).tvm_target)
    report: dict = {"cpu": platform.processor() or platform.machine(), "threads": threads, "trials": trials,
                    "cache": str(cache), "lowered": str(lowered), "models": {}}
    for m in models:
        t0 = time.perf_counter()
        _, ig, title = harness_program(m)
        res = SPACE_MODELS.get(m, ("", 1000, 1.0, 224, 0))[3]
        shape = (1, 3, res, res)  # the harness's x.shape at --batch 1
        out = lowered / m
        for kind in ("untuned", "tuned"):
            shutil.rmtree(out / f"host_{kind}", ignore_errors=True)  # rebuilt: kernels may have changed
        before = _records(target)
        load0 = os.getloadavg()[0]
        t_prep = time.perf_counter() - t0  # the program (calibration of the space models)
        t1 = time.perf_counter()
        _lowering(ig, "x86", threads, shape, False, trials, "host", out, 1)
        t_untuned = time.perf_counter() - t1
        t1 = time.perf_counter()
        snap = _cpu_snapshot()
        _lowering(ig, "x86", threads, shape, True, trials, "host", out, 1)
        others = _other_load(snap, _cpu_snapshot())
        t_tuned = time.perf_counter() - t1
        after = _records(target)
        new = {k: v for k, v in after.items() if before.get(k) != v}
        rows = []
        for key, rec in new.items():
            wl = json.loads(key)
            first = rec.get("first_us")
            rows.append({"workload": wl, "knobs": rec["knobs"], "tuned_us": round(rec["latency_us"], 2),
                         "default_us": None if first is None else round(first, 2),
                         "candidates": rec.get("candidates"), "timed_threads": rec.get("threads")})
        rep = {"title": title, "input_shape": list(shape), "prepare_s": round(t_prep, 1),
               "untuned_lowering_s": round(t_untuned, 1), "tuned_lowering_s": round(t_tuned, 1),
               "tuning_s_est": round(t_tuned - t_untuned, 1), "workloads_tuned": len(new),
               "workloads_reused": sum(1 for _ in after) - len(new), "default_won": sum(
                   1 for r in rows if r["default_us"] is not None and r["tuned_us"] >= r["default_us"]),
               "tuned_sum_us": round(sum(r["tuned_us"] for r in rows), 1),
               "default_sum_us": round(sum(r["default_us"] or 0 for r in rows), 1),
               "loadavg_start": load0, "loadavg_end": os.getloadavg()[0], **others, "records": rows}
        report["models"][m] = rep
        log.info("%s: untuned lowering %.0f s, tuned lowering %.0f s (tuning ~%.0f s), %d workloads tuned, default "
                 "kept on %d; load %.1f -> %.1f, other processes %.2f cores while tuning", m, t_untuned, t_tuned,
                 t_tuned - t_untuned, len(new), rep["default_won"], load0, rep["loadavg_end"],
                 others.get("other_load_cores", float("nan")))
        if new and others.get("other_load_cores", 0.0) > QUIET_CORES:
            log.warning("%s was tuned while other processes used %.2f cores: %d-thread timings then include waits for "
                        "a descheduled worker, and the tuned choices are noise; tune again (--fresh) when the machine "
                        "is quiet", m, others["other_load_cores"], threads)
    return report


def time_compare(folder: Path, rounds: int, per_round: int, net_calls: int, max_others: float = 0.2) -> dict:
    """Per-PrimFunc minima of `folder/host_untuned` and `folder/host_tuned` (same kernel names), every kernel of both
    libraries timed in each of `rounds` interleaved rounds (`per_round` single calls, rotating start), then both
    networks (`Lowered.__call__`, `net_calls` calls each, alternating); minima over the rounds during which other
    processes used at most `max_others` cores (/proc/stat, as `benchmarks.mbv2_threads`), over all rounds if none was
    that quiet. At TVM_NUM_THREADS threads. The two libraries' outputs are compared first (equal bit for bit)."""
    import tvm

    from benchmarks.mbv2_profile import calls_per_primfunc
    from qcompile import api as qc
    from qcompile.backends.tvm.lowered import (
        _find_function_module,
        kernel_timing_args,
        load_library,
        program_requant_operands,
    )
    from qcompile.bench.harness import _cpu_snapshot, _other_load

    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    lows, evs = {}, {}
    for kind in ("untuned", "tuned"):
        low = qc.load(folder / f"host_{kind}")
        lows[kind] = low
        lib = low._exec if low._lib_path is None else load_library(low._lib_path)  # noqa: SLF001
        requant = program_requant_operands(low.meta, low.program)  # the network's own shifts
        for name, sig in low.meta["signatures"].items():
            mod = _find_function_module(lib, name)
            if mod is not None:
                args = [tvm.runtime.tensor(a, dev) for a in kernel_timing_args(sig, rng, requant=requant.get(name))]
                evs[(kind, name)] = (mod.time_evaluator(name, dev, number=1, repeat=per_round), args)
    x = rng.standard_normal(lows["untuned"].input_shape).astype(lows["untuned"].input_dtype)
    np.testing.assert_array_equal(lows["untuned"](x), lows["tuned"](x))  # bit for bit, or nothing to compare
    keys = list(evs)
    per: list[tuple[float, dict, dict]] = []  # (others' cores, kernel minima, network minima) per round
    for r in range(rounds):
        a = _cpu_snapshot()
        kmin = {}
        k = (r * 7) % len(keys)
        for key in keys[k:] + keys[:k]:
            ev, args = evs[key]
            kmin[key] = min(ev(*args).results) * 1e6
        net = {"untuned": float("inf"), "tuned": float("inf")}
        for _ in range(net_calls):
            for kind in (("untuned", "tuned") if r % 2 else ("tuned", "untuned")):
                t = time.perf_counter()
                lows[kind](x)
                net[kind] = min(net[kind], (time.perf_counter() - t) * 1e6)
        per.append((_other_load(a, _cpu_snapshot()).get("other_load_cores", 0.0), kmin, net))
    quiet = [p for p in per if p[0] <= max_others] or per
    best = {key: min(p[1][key] for p in quiet) for key in keys}
    calls = calls_per_primfunc(lows["untuned"].meta)
    names = sorted({n for _, n in keys if ("tuned", n) in best and ("untuned", n) in best})
    return {"threads": os.environ.get("TVM_NUM_THREADS"), "rounds": rounds, "per_round": per_round,
            "rounds_quiet": sum(p[0] <= max_others for p in per), "max_others_cores": max_others,
            "others_cores": [round(p[0], 3) for p in per], "loadavg_end": os.getloadavg()[0],
            "net_min_us": {kind: min(p[2][kind] for p in quiet) for kind in ("untuned", "tuned")},
            "kernels": {n: {"calls": calls.get(n, 1), "untuned_us": best[("untuned", n)],
                            "tuned_us": best[("tuned", n)]} for n in names}}


def compare_table(res: dict) -> str:
    """Markdown: kernels whose minima differ by more than 2 %, then the sums x calls and the networks."""
    from benchmarks.mbv2_profile import layer_type

    out = ["| kernel | layer | calls | untuned us | tuned us | tuned/untuned |", "|---|---|---:|---:|---:|---:|"]
    su = st = 0.0
    for name, k in sorted(res["kernels"].items(), key=lambda kv: -kv[1]["calls"] * kv[1]["untuned_us"]):
        su += k["calls"] * k["untuned_us"]
        st += k["calls"] * k["tuned_us"]
        ratio = k["tuned_us"] / k["untuned_us"]
        if abs(ratio - 1) > 0.02:
            out.append(f"| `{name}` | {layer_type(name)} | {k['calls']} | {k['untuned_us']:.1f} | {k['tuned_us']:.1f} "
                       f"| {ratio:.2f} |")
    out.append(f"| **all {len(res['kernels'])} kernels x calls** | | | {su:.0f} | {st:.0f} | {st / su:.2f} |")
    n = res["net_min_us"]
    out.append(f"\nnetwork minimum: untuned {n['untuned']:.0f} us, tuned {n['tuned']:.0f} us "
               f"({n['tuned'] / n['untuned']:.2f}); {res['rounds_quiet']} of {res['rounds']} rounds quiet (others <= "
               f"{res['max_others_cores']} cores; all rounds count if none was), TVM_NUM_THREADS={res['threads']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    cp = sub.add_parser("compare", help="time DIR/host_untuned against DIR/host_tuned, kernel by kernel")
    cp.add_argument("folder", type=Path)
    cp.add_argument("--rounds", type=int, default=20)
    cp.add_argument("--per-round", type=int, default=10)
    cp.add_argument("--net-calls", type=int, default=3)
    cp.add_argument("--threads", type=int, default=2)
    cp.add_argument("--max-others", type=float, default=0.2, help="rounds count only if other processes used at "
                    "most this many cores (all rounds if none did)")
    cp.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=Path("runs/peers/cache"), help="QCOMPILE_CACHE of the database")
    ap.add_argument("--lowered", type=Path, default=Path("runs/peers/tuned"),
                    help="exported lowerings, one folder per model (the harness's --lowered DIR/<model>)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trials", type=int, default=TRIALS, help="schedules timed per kernel (pass the same to the "
                    "harness: it is part of the lowering's key)")
    ap.add_argument("--fresh", action="store_true", help="move the database aside first (after kernels changed)")
    ap.add_argument("--out", type=Path, default=None, help="the report as JSON (default: <lowered>/tune_report.json)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("qcompile.backends.tvm.tuning").setLevel(logging.INFO)
    if a.cmd == "compare":
        _threads_env(a.threads)
        res = time_compare(a.folder, a.rounds, a.per_round, a.net_calls, a.max_others)
        if a.out:
            a.out.write_text(json.dumps(res, indent=1))
        print(compare_table(res))
        return
    models = [m for m in a.models.split(",") if m]
    bad = [m for m in models if m not in MODELS]
    if bad or a.trials < 1 or a.threads < 1:
        ap.error(f"--models {bad} not in {MODELS}" if bad else "--trials and --threads must be positive")
    _threads_env(a.threads)
    t0 = time.perf_counter()
    report = warm(models, a.cache, a.lowered, a.threads, a.trials, a.fresh)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    out = a.out or a.lowered / "tune_report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    log.info("total %.0f s; report %s; harness: QCOMPILE_CACHE=%s python -m qcompile.bench --model M --threads %d "
             "--tvm host --tuned --trials %d --lowered %s/M ...", report["total_s"], out, a.cache, a.threads,
             a.trials, a.lowered)


if __name__ == "__main__":
    main(sys.argv[1:])
