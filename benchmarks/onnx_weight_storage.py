"""onnxruntime latency and exactness of our ONNX exports per weight storage (`OnnxExportOptions.weights`).

On the synthetic MobileNetV2 IntegerGraph (`qcompile.bench.synthetic_integer_graph`, random full-range 8-bit
weights): export with weights="int8" / "auto" / "uint8", and int8 run with onnxruntime's
`session.x64quantprecision=1`; per variant the largest code difference to the reference executor on one image
(`compare_with_reference`) and the minimum over `--rounds` interleaved rounds of the median of `--repeats`
runs (1 intra-op thread). `--kernels` instead runs single onnxruntime kernels (QLinearConv 1x1 / 3x3 /
depthwise, the QDQ conv it fuses, ConvInteger, MatMulInteger) with full-range weights and large activations
against an exact int64 reference: which of them saturate on this host. docs/qdq.md ("Weights on x86 without
VNNI") has the figures.

    python -m benchmarks.onnx_weight_storage --width 1.0 --res 224 --rounds 7 [--format qoperator]
    python -m benchmarks.onnx_weight_storage --kernels
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter

import numpy as np
import torch

VARIANTS = (("int8", False), ("int8", True), ("auto", False), ("uint8", False))


def kernel_table() -> list[str]:
    """One markdown row per (kernel, weight storage, session option): max difference to the exact result and
    how many outputs differ by more than one code (accumulator units for ConvInteger / MatMulInteger)."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    x = rng.integers(200, 256, (1, 64, 8, 8)).astype(np.uint8)
    w_all = rng.choice(np.array([-128, -127, -100, 100, 127], np.int8), (64, 64, 3, 3))

    def session(model, prec: bool):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        if prec:
            so.add_session_config_entry("session.x64quantprecision", "1")
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def model(nodes, inits, out_type, out_shape, x_shape):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.UINT8, list(x_shape))],
                              [helper.make_tensor_value_info("y", out_type, list(out_shape))], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        m.ir_version = 10
        return m

    rows = []
    for k, groups in ((1, 1), (3, 1), (3, 64)):
        w = np.ascontiguousarray(w_all[:32, :, :k, :k] if groups == 1 else w_all[:, :1, :k, :k])
        acc = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                         padding=k // 2, groups=groups).round().long().numpy()
        s = np.float32(np.abs(acc).max() / 127.0)
        codes = np.clip(np.round(acc.astype(np.float32) / s) + 128, 0, 255)
        for storage in ("int8", "uint8"):
            wq = w if storage == "int8" else (w.astype(np.int16) + 128).astype(np.uint8)
            zp = np.array(np.int8(0) if storage == "int8" else np.uint8(128))
            common = [nh.from_array(wq, "w"), nh.from_array(np.float32(1), "xs"), nh.from_array(np.uint8(0), "xzp"),
                      nh.from_array(np.float32(1), "ws"), nh.from_array(zp, "wzp")]
            attrs = dict(pads=[k // 2] * 4, group=groups)
            ys = [nh.from_array(s, "ys"), nh.from_array(np.uint8(128), "yzp")]
            qlc = ["x", "xs", "xzp", "w", "ws", "wzp", "ys", "yzp"]
            cases = {
                "ConvInteger": (model([helper.make_node("ConvInteger", ["x", "w", "xzp", "wzp"], ["y"], **attrs)],
                                      common, T.INT32, acc.shape, x.shape), acc),
                "QLinearConv": (model([helper.make_node("QLinearConv", qlc, ["y"], **attrs)], common + ys, T.UINT8,
                                      acc.shape, x.shape), codes),
                "QDQ Conv": (model([helper.make_node("DequantizeLinear", ["x", "xs", "xzp"], ["xf"]),
                                    helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wf"]),
                                    helper.make_node("Conv", ["xf", "wf"], ["yf"], **attrs),
                                    helper.make_node("QuantizeLinear", ["yf", "ys", "yzp"], ["y"])],
                                   common + ys, T.UINT8, acc.shape, x.shape), codes),
            }
            for name, (m, ref) in cases.items():
                for prec in (False, True):
                    d = np.abs(session(m, prec).run(None, {"x": x})[0].astype(np.int64) - ref.astype(np.int64))
                    rows.append(f"| {name} {k}x{k} groups={groups} | {storage} | {prec} | {d.max()} | "
                                f"{(d > 1).sum()}/{d.size} |")
    a = x.reshape(64, 64)[:16]
    b = np.ascontiguousarray(w_all[:16, :, 0, 0].T)
    ref = a.astype(np.int64) @ b.astype(np.int64)
    for storage in ("int8", "uint8"):
        bq = b if storage == "int8" else (b.astype(np.int16) + 128).astype(np.uint8)
        zp = np.array(np.int8(0) if storage == "int8" else np.uint8(128))
        m = model([helper.make_node("MatMulInteger", ["x", "w", "xzp", "wzp"], ["y"])],
                  [nh.from_array(bq, "w"), nh.from_array(np.uint8(0), "xzp"), nh.from_array(zp, "wzp")],
                  T.INT32, ref.shape, a.shape)
        for prec in (False, True):
            d = np.abs(session(m, prec).run(None, {"x": a})[0].astype(np.int64) - ref)
            rows.append(f"| MatMulInteger 16x64x16 | {storage} | {prec} | {d.max()} | {(d > 1).sum()}/{d.size} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    from qcompile.backends.onnx import OnnxExportOptions, OnnxRunner, build_onnx_model, compare_with_reference
    from qcompile.backends.onnx.session import u8s8_exact_host
    from qcompile.bench import mobilenet_v2, synthetic_integer_graph

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--format", default="qdq", choices=("qdq", "qoperator"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--kernels", action="store_true", help="single-kernel exactness table instead")
    args = ap.parse_args(argv)
    if args.kernels:
        print(f"u8s8 exact here: {u8s8_exact_host()}")
        print("| kernel | weights | x64quantprecision | max diff | off by > 1 |\n|---|---|---|---:|---:|")
        print("\n".join(kernel_table()))
        return 0

    ig = synthetic_integer_graph(mobilenet_v2(num_classes=1000, width=args.width, seed=0), args.res, seed=0)
    x = np.random.default_rng(1).standard_normal((1, 3, args.res, args.res)).astype(np.float32)
    rows: dict[str, dict] = {}
    runners = {}
    for weights, prec in VARIANTS:
        key = weights + (" +x64quantprecision" if prec else "")
        model = build_onnx_model(ig, OnnxExportOptions(format=args.format, input_shape=x.shape, weights=weights))
        props = {p.key: p.value for p in model.metadata_props}
        cmp = compare_with_reference(ig, torch.from_numpy(x), format=args.format, threads=1, weights=weights,
                                     x64_quant_precision=prec)
        rows[key] = {"max_codes": cmp.max_codes, "top1_equal": cmp.top1_equal,
                     "storage": dict(Counter(json.loads(props["qcompile.weight_storage"]).values()))}
        runners[key] = OnnxRunner(model, threads=1, x64_quant_precision=prec)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):  # interleaved: the host's load drifts alike for every variant
        for key, run in runners.items():
            run(x)
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                run(x)
                ts.append(time.perf_counter() - t0)
            times[key].append(float(np.median(ts)))
    print(f"cpu: {platform.processor() or platform.machine()}, u8s8 exact here: {u8s8_exact_host()}, "
          f"format {args.format}, MobileNetV2 x{args.width} @ {args.res}")
    print("| weights | layers int8 / uint8 | max codes vs reference | top-1 equal | min of medians ms |")
    print("|---|---|---:|---|---:|")
    for key, r in rows.items():
        st = r["storage"]
        print(f"| {key} | {st.get('int8', 0)} / {st.get('uint8', 0)} | {r['max_codes']:.0f} | {r['top1_equal']} | "
              f"{1e3 * min(times[key]):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
