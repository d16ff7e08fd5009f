"""ONNX export against the reference executor, on hand-built IntegerGraphs."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qcompile.backends.onnx import (
    INSTALL_HINT,
    MissingDependencyError,
    OnnxRunner,
    build_onnx_model,
    compare_with_reference,
    export_onnx,
)
from qcompile.backends.onnx.export import OnnxExportOptions, trace_values
from qcompile.errors import ConfigError, LoweringError
from qcompile.ops import INTEGER_OPS, QDQ_OPS, IntegerGraphBuilder
from qcompile.ops import reference as R


def _call_nodes(ig) -> list[str]:
    return [n.name for n in ig.graph.nodes if n.op == "call_function"]


def test_qoperator_is_bit_exact_at_every_op(all_ops_graph):
    ig, x = all_ops_graph
    cmp = compare_with_reference(ig, x, format="qoperator")
    assert [d.node for d in cmp.nodes] == _call_nodes(ig)  # every op compared
    # the float32 ops of the qdq flavour are covered by tests/backends/onnx/test_qdq_flavour.py
    assert {d.op for d in cmp.nodes} >= {f.__name__ for f in INTEGER_OPS if f not in QDQ_OPS}
    for d in cmp.nodes:
        if d.kind == "codes":
            assert d.max_diff == 0, d
        else:  # float64 island, summation order only
            assert d.max_diff < 1e-12, d
    assert cmp.top1_equal


def test_qdq_within_one_code_and_fused(all_ops_graph, tmp_path):
    ig, x = all_ops_graph
    cmp = compare_with_reference(ig, x, format="qdq")
    assert cmp.max_codes <= 1
    assert cmp.top1_equal
    fused = json.loads(cmp.meta["qcompile.qdq_fused"])
    assert fused == ["conv2d", "conv2d_1", "conv2d_2"]
    # onnxruntime really runs the QDQ convs as integer kernels
    path = export_onnx(ig, tmp_path / "m.onnx", format="qdq")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert ops.count("QLinearConv") == 3
    assert "Conv" not in ops


def test_exported_logits_match_reference_end_to_end(all_ops_graph, tmp_path):
    ig, x = all_ops_graph
    ref = ig(x).numpy()
    for fmt in ("qoperator", "qdq"):
        y = OnnxRunner(export_onnx(ig, tmp_path / f"{fmt}.onnx", format=fmt), threads=1)(x.numpy())
        assert y.dtype == np.float64 and y.shape == ref.shape
        # logits in units of the final accumulator scale (c19): exact integer accumulators
        scale = ig.c19.numpy()
        np.testing.assert_allclose(y / scale, ref / scale, rtol=0, atol=1e-6)


def test_round_half_even_ties_are_the_only_qdq_difference():
    """M / 2^s = 1/2 puts every odd accumulator on a tie: the reference rounds up, QLinearConv to even."""
    b = IntegerGraphBuilder()
    xin = b.input("x")
    q = b.call(R.quantize, xin, 1.0, 0.5, 255)
    w = torch.ones(1, 1, 1, 1, dtype=torch.int8)
    acc = b.call(R.conv2d, q, b.const(w), b.const(torch.zeros(1, dtype=torch.int32)))
    out = b.call(R.requantize, acc, b.const(torch.tensor([1 << 30], dtype=torch.int32)),
                 b.const(torch.tensor([31], dtype=torch.int32)), lo=0, hi=255)
    ig = b.build(out, meta={"input_shape": [1, 1, 16, 16]})
    x = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16)
    ref = ig(x).numpy().astype(np.int64)
    np.testing.assert_array_equal(ref.reshape(-1), (np.arange(256) + 1) // 2)  # floor(v/2 + 1/2)
    exact = compare_with_reference(ig, x, format="qoperator")
    qdq = compare_with_reference(ig, x, format="qdq")
    assert exact.max_codes == 0
    req = next(d for d in qdq.nodes if d.node == "requantize")
    assert req.max_diff == 1
    assert req.mismatches == 64  # odd v with (v+1)/2 odd: 1, 5, 9, ... -> 64 of 256


def test_model_checks_ir_version_and_metadata(all_ops_graph, tmp_path):
    ig, _ = all_ops_graph
    path = export_onnx(ig, tmp_path / "m.onnx", format="qoperator")
    m = onnx.load(path)
    assert m.ir_version == 10 and m.ir_version <= 13
    assert m.opset_import[0].version == 21
    onnx.checker.check_model(m, full_check=True)
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["qcompile.subnet_config"])["depths"] == [1]
    assert json.loads(props["qcompile.subnet_config"])["resolution"] == 12
    assert json.loads(props["qcompile.quant_policy"]) == [[8, 8], [4, 4], [2, 8], [8, 8]]
    act = json.loads(props["qcompile.activation_ranges"])
    assert act["requantize_1"] == {"lo": 3, "hi": 15, "bits": 4}  # 4-bit codes in a uint8 container
    assert act["requantize"] == {"lo": 17, "hi": 255, "bits": 8}
    wr = json.loads(props["qcompile.weight_ranges"])
    assert wr["conv2d_1"]["bits"] <= 4 and wr["conv2d_2"]["bits"] <= 2 and wr["linear"]["bits"] == 8
    assert wr["conv2d_2"]["min"] >= -2 and wr["conv2d_2"]["max"] <= 1
    # batch is symbolic
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "N"


def test_dynamic_batch_runs_other_batch_sizes(all_ops_graph, tmp_path):
    ig, _ = all_ops_graph
    run = OnnxRunner(export_onnx(ig, tmp_path / "m.onnx", format="qoperator"), threads=1)
    x5 = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(run(x5.numpy()), ig(x5).numpy())


def test_float_islands(float_island_graph, all_ops_graph):
    ig, x = float_island_graph
    cmp = compare_with_reference(ig, x, format="qoperator")
    by = {d.node: d for d in cmp.nodes}
    # the 3x3 conv island has no float64 kernel in onnxruntime: float32, recorded in metadata
    assert json.loads(cmp.meta["qcompile.float32_islands"]) == ["conv2d"]
    assert 1e-9 < by["conv2d"].max_diff < 1e-3
    assert cmp.max_codes <= 1
    assert by["quantize"].max_diff == 0
    # float64 islands (SE: mean, 1x1 conv, relu, hardsigmoid) stay float64
    cmp2 = compare_with_reference(*all_ops_graph, format="qoperator")
    for d in cmp2.nodes:
        if d.kind == "relative":
            assert d.max_diff < 1e-12, d


def test_hardswish_silu_formulas_in_float64():
    b = IntegerGraphBuilder()
    xin = b.input("x")
    d = b.call(R.dequantize, b.call(R.quantize, xin, 32.0, 128.5, 255), 1 / 32, 128.0)
    hs = b.call(torch.nn.functional.hardswish, d)
    out = b.call(torch.nn.functional.silu, hs)
    ig = b.build(b.call(torch.nn.functional.hardsigmoid, out), meta={"input_shape": [1, 256]})
    x = torch.linspace(-4.2, 4.2, 256).reshape(1, 256)
    cmp = compare_with_reference(ig, x, format="qoperator")
    for d in cmp.nodes:
        assert d.max_diff < 1e-15, d


def _conv_graph(w: torch.Tensor, lo: int = 0, hi: int = 255):
    b = IntegerGraphBuilder()
    q = b.call(R.quantize, b.input("x"), 10.0, 0.5, 255)
    acc = b.call(R.conv2d, q, b.const(w), b.const(torch.zeros(w.shape[0], dtype=torch.int32)))
    out = b.call(R.requantize, acc, b.const(torch.tensor([1 << 30], dtype=torch.int32)),
                 b.const(torch.tensor([40], dtype=torch.int32)), lo=lo, hi=hi)
    return b.build(out, meta={"input_shape": [1, 2, 4, 4]})


def test_refuses_weights_wider_than_8_bits():
    ig = _conv_graph(torch.full((2, 2, 1, 1), 300, dtype=torch.int16))
    for fmt in ("qdq", "qoperator"):
        with pytest.raises(LoweringError, match=r"conv2d: weight dtype torch.int16.*8 bits"):
            build_onnx_model(ig, OnnxExportOptions(format=fmt))


def test_refuses_code_ranges_outside_uint8():
    ig = _conv_graph(torch.ones(2, 2, 1, 1, dtype=torch.int8), lo=0, hi=511)
    with pytest.raises(LoweringError, match=r"requantize: code range \[0, 511\]"):
        build_onnx_model(ig, OnnxExportOptions(format="qoperator"))


def test_bad_options_and_missing_shape():
    with pytest.raises(ConfigError, match="format"):
        OnnxExportOptions(format="fp16")
    with pytest.raises(ConfigError, match="ir_version"):
        OnnxExportOptions(ir_version=14)
    ig = _conv_graph(torch.ones(2, 2, 1, 1, dtype=torch.int8))
    ig.program_meta = {}
    with pytest.raises(LoweringError, match="input_shape"):
        build_onnx_model(ig)
    m = build_onnx_model(ig, OnnxExportOptions(input_shape=(1, 2, 4, 4)))
    assert m.graph.input[0].type.tensor_type.shape.dim[3].dim_value == 4


def test_missing_onnxruntime_gives_install_hint(monkeypatch, all_ops_graph):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install qcompile\[onnx\]") as ei:
        OnnxRunner(build_onnx_model(all_ops_graph[0]))
    assert isinstance(ei.value, ImportError) and INSTALL_HINT in str(ei.value)


def test_wide_conv_uses_convinteger_and_int64_division_exactly():
    """sum|w| * 255 >= 2^24 rules out the float32 conv; a shift > 45 rules out the float64 rescale."""
    g = torch.Generator().manual_seed(5)
    cin = 1024
    w = torch.randint(-127, 128, (4, cin, 1, 1), generator=g).to(torch.int8)
    w[:, :, 0, 0] = torch.where(w[:, :, 0, 0] >= 0, 127, -127).to(torch.int8)  # sum|w| = 1024*127
    b = IntegerGraphBuilder()
    q = b.call(R.quantize, b.input("x"), 60.0, 128.5, 255)
    acc = b.call(R.conv2d, q, b.const(w), b.const(torch.tensor([0, 5, -7, 1 << 20], dtype=torch.int32)))
    mult, shift = 1518500250, 48  # ~ 2^-17.5
    out = b.call(R.requantize, acc, b.const(torch.full((4,), mult, dtype=torch.int32)),
                 b.const(torch.full((4,), shift, dtype=torch.int32)), lo=0, hi=255)
    ig = b.build(out, meta={"input_shape": [2, cin, 3, 3]})
    x = torch.randn(2, cin, 3, 3, generator=g) * 2
    ref = ig(x)
    assert int((ref > 0).sum()) > 0 and int((ref < 255).sum()) > 0 and ref.unique().numel() > 5
    m = build_onnx_model(ig, OnnxExportOptions(format="qoperator"))
    ops = [n.op_type for n in m.graph.node]
    assert "ConvInteger" in ops and "Div" in ops and "Conv" not in ops
    assert compare_with_reference(ig, x, format="qoperator").max_codes == 0
    assert compare_with_reference(ig, x, format="qdq").max_codes <= 1


def _saturating_graph(seed: int = 11):
    """quantize -> 1x1 conv (64 -> 8 channels) -> requantize -> flatten -> linear -> dequantize_acc, weights
    full-range int8 (+-127, -128) and input codes 204..255: pairs of u8 x s8 products leave int16."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.tensor([-128, -127, -100, 100, 127], dtype=torch.int8)
    w_conv = pick[torch.randint(0, 5, (8, 64, 1, 1), generator=g)]
    w_fc = pick[torch.randint(0, 5, (4, 8 * 3 * 3), generator=g)]
    b = IntegerGraphBuilder()
    q = b.call(R.quantize, b.input("x"), 255.0, 0.5, 255)
    acc = b.call(R.conv2d, q, b.const(w_conv), b.const(torch.full((8,), 200 << 13, dtype=torch.int32)))
    y = b.call(R.requantize, acc, b.const(torch.full((8,), 1 << 30, dtype=torch.int32)),
               b.const(torch.full((8,), 43, dtype=torch.int32)), lo=0, hi=255)  # acc / 2^13 + 200
    fc = b.call(R.linear, b.call(R.flatten, y), b.const(w_fc), b.const(torch.zeros(4, dtype=torch.int32)))
    out = b.call(R.dequantize_acc, fc, b.const(torch.full((4,), 1e-4, dtype=torch.float64)))
    ig = b.build(out, meta={"input_shape": [2, 64, 3, 3]})
    x = 0.8 + 0.2 * torch.rand(2, 64, 3, 3, generator=g)
    return ig, x, w_conv, w_fc


