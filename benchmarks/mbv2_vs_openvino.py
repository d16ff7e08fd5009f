"""MobileNetV2 224 layer by layer: OpenVINO INT8's per-node profile against qcompile's kernels (issue 20).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.mbv2_vs_openvino [--lowered DIR] --threads 1 \\
        --rounds 20 --per-round 10 --out ov1.json          # prints the table; `--table ov1.json` prints it again

OpenVINO's model is the harness's "openvino_int8_qdq" peer, built by the harness's own functions
(`harness.peer_specs` -> `peers.ort_qdq_model`: the float `models.mobilenet_v2` exported to ONNX, onnxruntime's
QDQ model of it on the same seeded calibration batches), compiled by `peers.openvino_compile` with the peer's
settings plus `PERF_COUNT`; `request.get_profiling_info()` gives every executed node's time and `exec_type`
(the oneDNN kernel). qcompile's side is an untuned lowering of the harness's synthetic MobileNetV2 program
(`--lowered`, e.g. `runs/peers/lowered4/mobilenet_v2/host_untuned`; without it this lowers one with
`peers._lowering`), each PrimFunc timed with TVM's `time_evaluator` (`mbv2_threads.primfunc_evaluators`).
Both sides run in this process, interleaved in rounds (OpenVINO's `--per-round` inferences, then every PrimFunc
`--per-round` times, the order alternating), and each node / PrimFunc keeps its minimum over all rounds.

Mapping: OpenVINO fuses each QDQ convolution with its requantize, clamp and residual add into one Convolution /
GroupConvolution node, as qcompile fuses them into one kernel; both programs list MobileNetV2's 52 convolutions
in the same order, so the i-th convolution node is the i-th `conv2d_requant` kernel (checked: grouped or not,
output channels). ReduceMean is `mean`, FullyConnected is `linear`; the input quantize and layout reorder before
the first convolution are `quantize`, nodes after the classifier `dequantize_acc`, any other node (a reorder)
joins the layer before it. The table groups repeated layers (one PrimFunc) and ranks them by the time qcompile
loses, `calls x qcompile - sum of OpenVINO`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: the harness's MobileNetV2 input (`python -m qcompile.bench`: `default_rng(0)`, batch 1, 224 px)
INPUT_SHAPE = (1, 3, 224, 224)


def openvino_model(workdir: Path, threads: int, extra: dict[str, Any] | None = None) -> tuple[Any, np.ndarray]:
    """(OpenVINO compiled model with `PERF_COUNT` and `extra` settings, input) of the harness's openvino_int8_qdq
    MobileNetV2 peer."""
    from qcompile.bench import peers
    from qcompile.bench.harness import BenchOptions, peer_specs
    from qcompile.bench.models import mobilenet_v2

    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    specs, missing = peer_specs(mobilenet_v2(), x, BenchOptions(peers=("openvino_int8_qdq",), threads=threads),
                                workdir)
    if "openvino_int8_qdq" not in specs:
        raise RuntimeError(f"openvino_int8_qdq: {missing.get('openvino_int8_qdq')}")
    float_onnx, calib, path, _ = specs["openvino_int8_qdq"].args
    qdq = peers.ort_qdq_model(float_onnx, calib, path)
    return peers.openvino_compile(qdq, threads, None, {"PERF_COUNT": "YES", **(extra or {})}), x


def qcompile_lowering(lowered: Path | None, threads: int) -> Any:
    """The untuned lowering: loaded from `lowered`, or made as `python -m qcompile.bench` makes it."""
    from qcompile import api as qc

    if lowered is not None:
        low = qc.load(lowered)
    else:
        from qcompile.bench.models import mobilenet_v2, synthetic_integer_graph
        from qcompile.bench.peers import _lowering

        ig = synthetic_integer_graph(mobilenet_v2(), INPUT_SHAPE[2])
        low, _ = _lowering(ig, "x86", 2, INPUT_SHAPE, False, None, "host", None)
    low.num_threads = threads  # the network call's pool: this run's thread count, not the lowering's
    return low


def conv_nodes(compiled: Any) -> dict[str, tuple[int, int, int]]:
    """OpenVINO runtime node name -> (input channels, output channels, output px) of its convolutions."""
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_output_size() != 1 or op.get_input_size() < 1:
            continue
        o, i = op.get_output_partial_shape(0), op.get_input_partial_shape(0)
        if o.rank.get_length() == 4 and i.rank.get_length() == 4 and o.is_static and i.is_static:
            out[op.get_friendly_name()] = (i[1].get_length(), o[1].get_length(), o[2].get_length())
    return out


def measure(compiled: Any, x: np.ndarray, low: Any, rounds: int, per_round: int, max_others: float,
            settle_s: float = 0.2) -> dict:
    """Per-node OpenVINO minima and per-PrimFunc qcompile minima (us), interleaved in rounds; network minima."""
    from benchmarks.mbv2_threads import primfunc_evaluators
    from qcompile.bench.harness import _cpu_snapshot, _other_load

    request = compiled.create_infer_request()
    evs = primfunc_evaluators(low, per_round, np.random.default_rng(0))
    xq = np.random.default_rng(0).standard_normal(low.input_shape).astype(low.input_dtype)
    for _ in range(20):
        request.infer([x])
        low(xq)
    order: list[str] = []
    info: dict[str, tuple[str, str]] = {}
    ov_min: dict[str, float] = {}
    ours_min = {n: float("inf") for n in evs}
    nets = {"openvino": float("inf"), "qcompile": float("inf")}
    others: list[float] = []

    def openvino_round() -> None:
        for _ in range(per_round):
            t = time.perf_counter()
            request.infer([x])
            nets["openvino"] = min(nets["openvino"], (time.perf_counter() - t) * 1e6)
            for p in request.get_profiling_info():
                if str(p.status) != "Status.EXECUTED":
                    continue
                if p.node_name not in info:
                    order.append(p.node_name)
                    info[p.node_name] = (p.node_type, p.exec_type)
                us = p.real_time.total_seconds() * 1e6
                ov_min[p.node_name] = min(ov_min.get(p.node_name, float("inf")), us)

    def qcompile_round() -> None:
        for name, (ev, args) in evs.items():
            ours_min[name] = min(ours_min[name], min(ev(*args).results) * 1e6)
        for _ in range(per_round):
            t = time.perf_counter()
            low(xq)
            nets["qcompile"] = min(nets["qcompile"], (time.perf_counter() - t) * 1e6)

    for r in range(rounds):
        a = _cpu_snapshot()
        for step in ((openvino_round, qcompile_round) if r % 2 == 0 else (qcompile_round, openvino_round)):
            time.sleep(settle_s)  # the other runtime's pool stops spinning (OpenVINO pins its TBB workers)
            step()
        others.append(_other_load(a, _cpu_snapshot()).get("other_load_cores", 0.0))
    return {"openvino_nodes": [{"name": n, "type": info[n][0], "exec_type": info[n][1], "min_us": ov_min[n]}
                               for n in order],
            "qcompile_primfuncs": ours_min, "network_min_us": nets, "others_cores": [round(o, 3) for o in others],
            "max_others_cores": max_others, "rounds_quiet": sum(o <= max_others for o in others)}


def _kind(node_type: str) -> str:
    if node_type in ("Convolution", "GroupConvolution"):
        return "conv2d_requant"
    if node_type == "ReduceMean":
        return "mean"
    if node_type.startswith("FullyConnected"):
        return "linear"
    return "other"


def layers(meta: dict, ov_nodes: list[dict], ov_shapes: dict[str, tuple[int, int, int]]) -> list[dict]:
    """One row per network kernel: its PrimFunc, description and the OpenVINO nodes of the same layer."""
    from benchmarks.mbv2_profile import network_primfuncs

    kernels = meta["kernels"]
    rows = [{"primfunc": p, "op": k["op"], "layer": describe(k), "ov": []}
            for k, p in zip(kernels, network_primfuncs(meta), strict=True)]
    by_kind: dict[str, list[int]] = {}
    for i, k in enumerate(kernels):
        by_kind.setdefault(k["op"], []).append(i)
    used = {kind: 0 for kind in by_kind}
    last = 0  # the input quantize: what comes before the first convolution
    for node in ov_nodes:
        kind = _kind(node["type"])
        if kind == "other":
            if rows[last]["op"] == "linear" and "dequantize_acc" in by_kind:
                last = by_kind["dequantize_acc"][0]
            rows[last]["ov"].append(node)
            continue
        if used.get(kind, 0) >= len(by_kind.get(kind, [])):
            raise RuntimeError(f"OpenVINO node {node['name']} ({node['type']}): more {kind} layers than qcompile has")
        last = by_kind[kind][used[kind]]
        used[kind] += 1
        if kind == "conv2d_requant":
            w = kernels[last]["workload"]
            grouped = w.get("groups", 1) > 1
            shape = ov_shapes.get(node["name"])
            if grouped != (node["type"] == "GroupConvolution") or (shape and shape[1] != w["shapes"][1][0]):
                raise RuntimeError(f"OpenVINO node {node['name']} {node['type']} {shape} does not match qcompile's "
                                   f"{rows[last]['layer']}")
        rows[last]["ov"].append(node)
    if used.get("conv2d_requant", 0) != len(by_kind.get("conv2d_requant", [])):
        raise RuntimeError(f"OpenVINO ran {used.get('conv2d_requant', 0)} convolutions, qcompile "
                           f"{len(by_kind.get('conv2d_requant', []))}")
    return rows


def describe(kernel: dict) -> str:
    """`type, C->O, out px` of a kernel from its workload (MobileNetV2's layer names)."""
    w = kernel.get("workload") or {}
    shapes = w.get("shapes") or [[]]
    if kernel["op"] != "conv2d_requant":
        return f"{kernel['op']} {'x'.join(str(d) for d in shapes[0][1:])}"
    (_, c, h, _), (o, _, k, _) = shapes[0], shapes[1]
    s = w["stride"][0]
    px = (h + 2 * w["padding"][0] - k) // s + 1
    if w.get("groups", 1) > 1:
        kind = f"dw {k}x{k} s{s}"
    elif k > 1:
        kind = f"stem {k}x{k} s{s}"
    else:
        kind = ("expand" if o > c else "project") + (" +add" if len(kernel.get("nodes", [])) > 2 else "")
    return f"{kind}, {c}->{o}, {px} px"


def table(res: dict) -> str:
    """Markdown: distinct layers ranked by `calls x qcompile us - sum of OpenVINO us`, and the totals."""
    groups: dict[str, dict] = {}
    for row in res["layers"]:
        key = row["primfunc"] or row["layer"]
        g = groups.setdefault(key, {"layer": row["layer"], "calls": 0, "ov_us": 0.0, "exec": set(),
                                    "ours_us": res["qcompile_primfuncs"].get(row["primfunc"], float("nan"))})
        g["calls"] += 1
        g["ov_us"] += sum(n["min_us"] for n in row["ov"])
        g["exec"].update(n["exec_type"] for n in row["ov"])
    ranked = sorted(groups.values(), key=lambda g: -(g["calls"] * g["ours_us"] - g["ov_us"]))
    out = ["| layer (type, C->O, out px) | calls | OpenVINO us (kernel) | qcompile us | ratio | lost x calls, us |",
           "|---|---:|---|---:|---:|---:|"]
    so = sq = 0.0
    for g in ranked:
        ov, ours, n = g["ov_us"] / g["calls"], g["ours_us"], g["calls"]
        so, sq = so + g["ov_us"], sq + n * ours
        kern = ", ".join(sorted(g["exec"]))
        out.append(f"| {g['layer']} | {n} | {ov:.1f} ({kern}) | {ours:.1f} | {ours / ov if ov else float('inf'):.2f} "
                   f"| {n * ours - g['ov_us']:+.1f} |")
    out.append(f"| **sum** | | **{so:.0f}** | **{sq:.0f}** | **{sq / so:.2f}** | **{sq - so:+.0f}** |")
    nets = res["network_min_us"]
    out.append(f"\n{res['threads']} thread(s); network minimum: OpenVINO {nets['openvino']:.0f} us (with PERF_COUNT), "
               f"qcompile {nets['qcompile']:.0f} us; rounds with others <= {res['max_others_cores']} cores: "
               f"{res['rounds_quiet']} of {len(res['others_cores'])} (others' cores max "
               f"{max(res['others_cores']):.2f}); load average at the end {' '.join(res['loadavg_end'])}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lowered", type=Path, help="an exported untuned lowering (default: lower one now)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=10, help="OpenVINO inferences and calls per PrimFunc per round")
    ap.add_argument("--max-others", type=float, default=0.2, help="a round is quiet when others use <= this many cores")
    ap.add_argument("--settle-ms", type=float, default=200.0,
                    help="pause before each runtime's turn, so the other one's threads stop spinning")
    ap.add_argument("--ov-config", action="append", default=[], metavar="KEY=VALUE",
                    help="an OpenVINO setting beyond the harness's, e.g. ENABLE_CPU_PINNING=NO (repeatable)")
    ap.add_argument("--out", type=Path, help="write the measurement as JSON")
    ap.add_argument("--table", type=Path, help="print the table of a JSON written by --out, measure nothing")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's pool exists
    with tempfile.TemporaryDirectory(prefix="mbv2-ov-") as tmp:
        compiled, x = openvino_model(Path(tmp), args.threads, dict(kv.split("=", 1) for kv in args.ov_config))
        low = qcompile_lowering(args.lowered, args.threads)
        res = measure(compiled, x, low, args.rounds, args.per_round, args.max_others, args.settle_ms / 1e3)
        res["layers"] = layers(low.meta, res["openvino_nodes"], conv_nodes(compiled))
    res.update(threads=args.threads, cpu=platform.processor() or platform.machine(),
               loadavg_end=Path("/proc/loadavg").read_text().split()[:3], lowered=str(args.lowered),
               ov_config=args.ov_config)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    print(table(res))


if __name__ == "__main__":
    main()
