"""The op table (`qcompile.ops.table`) is complete and true: every reference op has an entry, every entry's
signature and dtype rule match the reference function, and every backend handles every entry."""

from __future__ import annotations

import inspect
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx

from qcompile.errors import LoweringError
from qcompile.ops import IntegerGraphBuilder, op_name
from qcompile.ops import reference as R
from qcompile.ops.graph import IntegerGraph
from qcompile.ops.table import CODE_OPS, FLOAT_OPS, INTEGER_OPS, OPS, REQUIRED, op_def

#: public functions of `reference` that are helpers of the ops, not ops
HELPERS = {"fixmul"}


def _reference_functions() -> set[str]:
    return {name for name, f in inspect.getmembers(R, inspect.isfunction)
            if f.__module__ == R.__name__ and not name.startswith("_")} - HELPERS


def test_every_reference_op_has_a_table_entry():
    table = {d.name for d in OPS if d.kind == "integer"}
    assert _reference_functions() == table
    assert set(R.__all__) - HELPERS == table
    assert all(op_def(getattr(R, name)).fn is getattr(R, name) for name in table)


def test_names_and_keys_are_unique():
    assert len({d.key for d in OPS}) == len(OPS)
    assert len({d.fn for d in OPS}) == len(OPS)
    assert set(INTEGER_OPS) | set(FLOAT_OPS) == {d.fn for d in OPS}
    assert not set(INTEGER_OPS) & set(FLOAT_OPS)


@pytest.mark.parametrize("d", [d for d in OPS if d.kind == "integer"], ids=lambda d: d.name)
def test_integer_signature_is_the_reference_signature(d):
    params = inspect.signature(d.fn).parameters
    assert [k for k, _ in d.signature] == list(params)
    assert set(d.operands) | set(d.params) == set(params)
    assert not set(d.operands) & set(d.params)
    for k, default in d.signature:
        want = params[k].default
        assert default is REQUIRED if want is inspect.Parameter.empty else default == want


