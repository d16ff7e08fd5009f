"""TVM backend on x86: bit-exact against the reference executor (docs/integer_semantics.md)."""

from __future__ import annotations

import collections
import json
import math
import operator
from fractions import Fraction

import numpy as np
import pytest
import torch
import tvm_graphs as G
from conftest import make_input, vm_calls, vm_pipeline

from qcompile import ops
from qcompile.backends.tvm import load, lower_integer_graph, register_strategy, select_strategy
from qcompile.backends.tvm import strategy as S
from qcompile.backends.tvm import targets as T
from qcompile.errors import CheckpointError, ConfigError, LoweringError
from qcompile.ops import IntegerGraphBuilder


def assert_exact(low, ig, x):
    y, r = low(x), G.reference(ig, x)
    assert y.dtype == r.dtype and y.shape == r.shape
    np.testing.assert_array_equal(y, r)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_every_integer_op_bit_exact(bits):
    ig = G.mbv2_like(seed=bits, bits=bits)
    low = lower_integer_graph(ig, "x86")
    for seed in range(3):
        assert_exact(low, ig, make_input(ig, seed))


def test_naive_kernels_bit_exact_without_strategies(mbv2_graph):
    low = lower_integer_graph(mbv2_graph, "x86", use_strategies=False)
    assert {k["strategy"] for k in low.kernels} == {"naive"}
    for seed in range(3):
        assert_exact(low, mbv2_graph, make_input(mbv2_graph, seed))


def test_fusion_groups_and_kernel_names(mbv2_x86):
    ops_ = [k["op"] for k in mbv2_x86.kernels]
    assert ops_.count("conv2d_requant") == 4 and ops_.count("linear_requant") == 1
    assert "requantize" not in ops_ and "conv2d" not in ops_
    naive = lower_integer_graph(G.mbv2_like(seed=0), "x86", use_strategies=False)
    names = [f for k in naive.kernels for f in k["primfuncs"]]
    assert "conv2d_requant_requantize" in names and "lut_lut_1" in names


def test_unfused_accumulators_and_dequantize_acc():
    ig = G.unfused_acc()
    low = lower_integer_graph(ig, "x86")
    assert {"conv2d", "requantize", "dequantize_acc"} <= {k["op"] for k in low.kernels}
    for seed in range(3):
        assert_exact(low, ig, make_input(ig, seed, scale=0.3))


def test_float_island_codes_exact():
    ig = G.float_island()
    low = lower_integer_graph(ig, "x86")
    for seed in range(5):
        assert_exact(low, ig, make_input(ig, seed))


