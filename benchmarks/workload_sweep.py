"""`kernel_workloads` against the kernels `qc.lower` emits, on the real spaces (the CI sweep uses micro spaces).

For each space, `--n` random subnets with bits {2, 3, 4, 8, 32}: the planned list (`kernel_workloads`, skeleton
weights, per-block memo) is compared entry by entry with the emitted list (`emitted_kernels`: `qc.lower`'s own
emission with the subnet's weights, stopped before the TVM build) of a differently seeded supernet. One JSON
line per subnet in OUT/sweep.jsonl (a rerun skips what is there), totals in OUT/summary.json.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.workload_sweep --n 30 --out runs/workload_sweep
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

import qcompile as qc

log = logging.getLogger("benchmarks.workload_sweep")

BITS = (2, 3, 4, 8, 32)


def spaces() -> dict:
    """The demo's space (`qcompile.cli.demo.DemoSettings`), MobileNetV2 at 224 (OQA's) and SpaceEvo@VNNI."""
    from benchmarks.latency_table import demo_space

    return {"demo_mobilenet_v3": demo_space(),
            "mobilenet_v2_224": qc.spaces.mobilenet_v2(num_classes=1000, resolutions=(224,)),
            "spaceevo_vnni": qc.spaces.spaceevo(num_classes=1000)}


def sweep(name: str, space, n: int, rows_path: Path, done: set) -> list[dict]:
    from qcompile.api import _integer_graph
    from qcompile.backends.tvm.lowered import emitted_kernels
    from qcompile.search import kernel_workloads

    torch.manual_seed(5)
    qnet = qc.quantize(qc.trace(space.build_supernet()))
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        if (name, i) in done:
            continue
        cfg = space.sample(seed=1000 + i, bits=BITS)
        sub = qc.extract(qnet, cfg)
        qc.calibrate(sub, [torch.rand(2, space.in_channels, cfg.resolution, cfg.resolution, generator=g) * 4 - 2])
        t0 = time.perf_counter()
        emitted = [k["workload"] for k in emitted_kernels(_integer_graph(sub, None), "x86")]
        t_emit = time.perf_counter() - t0
        t0 = time.perf_counter()
        planned = kernel_workloads(space, cfg, "x86")
        t_plan = time.perf_counter() - t0
        first = next((j for j, (a, b) in enumerate(zip(planned, emitted)) if a != b), None)
        row = {"space": name, "i": i, "config": cfg.to_json(), "kernels": len(emitted), "equal": planned == emitted,
               "planned_kernels": len(planned), "first_difference": first, "emit_s": round(t_emit, 3),
               "kernel_workloads_s": round(t_plan, 4)}
        log.info("%s %d: %d kernels, equal %s (emit %.1f s, kernel_workloads %.3f s)", name, i, len(emitted),
                 row["equal"], t_emit, t_plan)
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=30, help="random subnets per space")
    ap.add_argument("--spaces", default=None, help="comma list of names (default: all)")
    ap.add_argument("--out", type=Path, default=Path("runs/workload_sweep"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "sweep.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {(r["space"], r["i"]) for r in rows}
    todo = spaces()
    if args.spaces:
        todo = {k: v for k, v in todo.items() if k in args.spaces.split(",")}
    for name, space in todo.items():
        rows += sweep(name, space, args.n, rows_path, done)
    summary = {}
    for name in todo:
        rs = [r for r in rows if r["space"] == name and r["i"] < args.n]
        if rs:
            summary[name] = {"subnets": len(rs), "equal": sum(r["equal"] for r in rs),
                             "kernels": sum(r["kernels"] for r in rs),
                             "median_kernel_workloads_s": statistics.median(r["kernel_workloads_s"] for r in rs),
                             "median_emit_s": statistics.median(r["emit_s"] for r in rs)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if all(s["equal"] == s["subnets"] for s in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