def _examples() -> dict:
    """One valid call of each integer op: (args, kwargs)."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (1, 3, 5, 5), generator=g).to(torch.uint8)
    acc = torch.randint(-5000, 5000, (1, 3, 5, 5), generator=g).to(torch.int32)
    m, s = torch.full((3,), 1 << 30, dtype=torch.int32), torch.full((3,), 36, dtype=torch.int32)
    w = torch.randint(-8, 8, (3, 3, 3, 3), generator=g).to(torch.int8)
    fp = dict(multiplier=3, offset=4, shift=3, lo=0, hi=255)
    return {
        R.quantize: ((torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64),),
                     dict(inv_scale=20.0, offset=128.5, qmax=255)),
        R.dequantize: ((codes,), dict(scale=0.1, zero_point=128.0)),
        R.conv2d: ((codes, w, torch.arange(3, dtype=torch.int32)), dict(padding=1, pad_value=7)),
        R.linear: ((codes.reshape(1, -1), torch.ones(4, 75, dtype=torch.int8), torch.zeros(4, dtype=torch.int32)),
                   {}),
        R.requantize: ((acc, m, s), dict(lo=0, hi=255)),
        R.dequantize_acc: ((acc, torch.full((3,), 0.5, dtype=torch.float64)), {}),
        R.rescale: ((codes,), fp),
        R.add: ((codes, codes), dict(multiplier_a=3, multiplier_b=5, offset=4, shift=3, lo=0, hi=255)),
        R.mean: ((codes,), fp),
        R.mul: ((codes, codes), dict(multiplier=1, offset_g=2, offset=4, shift=9, lo=0, hi=255)),
        R.lut: ((codes, torch.arange(256).flip(0).to(torch.uint8)), {}),
        R.flatten: ((codes,), {}),
        R.max_pool2d: ((codes,), dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))),
        R.quantize_linear: ((torch.randn(1, 3, 5, 5, generator=g),), dict(scale=0.05, zero_point=128, qmax=255)),
        R.requantize_float: ((acc, torch.full((3,), 0.02)), dict(x_scale=0.1, y_scale=0.5, zero_point=3, lo=0, hi=255)),
        R.rescale_float: ((codes,), dict(x_scale=0.1, x_zero_point=5, y_scale=0.2, zero_point=7, lo=0, hi=255)),
        R.add_float: ((codes, codes), dict(a_scale=0.1, a_zero_point=3, b_scale=0.2, b_zero_point=4, y_scale=0.3,
                                          zero_point=5, lo=0, hi=255)),
        R.mean_float: ((codes,), dict(x_scale=0.1, x_zero_point=3, y_scale=0.1, zero_point=2, lo=0, hi=255)),
        R.mul_float: ((codes, codes[:, :, :1, :1]), dict(x_scale=0.1, x_zero_point=3, g_scale=0.01, g_zero_point=0,
                                                         y_scale=0.1, zero_point=2, lo=0, hi=255)),
    }


@pytest.mark.parametrize("d", [d for d in OPS if d.kind == "integer"], ids=lambda d: d.name)
def test_integer_output_dtype_rule(d):
    examples = _examples()
    assert d.fn in examples, f"add an example call of {d.name} to this test"
    args, kwargs = examples[d.fn]
    out = d.fn(*args, **kwargs)
    want = args[0].dtype if d.out_dtype == "same" else getattr(torch, d.out_dtype)
    assert out.dtype == want
    assert (d.fn in CODE_OPS) == (d.out_dtype == "uint8")
    bound = d.bind(args, kwargs)
    assert all(bound[k] is a for k, a in zip([k for k, _ in d.signature], args))


@pytest.mark.parametrize("d", [d for d in OPS if d.kind == "float"], ids=lambda d: d.key)
def test_float_ops_keep_float64(d):
    x = torch.rand(1, 4, 3, 3, dtype=torch.float64)
    if d.fn is F.conv2d:
        out = d.fn(x, torch.rand(2, 4, 1, 1, dtype=torch.float64))
    elif d.fn is F.linear:
        out = d.fn(x.reshape(1, -1), torch.rand(2, 36, dtype=torch.float64))
    elif d.fn in (operator.add, operator.mul):
        out = d.fn(x, x)
    else:
        out = d.fn(x)
    assert out.dtype == torch.float64
    assert d.out_dtype == "same"
    assert d.signature[0][0] == d.operands[0]


def test_bind_fills_defaults_and_names_bad_calls():
    conv = op_def(F.conv2d)
    assert conv.bind(("x", "w"), {"padding": 1}) == dict(input="x", weight="w", bias=None, stride=1, padding=1,
                                                          dilation=1, groups=1)
    with pytest.raises(LoweringError, match="unexpected keyword 'pad'"):
        conv.bind(("x", "w"), {"pad": 1}, "node c")
    with pytest.raises(LoweringError, match="bad arguments for requantize"):
        op_def(R.requantize).bind(("acc", "m", "s", 0, 255), {}, "node rq")  # lo/hi are keyword-only
    with pytest.raises(LoweringError, match="misses 'input'"):
        op_def(torch.mean).bind((), {"dim": (2, 3)})


def test_program_text_and_storage_use_the_table(tmp_path):
    b = IntegerGraphBuilder()
    x = b.input()
    q = b.call(R.quantize, x, 10.0, 128.0, 255)
    y = b.call(F.relu, b.call(R.dequantize, q, 0.1, 128.0))
    ig = b.build(y)
    assert ig.ops() == ["quantize", "dequantize", "float.relu"]
    assert [op_name(d.fn) for d in OPS] == [d.display for d in OPS]
    back = IntegerGraph.load(ig.save(tmp_path / "p"))
    assert [n.target for n in back.graph.nodes if n.op == "call_function"] == [R.quantize, R.dequantize, F.relu]
    assert op_def(torch.relu) is None and op_def([]) is None


def test_onnx_emitter_handles_every_op():
    pytest.importorskip("onnx")
    from qcompile.backends.onnx.emitter import handled_ops

    assert handled_ops() == {d.fn for d in OPS}


def test_tvm_emitter_handles_every_op():
    pytest.importorskip("tvm")
    from qcompile.backends.tvm.emitter import handled_ops

    assert handled_ops() == {d.fn for d in OPS}


def test_accumulator_range_covers_every_code_op():
    """Every integer op producing codes gets a range (a new op without a rule would leave it unbounded)."""
    from qcompile.passes.accumulator_range import accumulator_range

    ex = _examples()
    for f in CODE_OPS:
        args, kwargs = ex[f]
        b = IntegerGraphBuilder()
        x = b.input()
        nodes = [b.const(a) if isinstance(a, torch.Tensor) else a for a in args]
        if f not in (R.quantize, R.quantize_linear):  # a code input comes from a quantize
            nodes[0] = b.call(R.quantize, x, 1.0, 0.0, 255)
            if f in (R.add, R.mul, R.add_float, R.mul_float):
                nodes[1] = nodes[0]
        else:
            nodes[0] = x
        out = b.call(f, *nodes, **kwargs)
        out.meta["qcompile"] = {"hw": 25}
        ig = b.build(out)
        ranges = accumulator_range(ig)
        assert out.name in ranges, f.__name__
        lo, hi = ranges[out.name]
        ref = f(*args, **kwargs).to(torch.int64)
        assert lo <= int(ref.min()) and int(ref.max()) <= hi, f.__name__


def test_fx_nodes_bind_like_calls():
    g = fx.Graph()
    x = g.placeholder("x")
    n = g.call_function(torch.flatten, (x, 1))
    assert op_def(n.target).bind(n.args, n.kwargs) == {"input": x, "start_dim": 1, "end_dim": -1}