CONV_CASES = [
    # c_in, c_out, k, stride, padding, dilation, groups, bits, hw
    (3, 5, 3, 1, 0, 1, 1, 8, (7, 9)),
    (4, 6, 3, 2, 1, 1, 2, 4, (11, 6)),
    (8, 8, 5, 2, 2, 1, 8, 3, (9, 9)),
    (6, 9, 3, (2, 1), (0, 2), (2, 1), 3, 2, (10, 7)),
    (7, 3, 1, 1, 0, 1, 1, 8, (1, 1)),
    (5, 5, 7, 3, 3, 1, 5, 4, (13, 13)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"c{c[0]}o{c[1]}k{c[2]}s{c[3]}p{c[4]}g{c[6]}b{c[7]}")
def test_conv_shapes_strides_groups_bits(case):
    ci, co, k, st, pd, dl, gr, bits, hw = case
    b = IntegerGraphBuilder()
    g = G.Gen(b, seed=ci * co)
    x = b.input("x")
    q = b.call(ops.quantize, x, 1 / 0.05, 7.25 + 0.5, 2**bits - 1)
    y = G.conv_block(g, q, ci, co, k, stride=st, padding=pd, dilation=dl, groups=gr, wbits=bits, abits_in=bits,
                     abits_out=bits)
    ig = b.build(y, {"input_shape": [2, ci, *hw]})
    low = lower_integer_graph(ig, "x86")
    for seed in range(2):
        assert_exact(low, ig, make_input(ig, seed))


def _edge_graph(mult: int, shift: int, wfill: int, pad_value: int):
    b = IntegerGraphBuilder()
    x = b.input("x")
    q = b.call(ops.quantize, x, 1.0, 0.5, 255)
    w = b.const(torch.full((4, 3, 3, 3), wfill, dtype=torch.int8))
    acc = b.call(ops.conv2d, q, w, b.const(torch.tensor([0, 1, -1, 2**20], dtype=torch.int32)), stride=1,
                 padding=1, dilation=1, groups=1, pad_value=pad_value)
    r = b.call(ops.requantize, acc, b.const(torch.full((4,), mult, dtype=torch.int32)),
               b.const(torch.full((4,), shift, dtype=torch.int32)), lo=0, hi=255)
    s = b.call(ops.rescale, r, multiplier=2**31 - 1, offset=2**61, shift=62, lo=0, hi=255)
    a = b.call(ops.add, r, s, multiplier_a=2**31 - 1, multiplier_b=2**31 - 1, offset=-(2**40), shift=31, lo=0, hi=255)
    return b.build(b.call(ops.mul, a, b.call(ops.mean, a, multiplier=2**31 - 1, offset=0, shift=40, lo=0, hi=255),
                          multiplier=2**31 - 1, offset_g=-(2**31), offset=2**45, shift=46, lo=3, hi=250),
                   {"input_shape": [1, 3, 5, 4]})


@pytest.mark.parametrize("mult,shift,wfill,pad_value", [(2**31 - 1, 62, -128, 255), (2**31 - 1, 1, 127, 0),
                                                        (1, 1, -1, 128), (2**30, 31, 127, 255)])
@pytest.mark.parametrize("fill", [255.0, 0.0, 1e9, -1e9])
def test_edge_values(mult, shift, wfill, pad_value, fill):
    """All-255 / all-0 codes, saturating quantize, extreme multipliers and shifts (int64 paths)."""
    ig = _edge_graph(mult, shift, wfill, pad_value)
    low = lower_integer_graph(ig, "x86")
    assert_exact(low, ig, np.full((1, 3, 5, 4), fill, dtype=np.float32))


def _fma_sensitive_case() -> tuple[float, float, float]:
    """(x, inv_scale, offset) with floor(x*inv + off) different when rounded once (FMA) vs twice."""
    rng = np.random.default_rng(0)
    for _ in range(100000):
        inv = float(rng.uniform(0.67, 0.99))
        x = 3.0
        p = x * inv  # in [2, 4): ulp 2^-51
        e = Fraction(x) * Fraction(inv) - Fraction(p)
        if e < -Fraction(1, 2**53):  # below a quarter ulp: exact x*inv + (2 - p) rounds under 2
            return x, inv, 2.0 - p
    raise AssertionError("no case found")


def test_quantize_not_contracted_to_fma():
    """LLVM fuses `x*inv + off` into one FMA unless prevented; the kernel must round twice like torch."""
    x, inv, off = _fma_sensitive_case()
    two_roundings = math.floor((x * inv) + off)
    one_rounding = math.floor(float(Fraction(x) * Fraction(inv) + Fraction(off)))
    assert (two_roundings, one_rounding) == (2, 1)  # the case discriminates
    b = IntegerGraphBuilder()
    ig = b.build(b.call(ops.quantize, b.input("x"), inv, off, 255), {"input_shape": [1, 1, 2, 3]})
    xin = np.full((1, 1, 2, 3), x, dtype=np.float32)
    assert G.reference(ig, xin).max() == 2
    for use in (True, False):
        assert_exact(lower_integer_graph(ig, "x86", use_strategies=use), ig, xin)


def test_export_load_roundtrip(mbv2_x86, mbv2_graph, tmp_path):
    x = make_input(mbv2_graph, 7)
    path = mbv2_x86.export(tmp_path / "lib")
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["target"]["name"] == "x86" and meta["input"]["shape"] == [1, 3, 17, 15]
    assert meta["versions"]["apache-tvm"].startswith("0.27")
    again = load(path)
    np.testing.assert_array_equal(again(x), mbv2_x86(x))
    np.testing.assert_array_equal(again(x), G.reference(mbv2_graph, x))
    np.testing.assert_array_equal(again.program(torch.from_numpy(x)).numpy(), G.reference(mbv2_graph, x))
    mbv2_x86.export(path)  # overwriting an export is atomic and leaves one directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no exported library"):
        load(tmp_path)
    (tmp_path / "lib.so").write_bytes(b"x")
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load(tmp_path)


def test_benchmark_local(mbv2_x86):
    res = mbv2_x86.benchmark(repeat=5)
    assert res.repeat == 5 and 0 < res.min_ms <= res.median_ms <= res.max_ms
    names = {r["name"] for r in res.kernels}
    primfuncs = {f for k in mbv2_x86.kernels for f in k["primfuncs"]}
    assert primfuncs <= names
    assert all(r["mean_ms"] >= 0 for r in res.kernels)
    assert "kernel" in res.table().splitlines()[0]
    # the per-kernel table ran every requantizing kernel on the program's own shifts (`program_requant_operands`)
    from qcompile.backends.tvm.lowered import program_requant_operands

    ops = program_requant_operands(mbv2_x86.meta, mbv2_x86.program)
    requant = {f for k in mbv2_x86.kernels if k["op"] == "conv2d_requant" for f in k["primfuncs"]}
    assert requant and requant <= set(ops)
    for f in requant:
        sig = mbv2_x86.meta["signatures"][f]
        assert [len(a) for a in ops[f]] == [sig[2][0][0]] * 3  # the kernel's (bias term, M, s) triple


def test_repeated_calls_keep_earlier_outputs(mbv2_x86, mbv2_graph):
    """The call path binds one input buffer and hands out the VM's output without a copy: every call must
    still equal the reference, and an output returned earlier must not change when the library runs again."""
    xs = [make_input(mbv2_graph, s) for s in (11, 12, 13)]
    ys = [mbv2_x86(x) for x in xs]
    kept = [y.copy() for y in ys]
    for x, y, k in zip(xs, ys, kept, strict=True):
        np.testing.assert_array_equal(y, k)
        np.testing.assert_array_equal(y, G.reference(mbv2_graph, x))
    assert not np.array_equal(ys[0], ys[1])  # different inputs, different outputs: the buffer is re-read
    # a float64 or non-contiguous input is converted into the bound buffer like a float32 one
    x64 = np.asfortranarray(xs[0].astype(np.float64))
    np.testing.assert_array_equal(mbv2_x86(x64), kept[0])
    assert mbv2_x86._in_array.ctypes.data % 64 == 0


def test_reshape_views_absorbed_into_kernels(mbv2_x86, mbv2_graph):
    """Kernels read their NCHW neighbours' buffers directly (views.AbsorbReshapeViews): no `reshape`
    instruction is left between kernels, one fewer register kill per view, and outputs stay bit-exact;
    the same graph built without the pass has the views (both VM programs without the native driver)."""
    plain = lower_integer_graph(mbv2_graph, "x86", pipeline=vm_pipeline(absorb_views=False))
    absorbed = lower_integer_graph(mbv2_graph, "x86", pipeline=vm_pipeline())
    assert plain.meta["driver"] is None and absorbed.meta["driver"] is None
    x = make_input(mbv2_graph, 5)
    before, after = vm_calls(plain, x), vm_calls(absorbed, x)
    views = before.get("vm.builtin.reshape", 0)
    assert views >= 10 and after.get("vm.builtin.reshape", 0) == 0
    assert after["vm.builtin.null_value"] == before["vm.builtin.null_value"] - views
    kernels = {k: n for k, n in after.items() if not k.startswith("vm.")}
    assert kernels == {k: n for k, n in before.items() if not k.startswith("vm.")}
    for seed in (5, 6):
        xs = make_input(mbv2_graph, seed)
        np.testing.assert_array_equal(absorbed(xs), plain(xs))
        np.testing.assert_array_equal(mbv2_x86(xs), G.reference(mbv2_graph, xs))
        np.testing.assert_array_equal(absorbed(xs), G.reference(mbv2_graph, xs))


def test_absorbed_views_keep_every_kernel_name():
    """Two LUTs of one table and shape become structurally equal kernels once their outputs are retyped to
    the flat shape the rescales read: each must keep its own PrimFunc (the kernel table maps names to nodes)."""
    b = IntegerGraphBuilder()
    table = b.const(torch.arange(255, -1, -1, dtype=torch.int32).to(torch.uint8))
    q = b.call(ops.quantize, b.input("x"), 1 / 0.05, 128.5, 255)
    y = q
    for _ in range(2):
        y = b.call(ops.lut, y, table)
        y = b.call(ops.rescale, y, multiplier=(1 << 16) | 777, offset=(1 << 15) - 9 * (1 << 16), shift=16, lo=0,
                   hi=255)
    ig = b.build(y, {"input_shape": [1, 4, 8, 8]})
    low = lower_integer_graph(ig, "x86", pipeline=vm_pipeline())
    names = {f for k in low.kernels for f in k["primfuncs"]}
    assert sum(1 for n in names if n.startswith("lut")) == 2
    assert names == set(low.meta["signatures"])
    x = make_input(ig, 3)
    on_vm = vm_calls(low, x)
    assert on_vm.get("vm.builtin.reshape", 0) == 1  # the function's result only: NCHW again
    assert_exact(low, ig, x)
    # the native driver calls the same kernels as often; the result's view is its output buffer's shape, no VM
    # reshape
    drv = lower_integer_graph(ig, "x86")
    assert collections.Counter(drv.meta["driver"]["calls"]) == {k: n for k, n in on_vm.items()
                                                                if not k.startswith("vm.")}
    assert set(drv.meta["driver"]["calls"]) == names == set(drv.meta["signatures"])
    assert vm_calls(drv, x).get("vm.builtin.reshape", 0) == 0
    assert_exact(drv, ig, x)
    assert {r["name"] for r in low.benchmark(repeat=2).kernels} >= names


def test_input_shape_checked(mbv2_x86):
    with pytest.raises(ConfigError, match="input shape"):
        mbv2_x86(np.zeros((1, 3, 16, 16), np.float32))


def test_errors_name_setting_and_remedy(monkeypatch):
    with pytest.raises(LoweringError, match="unknown target.*x86"):
        T.resolve_target("tpu")
    monkeypatch.setattr(T, "CROSS_CXX", "no-such-aarch64-g++")
    with pytest.raises(LoweringError, match="no-such-aarch64-g\\+\\+.*not found"):
        T.resolve_target("arm_cpu")
    b = IntegerGraphBuilder()
    y = b.call(torch.tanh, b.call(ops.dequantize, b.call(ops.quantize, b.input("x"), 1.0, 0.5, 255), 1.0, 0.0))
    ig = b.build(y, {"input_shape": [1, 2]})
    with pytest.raises(LoweringError, match="node tanh.*cannot be lowered"):
        lower_integer_graph(ig, "x86")
    b = IntegerGraphBuilder()
    ig = b.build(b.call(ops.quantize, b.input("x"), 1.0, 0.5, 255))
    with pytest.raises(LoweringError, match="input_shape"):
        lower_integer_graph(ig, "x86")
    b = IntegerGraphBuilder()
    x = b.input("x")
    d = b.call(ops.dequantize, b.call(ops.quantize, x, 1.0, 0.5, 255), 1.0, 0.0)
    ig = b.build(b.call(operator.add, d, x), {"input_shape": [1, 2]})
    # a float32 graph input entering a float64 island is promoted, as torch promotes it
    xin = np.array([[0.25, 3.5]], dtype=np.float32)
    np.testing.assert_array_equal(lower_integer_graph(ig, "x86")(xin), ig(torch.from_numpy(xin)).numpy())


def test_strategy_registry_priority_and_fallback():
    from tvm.target import Target

    @register_strategy("qc_test_op", priority=1)
    class Low:
        name = "low"

        def applies(self, call):
            return True

        def emit(self, bb, call, args):
            raise AssertionError

    @register_strategy("qc_test_op", priority=5)
    class High:
        name = "high"

        def applies(self, call):
            return call.params.get("ok", False)

        def emit(self, bb, call, args):
            raise AssertionError

    tgt = Target({"kind": "llvm"})
    assert select_strategy(S.OpCall("qc_test_op", {"ok": True}, tgt)).name == "high"
    assert select_strategy(S.OpCall("qc_test_op", {}, tgt)).name == "low"
    assert select_strategy(S.OpCall("qc_unknown_op", {}, tgt)) is None


@pytest.mark.parametrize(("use_strategies", "with_rescale"), [(True, False), (True, True), (False, True)])
def test_elementwise_ops_fused_into_conv_epilogues(use_strategies, with_rescale, monkeypatch):
    """lut and residual add (and rescale, when enabled) after a conv + requantize run in its epilogue: six (five)
    kernels instead of nine, each conv kernel named and described (`workload["epilogue"]`) by its fused steps,
    the dry plan (`plan_kernels`, what the latency tables price) the same kernels, and the output bit-exact
    against the reference executor and against the unfused program."""
    from qcompile.backends.tvm import emitter

    if with_rescale:
        monkeypatch.setattr(emitter, "FUSED_EPILOGUE_OPS", emitter.FUSED_EPILOGUE_OPS | {ops.rescale})
    ig = G.epilogue_chains()
    low = lower_integer_graph(ig, "x86", use_strategies=use_strategies)
    convs = [k for k in low.kernels if k["op"] == "conv2d_requant"]
    mid = ["add", "rescale"] if with_rescale else ["add"]
    assert [k["op"] for k in low.kernels] == ["quantize", *["conv2d_requant"] * 2, *([] if with_rescale else
                                              ["rescale"]), "conv2d_requant", "dequantize"]
    assert [k["workload"].get("epilogue") for k in convs] == [["lut"], mid, ["lut"]]
    plan = emitter.plan_kernels(ig, T.resolve_target("x86").target(), use_strategies=use_strategies)
    assert [k.workload for k in plan] == [k["workload"] for k in low.kernels]
    names = [f for k in convs for f in k["primfuncs"]]
    if use_strategies:  # the kernel symbols carry the epilogue (distinct from an unfused kernel of that shape)
        assert names[0].endswith("_lut") and names[1].endswith("_" + "_".join(mid)) and names[2].endswith("_lut")
    monkeypatch.setattr(emitter, "FUSED_EPILOGUE_OPS", frozenset())
    plain = lower_integer_graph(ig, "x86", use_strategies=use_strategies)
    assert sorted(k["op"] for k in plain.kernels) == sorted(["quantize", *["conv2d_requant"] * 3, "lut", "lut",
                                                             "add", "rescale", "dequantize"])
    for seed in range(3):
        x = make_input(ig, seed, scale=1.5)
        np.testing.assert_array_equal(low(x), G.reference(ig, x))
        np.testing.assert_array_equal(low(x), plain(x))


def test_squeeze_excite_float_island_is_one_kernel(monkeypatch):
    """dequantize -> mean -> conv -> relu -> conv -> hardsigmoid -> quantize -> gate multiply: one kernel (eight
    unfused), described by its steps in the workload and the dry plan, bit-exact against the reference and
    against the unfused program."""
    from qcompile.backends.tvm import emitter

    ig = G.se_island()
    low = lower_integer_graph(ig, "x86")
    assert [k["op"] for k in low.kernels] == ["quantize", "conv2d_requant", "float_island", "dequantize"]
    assert low.kernels[2]["workload"]["island"] == ["dequantize", "float_mean", "float_gemv", "float_relu",
                                                    "float_gemv", "float_hardsigmoid", "quantize", "mul"]
    plan = emitter.plan_kernels(ig, T.resolve_target("x86").target())
    assert [k.workload for k in plan] == [k["workload"] for k in low.kernels]
    monkeypatch.setattr(emitter, "FUSE_FLOAT_ISLANDS", False)
    plain = lower_integer_graph(ig, "x86")
    assert len(plain.kernels) == 11
    for seed in range(4):
        x = make_input(ig, seed, scale=1.5)
        np.testing.assert_array_equal(low(x), G.reference(ig, x))
        np.testing.assert_array_equal(low(x), plain(x))


def test_float_island_gemv_is_vectorised_and_exact(monkeypatch):
    """Squeeze-excite's 1x1 convs of the pooled input are `float_gemv` stages vectorised over output channels,
    with float32-valued weights stored as float32 (`[C, O]`) and float64 ones kept float64; both bit-exact
    against the reference and against the unfused program, whose float convs are scalar `float_conv2d`."""
    from qcompile.backends.tvm import emitter

    tgt = T.resolve_target("x86").target()
    for f32 in (True, False):
        ig = G.se_island(seed=3, shape=(1, 3, 5, 6), channels=24, hidden=16, float32_weights=f32)
        em = emitter.emit_relax(ig, tgt, None, "float32")
        (name,) = em.kernels[2].primfuncs
        func = em.mod[name]
        # parameters: codes, reduce weights [C, O] and bias, expand weights and bias, output
        params = [(tuple(int(d) for d in p.shape), str(p.dtype)) for p in func.params]
        wdt = "float32" if f32 else "float64"
        assert (params[1], params[3]) == (((24, 16), wdt), ((16, 24), wdt))
        assert func.script().count("T.vectorized") >= 2  # both gemv stages (16 and 24 channels: 8 lanes)
        low = lower_integer_graph(ig, "x86")
        monkeypatch.setattr(emitter, "FUSE_FLOAT_ISLANDS", False)
        plain = lower_integer_graph(ig, "x86")
        monkeypatch.undo()
        assert "float_conv2d" in [k["op"] for k in plain.kernels]
        for seed in range(3):
            x = make_input(ig, seed, scale=1.5)
            np.testing.assert_array_equal(low(x), G.reference(ig, x))
            np.testing.assert_array_equal(low(x), plain(x))


def test_residual_add_of_two_conv_branches_is_fused_once():
    """ResNet's downsample block: the add of two conv outputs is the next op of both convs. One conv takes it
    into its epilogue and reads the other conv's codes as the skip tensor, which stays a value; the program is
    bit-exact against the reference (both chains claiming the add left one operand without a value)."""
    b = IntegerGraphBuilder()
    g = G.Gen(b, 5)
    q = b.call(ops.quantize, b.input("x"), 1 / 0.03, 127.6, 255)
    main = G.conv_block(g, G.conv_block(g, q, 3, 8, 3, padding=1), 8, 8, 3, padding=1)
    down = G.conv_block(g, q, 3, 8, 1)
    a = b.call(ops.add, main, down, multiplier_a=3 << 13, multiplier_b=1 << 14, offset=(1 << 14) - 100 * (1 << 15),
               shift=15, lo=0, hi=255)
    ig = b.build(b.call(ops.dequantize, a, 0.04, 101.5), {"input_shape": [1, 3, 9, 11]})
    low = lower_integer_graph(ig, "x86")
    convs = [k["workload"].get("epilogue") for k in low.kernels if k["op"] == "conv2d_requant"]
    assert sorted(map(str, convs)) == sorted(map(str, [None, ["add"], None]))
    for seed in range(2):
        x = make_input(ig, seed, scale=1.5)
        np.testing.assert_array_equal(low(x), G.reference(ig, x))


def test_emitter_describes_and_logs_kernels_with_their_actual_weights():
    """The emitter hands `Strategy.describe` and the tuner's call log the layer's constant weights (this TVM's
    `relax.Constant` keeps them in `.value`; reading `.data` alone gave None for every layer). On AVX2 the GEMM mode
    depends on them: 4-bit weights cannot saturate int16 pairs at any activation, so the recorded mode is `u8s8`,
    where unknown weights at 8-bit activations would record `i16`; the dry `plan_kernels` says the same."""
    from qcompile.backends.tvm import emitter
    from qcompile.backends.tvm.schedules.x86.gemm import choose_mode
    from tests import kernel_isa as isa

    tgt = isa.target("avx2")
    ig = G.mbv2_like(seed=1, bits=4)
    calls: list = []
    em = emitter.emit_relax(ig, tgt, None, "float32", call_log=calls)
    convs = [(c, w) for c, w in calls if c.op == "conv2d_requant"]
    assert convs and all(isinstance(w, np.ndarray) and w.dtype == np.int8 for _, w in convs)
    for c, w in convs:
        assert list(w.shape) == [int(d) for d in c.params["w_shape"]]
        assert int(np.abs(w).max()) <= 8
    modes = [k.workload.get("mode") for k in em.kernels if k.workload.get("kind") == "pointwise"]
    assert modes and set(modes) == {"u8s8"}
    assert choose_mode(tgt, None, 255) == "i16"  # what the records said before
    # the dry plan describes the same kernels (the latency model and `plan_kernels` users see what is emitted)
    assert [k.workload for k in emitter.plan_kernels(ig, tgt)] == [k.workload for k in em.kernels]