def _int16_pair_overflows(codes: torch.Tensor, w: torch.Tensor) -> int:
    """How many pairs of adjacent-K products x[k] w[o, k] + x[k+1] w[o, k+1] (k even; `vpmaddubsw`'s pairs
    along the reduction) leave int16: codes [N, K] uint8, w [O, K] int8."""
    p = codes.to(torch.int64)[:, None, :] * w.to(torch.int64)[None]  # [N, O, K]
    s = p[..., 0::2] + p[..., 1::2]
    return int(((s > 32767) | (s < -32768)).sum())


def test_u8s8_saturating_layers_are_stored_uint8_and_exact():
    """A conv and a linear whose u8 x s8 product pairs exceed int16: onnxruntime's MLAS saturates them on x86
    without VNNI (`vpmaddubsw`) when the weights are int8; the default storage ("auto") writes them as uint8
    with zero point 128 (the exact u8 x u8 kernels), in QLinearConv (qdq) and MatMulInteger (both formats)."""
    from qcompile.backends.onnx.session import u8s8_exact_host

    ig, x, w_conv, w_fc = _saturating_graph()
    vals = trace_values(ig, x, keep=True).values
    codes_in = vals["quantize"].permute(0, 2, 3, 1).reshape(-1, 64)  # conv input codes, one row per pixel
    assert _int16_pair_overflows(codes_in, w_conv.reshape(8, 64)) > 100  # premise: the conv saturates
    assert _int16_pair_overflows(vals["flatten"], w_fc) > 10  # premise: the linear saturates
    # qoperator runs this conv as an exact float32 Conv (sum|w| * 255 < 2^24), so it has no integer weights
    for fmt, tol, stored in (("qoperator", 0, {"linear"}), ("qdq", 1, {"conv2d", "linear"})):
        cmp = compare_with_reference(ig, x, format=fmt)
        assert cmp.max_codes <= tol, (fmt, cmp.table())
        assert cmp.top1_equal
        assert json.loads(cmp.meta["qcompile.weight_storage"]) == dict.fromkeys(stored, "uint8")
        # int8 weights with onnxruntime's own remedy (session.x64quantprecision): exact on every host
        assert compare_with_reference(ig, x, format=fmt, weights="int8", x64_quant_precision=True).max_codes <= tol
        plain = compare_with_reference(ig, x, format=fmt, weights="int8")
        if u8s8_exact_host():  # VNNI (vpdpbusd accumulates in int32) or not x86: int8 weights are exact
            assert plain.max_codes <= tol, plain.table()
        else:  # the saturation this storage avoids, measured on AVX2 Zen 3: thousands of codes
            assert plain.max_codes > 100, plain.table()
    m = build_onnx_model(ig, OnnxExportOptions(format="qdq", weights="uint8"))
    w_init = {t.name: t for t in m.graph.initializer}
    assert w_init["conv2d_w"].data_type == onnx.TensorProto.UINT8
    assert (onnx.numpy_helper.to_array(w_init["conv2d_w"]).astype(np.int64) - 128 == w_conv.numpy()).all()


