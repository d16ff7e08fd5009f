"""Latency-table acceptance: build the table for the demo's space, then predicted vs measured on held-out
random mixed-bit subnets (docs/latency.md). Resumable: the table and the validation rows are written as it goes.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.latency_table --threads 1 --validate 100 --out runs/latency
    .venv/bin/python -m benchmarks.latency_table --threads 2 --validate 100 --out runs/latency
    .venv/bin/python -m benchmarks.latency_table --space mobilenet_v2 --resolution 224 --validate 20 --out runs/latency

`--repeat-measure K` measures the first K held-out subnets a second time and reports how far the two
measurements of the same subnet differ (the measurement's own reproducibility, next to the prediction error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import qcompile as qc
from qcompile.search.latency import LatencyTable
from qcompile.search.latency.table import _cpu_model
from qcompile.search.latency.validate import heldout_configs, scatter_plot, summarize, validate

log = logging.getLogger("benchmarks.latency_table")


def demo_space():
    """The space `make demo` trains (qcompile.cli.demo.DemoSettings: mobilenet_v3, width 0.35, 24 and 32 px)."""
    from qcompile.cli.demo import DemoSettings

    s = DemoSettings()
    return qc.spaces.get_space(s.space, num_classes=10, width_mult=s.width_mult, resolutions=s.resolutions)


def get_space(name: str, resolution: int | None):
    """`demo`: the demo's space; otherwise the full qcompile space `name` (1000 classes) at `resolution`."""
    if name == "demo":
        return demo_space()
    return qc.spaces.get_space(name, num_classes=1000, resolutions=(resolution or 224,))


def reproducibility(table: LatencyTable, rows: list[dict], k: int, repeat: int) -> dict:
    """Measure the first `k` validated subnets again: relative difference between the two medians."""
    import statistics

    diffs = []
    for r in rows[:k]:
        again = statistics.median(table.measure(qc.SubnetConfig.from_json(r["config"]), repeat=repeat))
        diffs.append(abs(again - r["measured_ms"]) / r["measured_ms"])
    if not diffs:
        return {"n": 0}
    return {"n": len(diffs), "median_rel_diff": statistics.median(diffs),
            "within_10pct": sum(d <= 0.10 for d in diffs) / len(diffs),
            "within_5pct": sum(d <= 0.05 for d in diffs) / len(diffs)}


def min_variant(tpath: Path, rows: list[dict]) -> dict:
    """The same table refit on minima (kernel: min over windows; network: min over calls), scored against each
    held-out subnet's minimum: on a machine loaded by other jobs, minima are the least disturbed statistic."""
    d = json.loads(tpath.read_text())
    for k in d["kernels"]:
        k["median_ms"] = min(k["samples_ms"])
    for n in d["networks"]:
        n["median_ms"] = min(n["samples_ms"])
    d["blocks"] = {}
    from qcompile.search.latency.workloads import workload_key

    t = LatencyTable(qc.spaces.get_space(d["space"]["name"], **d["space"]["args"]), d["keys"],
                     {workload_key(k["workload"]): k for k in d["kernels"]}, d["networks"], {}, None)
    t.fit()
    scored = [{"predicted_ms": t.predict(qc.SubnetConfig.from_json(r["config"])), "measured_ms": r["min_ms"]}
              for r in rows]
    return {"fit": t.fit_params, **summarize(scored)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--space", default="demo", help="demo (the demo's space) or a qcompile space name, e.g. "
                    "mobilenet_v2 (full width, 1000 classes)")
    ap.add_argument("--resolution", type=int, default=None, help="input resolution of a named space (224)")
    ap.add_argument("--repeat-measure", type=int, default=0, metavar="K",
                    help="measure the first K held-out subnets again (reproducibility of the measurement)")
    ap.add_argument("--validate", type=int, default=100, help="held-out subnets to measure")
    ap.add_argument("--repeat", type=int, default=60, help="end-to-end calls per measurement (median)")
    ap.add_argument("--budget-min", type=float, default=None, help="stop validating after this many minutes")
    ap.add_argument("--max-cover", type=int, default=16)
    ap.add_argument("--n-fit", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("runs/latency"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out / (f"t{args.threads}" if args.space == "demo" else f"{args.space}_{args.resolution or 224}_t"
                                                                      f"{args.threads}")
    out.mkdir(parents=True, exist_ok=True)
    tpath = out / "table.json"
    space = get_space(args.space, args.resolution)
    old = LatencyTable.load(tpath) if tpath.exists() else None
    t0 = time.perf_counter()
    table = LatencyTable.build(space, "x86", args.threads, table=old, max_cover=args.max_cover, n_fit=args.n_fit,
                               path=tpath)
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    LatencyTable.build(space, "x86", args.threads, table=table, max_cover=args.max_cover, n_fit=args.n_fit)
    lookup_s = time.perf_counter() - t1
    log.info("%s\nbuild %.1f s (this call), second build %.2f s", table.summary(), build_s, lookup_s)
    rows_path = out / "validation.jsonl"
    done = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    for r in done:  # measured before (table-independent): predicted again with this table
        r["predicted_ms"] = table.predict(qc.SubnetConfig.from_json(r["config"]))
    seen = {r["config"] for r in done}
    cfgs = [c for c in heldout_configs(space, args.validate) if c.to_json() not in seen]
    budget = None if args.budget_min is None else 60 * args.budget_min
    rows = done + validate(table, cfgs, args.repeat, budget_s=budget, out_jsonl=rows_path)
    summary = {"cpu": _cpu_model(), "machine": platform.node(), "threads": args.threads, "mcpu": table.keys["mcpu"],
               "table_build_s_total": table.keys.get("build_seconds"), "second_build_s": round(lookup_s, 3),
               "kernels": len(table.kernels), "networks": len(table.networks), "fit": table.fit_params,
               **summarize(rows)}
    summary["min_statistic"] = min_variant(tpath, rows)
    summary["load_average"] = list(os.getloadavg())
    if args.repeat_measure:
        summary["reproducibility"] = reproducibility(table, rows, args.repeat_measure, args.repeat)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    scatter_plot(rows, out / "scatter.png")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
