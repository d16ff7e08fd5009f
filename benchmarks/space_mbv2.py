"""The space benchmark workload: the largest `mobilenet_v2` space subnet at 224, 8-bit, through qcompile.

    QCOMPILE_CACHE=/tmp/qc-bench .venv/bin/python -m benchmarks.space_mbv2 --trials 12 \\
        --out benchmarks/space_mbv2.json --markdown docs/benchmarks_space.md

What it runs: `space.largest(bits=8)` of `qcompile.spaces.mobilenet_v2(num_classes=1000)` (OQA
Table 7: kernel 7, expand 6, depth 4 everywhere; 606 MMAC at 224), quantized with every layer at 8 bits (first
layer too), calibrated on random images, converted by `qc.to_integer` and lowered by `qc.lower(..., "x86")`
twice: untuned (an empty tuning database: our default schedules) and tuned (`tune=True`: every kernel timed into
the persistent database first; a warm database makes this a lookup). Peers run the same subnet's float copy:
onnxruntime INT8 (`quantize_static`, QDQ, MLAS), OpenVINO INT8 (the same QDQ model) and fp32, ExecuTorch
XNNPACK INT8, onnxruntime fp32, torch fp32, torch.ao INT8 (x86), all through
`qcompile.bench.run_bench` (interleaved rounds, fixed threads, every runtime in its own worker process: the
lowerings travel as exported libraries, `qcompile.bench.peers.tvm_spec`). Random weights: latency only.

Sharing one process inflated onnxruntime's median (7.8 ms vs 2.06 ms alone), hence the worker processes.
`--solo RUNNER` times one runner with no other runtime in the rounds (`ort_int8_qdq`, `ort_fp32`,
`torch_fp32`, `qcompile_tvm_untuned`, `qcompile_tvm_tuned`), to check the interleaved medians against:

    for r in ort_int8_qdq qcompile_tvm_tuned; do .venv/bin/python -m benchmarks.space_mbv2 --trials 12 --solo $r; done
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from qcompile.search.cost import count_macs

log = logging.getLogger(__name__)


def build_subnet(resolution: int = 224, seed: int = 0):
    """(calibrated fake-quant subnet, its IntegerGraph, config) of the largest 8-bit mobilenet_v2 subnet."""
    import torch

    import qcompile as qc

    torch.manual_seed(seed)
    space = qc.spaces.mobilenet_v2(num_classes=1000, resolutions=(resolution,))
    cfg = space.largest(bits=8)
    qnet = qc.quantize(qc.trace(space.build_supernet()), weight_bits=(8,), act_bits=(8,), first_layer=8)
    sub = qc.extract(qnet, cfg)
    gen = torch.Generator().manual_seed(seed)
    qc.calibrate(sub, [torch.randn(2, 3, resolution, resolution, generator=gen) for _ in range(2)])
    return sub, qc.to_integer(sub), cfg, space


def lowerings(ig, threads: int, tune: bool = True, trials: int | None = None) -> tuple[dict, dict]:
    """`{row name: Lowered}` untuned (empty database) and, with `tune`, tuned (persistent database)."""
    import qcompile as qc

    runners, info = {}, {}
    warm = os.environ.get("QCOMPILE_CACHE")
    with tempfile.TemporaryDirectory() as empty:
        os.environ["QCOMPILE_CACHE"] = empty
        t0 = time.perf_counter()
        runners["qcompile_tvm_untuned"] = qc.lower(ig, target="x86", num_threads=threads)
        info["qcompile_tvm_untuned"] = {"lower_s": round(time.perf_counter() - t0, 1)}
    if warm is None:
        os.environ.pop("QCOMPILE_CACHE")
    else:
        os.environ["QCOMPILE_CACHE"] = warm
    if tune:
        t0 = time.perf_counter()
        runners["qcompile_tvm_tuned"] = qc.lower(ig, target="x86", num_threads=threads, tune=True, trials=trials)
        tune_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        qc.lower(ig, target="x86", num_threads=threads, tune=True, trials=trials)  # warm-database lowering time
        info["qcompile_tvm_tuned"] = {"tune_and_lower_s": round(tune_s, 1),
                                      "warm_lower_s": round(time.perf_counter() - t0, 1)}
    return runners, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-tune", action="store_true")
    ap.add_argument("--trials", type=int, default=None, help="schedules timed per kernel when tuning")
    ap.add_argument("--out", default="benchmarks/space_mbv2.json")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--solo", default=None, help="time only this runner, alone in the process")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from qcompile.bench import BenchOptions, run_bench
    from qcompile.bench.peers import tvm_spec
    from qcompile.bench.report import to_markdown
    from qcompile.passes.float_copy import float_copy

    sub, ig, cfg, space = build_subnet(a.resolution)
    peers = ("torch_fp32", "torch_ao_int8", "ort_fp32", "ort_int8_qdq", "openvino_fp32", "openvino_int8_qdq",
             "executorch_xnnpack_int8")
    if a.solo and a.solo.startswith("qcompile_"):
        peers = ()
        runners, info = lowerings(ig, a.threads, tune=a.solo == "qcompile_tvm_tuned", trials=a.trials)
        runners = {a.solo: runners[a.solo]}
    elif a.solo:
        peers, runners, info = (a.solo,), {}, {}
    else:
        runners, info = lowerings(ig, a.threads, tune=not a.no_tune, trials=a.trials)
    x = np.random.default_rng(0).standard_normal((1, 3, a.resolution, a.resolution)).astype(np.float32)
    opts = BenchOptions(threads=a.threads, repeats=a.repeats, peers=peers)
    title = f"largest mobilenet_v2 subnet, 8-bit, {a.resolution}px ({count_macs(space, cfg) / 1e6:.0f} MMAC)"
    specs = {name: tvm_spec(low, name) for name, low in runners.items()}  # each lowering in its own worker
    res = run_bench(float_copy(sub), x, integer_graph=ig, runners=specs, graph_runners=list(specs), options=opts,
                    title=title)
    if a.solo:
        r = res.by_name()[a.solo]
        log.info("SOLO %s median %.2f ms (p10 %.2f, p90 %.2f, min %.2f)", a.solo, r.median_ms, r.p10_ms, r.p90_ms,
                 r.min_ms)
        return
    data = res.to_dict() | {"lowering": info, "config": cfg.to_dict()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(data, indent=1, default=str))
    md = to_markdown(res)
    by = res.by_name()
    ort = by.get("ort_int8_qdq")
    if ort is not None and ort.median_ms:
        md += ("\n\n| qcompile row | median ms | min ms | x onnxruntime INT8 (median) | x onnxruntime INT8 (min) "
               "| lowering |\n|---|---:|---:|---:|---:|---|\n")
        for name in runners:
            r = by[name]
            md += (f"| {name} | {r.median_ms:.2f} | {r.min_ms:.2f} | {r.median_ms / ort.median_ms:.2f} | "
                   f"{r.min_ms / ort.min_ms:.2f} | {info.get(name, {})} |\n")
        md += ("\nEvery runtime ran in its own worker process (`qcompile.bench.workers`), in interleaved rounds with "
               "a settle step; `--solo RUNNER` times one alone for comparison.\n")
    if a.markdown:
        Path(a.markdown).write_text(md + "\n")
    log.info("\n%s", md)


if __name__ == "__main__":
    main()