def test_auto_weight_storage_keeps_int8_where_pairs_fit_int16(all_ops_graph):
    """|w| <= 64 cannot saturate (2 * 255 * 64 = 32640): "auto" keeps those layers int8 (the VNNI fast path),
    "uint8" stores every layer uint8 and is as exact; an unknown storage is a ConfigError naming the field."""
    ig, x = all_ops_graph
    m = build_onnx_model(ig, OnnxExportOptions(format="qdq"))
    props = {p.key: p.value for p in m.metadata_props}
    ranges = json.loads(props["qcompile.weight_ranges"])
    storage = json.loads(props["qcompile.weight_storage"])
    assert set(storage) == set(ranges) and props["qcompile.weights"] == "auto"
    for name, r in ranges.items():
        assert storage[name] == ("int8" if max(-r["min"], r["max"]) <= 64 else "uint8"), (name, r)
    assert "int8" in storage.values() and "uint8" in storage.values()  # the fixture has both kinds
    for fmt, tol in (("qoperator", 0), ("qdq", 1)):
        assert compare_with_reference(ig, x, format=fmt, weights="uint8").max_codes <= tol
    with pytest.raises(ConfigError, match="weights.*'int4'.*auto"):
        OnnxExportOptions(weights="int4")


def test_small_convs_run_as_exact_float32_convs(all_ops_graph):
    ig, _ = all_ops_graph
    m = build_onnx_model(ig, OnnxExportOptions(format="qoperator"))
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["qcompile.exact_float32_convs"]) == ["conv2d", "conv2d_1", "conv2d_2"]
    ops = [n.op_type for n in m.graph.node]
    assert "ConvInteger" not in ops and ops.count("Conv") == 3
