"""TVM's thread pool settings against a lowering's latency: one process per setting, alternated in rounds.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.thread_pool --threads 2 --rounds 30 \\
        --lowered runs/peers/l8/mobilenet_v2/host_tuned --lowered runs/peers/l7/demo/host_untuned

TVM 0.27 reads both variables once, when its pool starts (`src/runtime/thread_pool.cc`, `threading_backend.cc`),
so each setting runs in its own process:

- `TVM_THREAD_POOL_SPIN_COUNT` (default 300000): how many times a worker polls its task queue, with a
  `sched_yield` between polls, before it sleeps on a condition variable; a sleeping worker is woken by the next
  parallel region (a futex wake).
- `TVM_BIND_THREADS` (unset or 1: bind): each worker pinned to its own core (worker 1 to the second core; the
  calling thread, which runs task 0, keeps every core); any other value leaves the scheduler free.

Per round each setting's process, in rotating order, makes `--samples` timed calls of `Lowered.__call__` in the
harness's pattern (`qcompile.bench`: a settle pause, here `--settle-ms` of sleep, then `--lead-in-ms` of untimed
calls, then one timed call) and one burst of `--burst` back-to-back calls (their median). Reported per lowering and
setting: minimum and median of the harness-pattern samples and of the burst medians (us).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: the settings compared: name -> the environment variables its process gets (and none of the others)
SETTINGS = {"default": {}, "bind=0": {"TVM_BIND_THREADS": "0"}, "spin=0": {"TVM_THREAD_POOL_SPIN_COUNT": "0"},
            "spin=3000": {"TVM_THREAD_POOL_SPIN_COUNT": "3000"}}
_VARS = ("TVM_BIND_THREADS", "TVM_THREAD_POOL_SPIN_COUNT")


def _worker(path: str, settle_s: float, lead_in_s: float) -> None:
    """One setting's process: load `path`, then answer `sample N` (N harness-pattern calls, their times) and
    `burst N` (the median of N back-to-back calls) on stdin/stdout, one JSON line each."""
    from qcompile.backends.tvm import load

    low = load(path)
    x = np.random.default_rng(0).standard_normal(low.input_shape).astype(low.input_dtype)
    for _ in range(20):
        low(x)
    print(json.dumps({"ready": True, "env": {k: os.environ.get(k) for k in (*_VARS, "TVM_NUM_THREADS")}}),
          flush=True)
    for line in sys.stdin:
        cmd, n = line.split()
        ts = []
        for _ in range(int(n)):
            if cmd == "sample":
                time.sleep(settle_s)
                end = time.perf_counter() + lead_in_s
                while time.perf_counter() < end:
                    low(x)
            t = time.perf_counter()
            low(x)
            ts.append(time.perf_counter() - t)
        out = ts if cmd == "sample" else [float(np.median(ts))]
        print(json.dumps([v * 1e6 for v in out]), flush=True)


def measure(lowered: list[str], settings: list[str], threads: int, rounds: int, samples: int, burst: int,
            settle_ms: float, lead_in_ms: float) -> dict:
    """{lowering: {setting: {"sample": [us...], "burst": [us...], "env": the pool variables its process saw}}}:
    every process started first (one per lowering and setting), then rounds with the settings in rotating order,
    one process running at a time."""
    procs = {}
    for path in lowered:
        for s in settings:
            env = {k: v for k, v in os.environ.items() if k not in _VARS} | SETTINGS[s] | \
                {"TVM_NUM_THREADS": str(threads)}
            p = subprocess.Popen([sys.executable, "-m", "benchmarks.thread_pool", "--worker", path,
                                  "--settle-ms", str(settle_ms), "--lead-in-ms", str(lead_in_ms)],
                                 env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs[path, s] = p
    res: dict = {path: {s: {"sample": [], "burst": []} for s in settings} for path in lowered}
    for (path, s), p in procs.items():
        ready = json.loads(p.stdout.readline())
        res[path][s]["env"] = ready["env"]

    def ask(p: subprocess.Popen, cmd: str, n: int) -> list[float]:
        p.stdin.write(f"{cmd} {n}\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())

    try:
        for r in range(rounds):
            for path in lowered:
                order = settings[r % len(settings):] + settings[:r % len(settings)]
                for s in order:
                    res[path][s]["sample"] += ask(procs[path, s], "sample", samples)
                    res[path][s]["burst"] += ask(procs[path, s], "burst", burst)
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait(timeout=60)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lowered", action="append", default=[], help="an exported lowering (repeatable)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--samples", type=int, default=2, help="harness-pattern timed calls per process per round")
    ap.add_argument("--burst", type=int, default=20, help="back-to-back calls per process per round")
    ap.add_argument("--settle-ms", type=float, default=200.0)
    ap.add_argument("--lead-in-ms", type=float, default=50.0)
    ap.add_argument("--out", default="runs/thread_pool")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        _worker(a.worker, a.settle_ms / 1e3, a.lead_in_ms / 1e3)
        return
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    if not a.lowered or any(s not in SETTINGS for s in settings):
        ap.error(f"--lowered DIR at least once; --settings from {', '.join(SETTINGS)}")
    load_before = "/".join(f"{v:.1f}" for v in os.getloadavg())
    res = measure(a.lowered, settings, a.threads, a.rounds, a.samples, a.burst, a.settle_ms, a.lead_in_ms)
    meta = {"threads": a.threads, "rounds": a.rounds, "samples": a.samples, "burst": a.burst,
            "load_before": load_before, "load_after": "/".join(f"{v:.1f}" for v in os.getloadavg()),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"thread_pool_t{a.threads}.json").write_text(json.dumps({"meta": meta, "us": res}))
    print(meta)
    for path, per in res.items():
        print(path)
        for s, v in per.items():
            smp, bur = np.array(v["sample"]), np.array(v["burst"])
            print(f"  {s:10s} harness pattern min {smp.min():8.1f} median {np.median(smp):8.1f} | "
                  f"burst medians min {bur.min():8.1f} median {np.median(bur):8.1f}")


if __name__ == "__main__":
    main()
